"""The :class:`MethodFamily` interface and the registry of families."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Type

import torch

from fiftyone_cass.config import registry
from fiftyone_cass.errors import InvalidInputError

#: the registered families, by name (:data:`fiftyone_cass.config.registry.METHOD_FAMILIES`)
_FAMILIES = registry.METHOD_FAMILIES


@dataclass
class FamilyOutput:
    """What a family's last block produced for a batch of windows: unit patch features
    ``(B, N, E)`` plus what CDAM's re-prediction needs (the attention ``(B, H, N, N)`` and values
    ``(B, H, N, d)``; None where the family re-predicts from the block input instead)."""

    feats: torch.Tensor
    attn: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None


class MethodFamily:
    """Hooks of one method family; ``seg`` is the calling Segmenter (its models, text embeddings,
    options and stage timer)."""

    #: registered name (``method=`` value)
    name: str = ""
    #: whether the family needs the DINO model
    needs_dino: bool = False
    #: ``logit_scale`` this family's protocol uses when the caller does not set it (None: the
    #: :class:`SegmenterOptions` default)
    logit_scale: Optional[float] = None

    def features(self, seg, x: torch.Tensor, crops: torch.Tensor, grid: Tuple[int, int]) -> FamilyOutput:
        """Last block on the trunk output ``x`` of the windows ``crops``."""
        raise NotImplementedError

    def logits(self, seg, feats: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Query logits ``(B, N, Q)`` from patch features and the raw global similarity ``g``
        ``(B, Q)``; also the (adjusted) text the family used, or None."""
        return feats @ seg.text.T, None

    def cdam_similarity(self, seg, feats, g, vglob, text) -> torch.Tensor:
        """Similarity ``(B, N, Q + A)`` of patches to the queries and CDAM's augmentation words."""
        return feats @ torch.cat([seg.text, seg.text_aug]).T

    def repredict(self, seg, x: torch.Tensor, out: FamilyOutput, cdam: torch.Tensor) -> torch.Tensor:
        """Re-predicted unit patch features ``(B, N, E)`` with the CDAM map ``(B, N, N)``."""
        raise NotImplementedError

    def relogits(self, seg, feats: torch.Tensor, g: torch.Tensor, text: Optional[torch.Tensor]) -> torch.Tensor:
        """Query logits ``(B, N, Q)`` of re-predicted features."""
        return self.logits(seg, feats, g)[0]


def register_family(cls: Type[MethodFamily]) -> Type[MethodFamily]:
    """Class decorator: registers a :class:`MethodFamily` under ``cls.name``."""
    if not cls.name or "+" in cls.name:
        raise ValueError(f"a method family needs a name without '+', got {cls.name!r}")
    _FAMILIES.register(cls.name, cls())
    return cls


def method_names() -> List[str]:
    """Every valid ``method=``: ``<family>+cdam`` and ``<family>``, in registration order, read
    from the registry at each call (a family registered after import is listed)."""
    return list(registry.method_names())


def split_method(method: str) -> Tuple[str, bool]:
    """``"cass+cdam"`` -> ``("cass", True)``; raises :class:`InvalidInputError` on an unknown method."""
    family, plus, extra = str(method).partition("+")
    if family not in _FAMILIES or (plus and extra != "cdam"):
        raise InvalidInputError(f"unknown method {method!r}; choose one of {', '.join(method_names())}")
    return family, bool(plus)


def get_family(name: str) -> MethodFamily:
    """The registered family ``name`` (``"cass"``; a full method name such as ``"cass+cdam"`` works too)."""
    return _FAMILIES[split_method(name)[0]]
