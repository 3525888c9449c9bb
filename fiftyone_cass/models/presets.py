"""The published evaluation protocols as named presets (SPEC E table, G, J.2).

Every dataset-name branch of the reference code is an explicit field here: ``eigenscale``,
``global_prior`` ("image" or "crop"), ``mode`` ("slide" or "whole").
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import List, Optional, Tuple

from fiftyone_cass.config import registry


@dataclass(frozen=True)
class Preset:
    name: str
    class_file: str
    short_side: int = 336
    long_side: int = 2048
    mode: str = "slide"
    prob_thd: float = 0.0
    gamma: float = 0.25
    alpha: float = 0.03
    h_threshold: float = 0.10
    eigenscale: bool = True
    global_prior: str = "image"
    has_background: bool = False  # class line 0 is a background class
    reduce_zero_label: bool = False  # evaluation convention of the ground truth
    num_classes: int = 0
    num_queries: int = 0


#: name -> :class:`Preset`, the live registry (:data:`fiftyone_cass.config.registry.PRESETS`): a
#: preset registered later (``PRESETS["mine"] = Preset("mine", ...)``) is offered everywhere
PRESETS = registry.PRESETS
PRESETS.update({
    p.name: p
    for p in [
        Preset("voc21", "cass_cls_voc21.txt", mode="whole", prob_thd=0.1, gamma=0.10, alpha=0.03,
               h_threshold=0.10, has_background=True, num_classes=21, num_queries=56),
        Preset("voc20", "cass_cls_voc20.txt", prob_thd=0.0, gamma=0.40, alpha=0.02, h_threshold=0.10,
               eigenscale=False, reduce_zero_label=True, num_classes=20, num_queries=30),
        Preset("context60", "cass_cls_context60.txt", prob_thd=0.1, gamma=0.25, alpha=0.04,
               h_threshold=0.09, has_background=True, num_classes=60, num_queries=60),
        Preset("context59", "cass_cls_context59.txt", prob_thd=0.0, gamma=0.25, alpha=0.04,
               h_threshold=0.09, reduce_zero_label=True, num_classes=59, num_queries=59),
        Preset("coco_object", "cass_cls_coco_object.txt", prob_thd=0.1, gamma=0.25, alpha=0.01,
               h_threshold=0.10, has_background=True, num_classes=81, num_queries=113),
        Preset("coco_stuff", "cass_cls_coco_stuff.txt", prob_thd=0.0, gamma=0.20, alpha=0.02,
               h_threshold=0.02, num_classes=171, num_queries=171),
        Preset("ade20k", "cass_cls_ade20k.txt", prob_thd=0.0, gamma=0.30, alpha=0.05, h_threshold=0.06,
               reduce_zero_label=True, num_classes=150, num_queries=150),
        Preset("cityscapes", "cass_cls_city_scapes.txt", short_side=560, prob_thd=0.0, gamma=0.10,
               alpha=0.03, h_threshold=0.14, eigenscale=False, global_prior="crop", num_classes=19,
               num_queries=19),
    ]
})
PRESET_ALIASES = PRESETS.aliases

# Constants for a free vocabulary (no preset): COCO-Object-like slide protocol.
FREE_VOCAB = Preset("custom", "", prob_thd=0.0, gamma=0.25, alpha=0.03, h_threshold=0.10, has_background=True)


def get_preset(name: str) -> Preset:
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]


def read_class_file(filename: str) -> List[str]:
    """Class lines of a packaged class file (line i = class id i; ", "-separated synonyms)."""
    text = resources.files("fiftyone_cass").joinpath("data", "classes", filename).read_text()
    return [line for line in text.split("\n") if line.strip()]


def preset_class_lines(preset: Preset) -> List[str]:
    lines = read_class_file(preset.class_file)
    if preset.num_classes and len(lines) != preset.num_classes:
        raise RuntimeError(f"{preset.class_file}: {len(lines)} lines, expected {preset.num_classes}")
    return lines


def cdam_aug_words() -> List[str]:
    """CDAM's 80 augmentation words (SPEC G, appendix): the tail of the cdam_* class files."""
    words = read_class_file("cdam_cls_voc21.txt")[-80:]
    assert words[0] == "black" and words[-1] == "person", words[:2]
    return words


# The 26-name background line of VOC21 / COCO-Object, offered for free vocabularies.
def default_background_words() -> List[str]:
    return [w.strip() for w in read_class_file("cass_cls_voc21.txt")[0].split(",")]
