"""Registries of named things, read when they are used (never copied at import).

Each registry is a mapping name -> entry filled by the module that defines the entries: the method
families (:func:`fiftyone_cass.methods.register_family`), the backbones
(:mod:`fiftyone_cass.models.backbones`), the presets (:mod:`fiftyone_cass.models.presets`) and the
protocols (:mod:`fiftyone_cass.protocols.records`). They live here, in the lowest layer, so that
the settings can offer their names as choices (``method``, ``preset``, ...) without importing the
layers that fill them; whatever lists names (settings checks, command-line choices and help, the
form, ``fiftyone_cass.METHODS``) reads the registry at that moment, so an entry registered after
import is listed and accepted like a built-in one.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from fiftyone_cass.errors import InvalidInputError


class Registry(MutableMapping):
    """Entries by name, in registration order; ``aliases`` are other names of entries."""

    def __init__(self, kind: str, aliases: Optional[Mapping[str, str]] = None):
        self.kind = kind
        self.aliases: Dict[str, str] = dict(aliases or {})
        self._entries: Dict[str, Any] = {}

    def register(self, name: str, entry: Any) -> Any:
        """Adds (or replaces) ``entry`` under ``name``; returns it."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a {self.kind} needs a name, got {name!r}")
        self._entries[name] = entry
        return entry

    def names(self) -> Tuple[str, ...]:
        """The registered names, in registration order (aliases not included)."""
        return tuple(self._entries)

    def key(self, name: str) -> str:
        """``name``, or the name it is an alias of; :class:`InvalidInputError` when unknown."""
        key = self.aliases.get(name, name)
        if key not in self._entries:
            raise InvalidInputError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return key

    def lookup(self, name: str) -> Any:
        """The entry of ``name`` (or of the name it is an alias of); :class:`InvalidInputError` naming
        the choices when unknown."""
        return self._entries[self.key(name)]

    # Mapping protocol (``PRESETS["voc21"]``, ``sorted(PRESETS)``, ``monkeypatch.setitem``)
    def __getitem__(self, name: str) -> Any:
        return self._entries[name]

    def __setitem__(self, name: str, entry: Any) -> None:
        self.register(name, entry)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<{self.kind} registry: {', '.join(self._entries)}>"


#: method families (``cass``, ``naclip``, ``maskclip``): :class:`fiftyone_cass.methods.MethodFamily` instances
METHOD_FAMILIES = Registry("method family")
#: backbone pairs (``openai``, ``tiny``, ...): :class:`fiftyone_cass.models.backbones.BackboneSpec`
BACKBONES = Registry("backbone")
#: the Segmenter's protocol constants (``voc21``, ...): :class:`fiftyone_cass.models.presets.Preset`
PRESETS = Registry("preset", aliases={"city_scapes": "cityscapes", "coco_stuff164k": "coco_stuff"})
#: published protocols (preset, dataset loader, default split, published mIoU):
#: :class:`fiftyone_cass.protocols.records.Protocol`
PROTOCOLS = Registry("protocol", aliases=PRESETS.aliases)


def method_names() -> Tuple[str, ...]:
    """Every valid ``method=``: ``<family>+cdam`` and ``<family>``, in registration order."""
    return tuple(m for f in METHOD_FAMILIES for m in (f"{f}+cdam", f))
