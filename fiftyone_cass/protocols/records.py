"""One record per published protocol: its preset, its dataset loader, its default split and its
published mIoU, in the live registry :data:`fiftyone_cass.config.registry.PROTOCOLS`.

A new protocol is one :func:`register_protocol` call (an importer in :mod:`.importers` and, for
the Segmenter, a :class:`~fiftyone_cass.models.presets.Preset` of that name). Every list of
protocols (``fiftyone-cass eval --protocol``, the runner) reads the registry when it is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

from fiftyone_cass.config import registry
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.protocols import importers as imp

#: name (or alias) -> :class:`Protocol`
PROTOCOLS = registry.PROTOCOLS


@dataclass(frozen=True)
class Protocol:
    """``name``: the protocol and its preset (``Segmenter(preset=name)``, same class ids as the
    imported ground truth); ``loader(root, split=..., **kwargs)``: imports the benchmark into a
    FiftyOne dataset (None: this protocol has no importer yet); ``default_split``; ``published_miou``:
    method -> mIoU (%) with CLIP ViT-B/16 (SPEC section I)."""

    name: str
    loader: Optional[Callable[..., Any]] = None
    default_split: str = "val"
    published_miou: Mapping[str, float] = field(default_factory=dict)

    @property
    def preset(self):
        """This protocol's :class:`~fiftyone_cass.models.presets.Preset`."""
        return registry.PRESETS.lookup(self.name)


def register_protocol(protocol: Protocol) -> Protocol:
    """Adds (or replaces) a protocol record; returns it."""
    return PROTOCOLS.register(protocol.name, protocol)


def protocol_names():
    """The registered protocols, in registration order (read now)."""
    return PROTOCOLS.names()


def get_protocol(name: str, need_loader: bool = False) -> Protocol:
    """The record of ``name`` (aliases such as ``city_scapes`` accepted). A preset without a
    record is a protocol without a loader. :class:`InvalidInputError` when ``name`` is neither a
    protocol nor a preset, or when ``need_loader`` and there is no loader for it, naming what is
    available."""
    try:
        key = registry.PRESETS.key(name)
    except InvalidInputError:
        if PROTOCOLS.aliases.get(name, name) not in PROTOCOLS:
            raise
        key = PROTOCOLS.key(name)  # a protocol whose preset is missing: named below
    record = PROTOCOLS.get(key) or Protocol(key)
    if key not in registry.PRESETS:
        raise InvalidInputError(f"protocol {name!r} has no preset of that name; presets: {', '.join(registry.PRESETS)}")
    if need_loader and record.loader is None:
        have = [p for p in PROTOCOLS if PROTOCOLS[p].loader is not None]
        raise InvalidInputError(f"preset {key!r} has no dataset loader, so its benchmark cannot be imported; "
                                f"protocols with a loader: {', '.join(have)} (or pass an imported dataset)")
    return record


def load_protocol_dataset(protocol: str, root, **kwargs):
    """Imports the benchmark of ``protocol`` (aliases such as ``city_scapes`` accepted) with its
    record's loader; ``split`` defaults to the record's. :class:`InvalidInputError` for a preset
    without a loader."""
    record = get_protocol(protocol, need_loader=True)
    kwargs.setdefault("split", record.default_split)
    return record.loader(root, **kwargs)


def published_miou(protocol: str, method: str) -> Optional[float]:
    """The published mIoU (%) of ``method`` on ``protocol``, or None."""
    return get_protocol(protocol).published_miou.get(method)


def _miou(cass=None, maskclip=None, maskclip_cdam=None) -> Dict[str, float]:
    # CASS: CASS paper (DINO ViT-B/8, no PAMR). MaskCLIP / MaskCLIP+CDAM: CDAM poster, baselines
    # reproduced under CDAM's protocol.
    out = {"cass": cass, "maskclip": maskclip, "maskclip+cdam": maskclip_cdam}
    return {k: v for k, v in out.items() if v is not None}


for _record in (
    Protocol("voc21", lambda root, **kw: imp.load_voc(root, protocol="voc21", **kw),
             published_miou=_miou(65.8, 33.1, 55.9)),
    Protocol("voc20", lambda root, **kw: imp.load_voc(root, protocol="voc20", **kw), published_miou=_miou(87.8)),
    Protocol("context60", lambda root, **kw: imp.load_context(root, protocol="context60", **kw),
             published_miou=_miou(36.7, 23.3, 30.5)),
    Protocol("context59", lambda root, **kw: imp.load_context(root, protocol="context59", **kw),
             published_miou=_miou(40.2)),
    Protocol("coco_object", imp.load_coco_object, "val2017", _miou(37.8, 24.8, 34.3)),
    Protocol("coco_stuff", imp.load_coco_stuff, "val2017", _miou(26.7, 16.5, 24.5)),
    Protocol("ade20k", imp.load_ade20k, "validation", _miou(20.4, 12.2, 17.8)),
    Protocol("cityscapes", imp.load_cityscapes, published_miou=_miou(39.4, 23.8, 27.6)),
):
    register_protocol(_record)
del _record
