"""What the algorithm computes: :class:`SegmenterOptions`, every constant and switch of the
segmenter pipeline (SPEC A-K), declared as settings (:mod:`fiftyone_cass.config.schema`). Presets
fill the dataset-specific ones; any field can be overridden (``Segmenter(**kw)``, ``-o key=value``,
``--options JSON``, the form's advanced options; those declared with a ``group``, e.g. PAMR's,
also have an input of their own in the ``auto_label`` form: ``label``, ``group``, ``shown_with``
as in :mod:`fiftyone_cass.config.settings`). A field declared ``output=False`` (memory,
placement) does not change the labels and is not part of the settings hash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from fiftyone_cass.core.eigensolver import PLACEMENTS
from fiftyone_cass.config.schema import setting
from fiftyone_cass.errors import InvalidInputError


@dataclass
class SegmenterOptions:
    """Every constant and switch of the pipeline. Presets fill the dataset-specific ones; any
    field can be overridden with a keyword of :class:`Segmenter`."""

    # protocol (SPEC A)
    short_side: int = setting(336, "shorter image side after resizing, in pixels", min=1, max=4096)
    long_side: int = setting(2048, "cap of the longer image side after resizing, in pixels", min=1, max=8192)
    mode: str = setting("slide", "slide: sliding windows; whole: the whole resized image at once",
                        choices=("slide", "whole"))
    crop: int = setting(224, "sliding-window size, in pixels", min=16, max=4096)
    stride: int = setting(112, "sliding-window step, in pixels", min=1, max=4096)
    global_prior: str = setting("image", "image: whole resized image, once per image; crop: per window",
                                choices=("image", "crop"))
    pad_to_patch: bool = setting(False, "whole mode: pad to a multiple of 16 instead of flooring (J.5)")
    dino_clean_input: bool = setting(False, "A.6: correct ImageNet normalisation for DINO")
    # CASS (SPEC C, D, E)
    gaussian_std: float = setting(5.0, "std of the Gaussian window of the attention graphs", gt=0)
    k_eigen: int = setting(20, "eigenvalues compared between the DINO and CLIP graphs", min=1, max=4096)
    rank: int = setting(10, "rank of the low-rank DINO graph", min=1, max=4096)
    eigenscale: bool = setting(True, "scale the eigenvectors by their eigenvalues")
    beta: float = setting(10.0, "fusion strength of the graphs", min=0)
    paper_matching: bool = setting(False, "head matching as written in the paper")
    energy_rank: Optional[float] = setting(None, "energy share that picks the rank per head (none: fixed rank)",
                                           gt=0, max=1)
    spectral_dtype: str = setting("float64", "float64 (reference) or float32 (faster on GPUs)",
                                  choices=("float64", "float32"))
    eigh_placement: str = setting("auto", "where the 64x64 eigh runs (core.eigensolver; the same results)",
                                  choices=PLACEMENTS, output=False)
    gamma: float = setting(0.25, "weight of the global image prior in the text adjustment", min=0, max=1)
    alpha: float = setting(0.03, "weight of the patch features in the text adjustment", min=0, max=1)
    h_threshold: float = setting(0.10, "distance threshold of the text clustering", min=0, max=2)
    top_k: int = setting(2, "patches per class in the text adjustment", min=1, max=4096)
    logit_scale: float = setting(40.0, "scale of the patch-text similarities", gt=0)
    prob_thd: float = setting(0.0, "probability below which a pixel is background (0: none)", min=0, max=1)
    # CDAM (SPEC G, H)
    cdam_temperature: float = setting(0.1, "CDAM similarity temperature", gt=0)
    cdam_attn_temperature: float = setting(0.1, "CDAM attention temperature", gt=0)
    cdam_scales: Tuple[float, ...] = setting((0.25, 0.37, 0.5, 0.63, 0.75, 0.87), "CDAM scales",
                                             item_gt=0, item_max=1)
    cdam_similarity: str = setting("cass", "cass: (1-g) F[T';Taug] + g[g;gaug]; raw: F[T;Taug]",
                                   choices=("cass", "raw"))
    cdam_row_normalize: bool = setting(False, "row-normalise the CDAM map")
    cdam_mix: float = setting(1.0, "share of the CDAM map in the attention", min=0, max=1)
    # dtype of the CDAM map; its sharp temperatures (T = P = 0.1) amplify fp32 round-off ~1e4x,
    # enough to make results depend on batch composition
    cdam_dtype: str = setting("float64", "dtype of the CDAM map", choices=("float64", "float32"))
    cdam_readjust_text: bool = setting(True, "H.5: redo the E.3 adjustment on the re-predicted features")
    bg_rule: str = setting("entropy", "with +cdam: entropy (G.7 once per image), cass_fixed (prob_thd) or none",
                           choices=("entropy", "cass_fixed", "none"))
    entropy_source: str = setting("image", "image, or last_crop (reference parity)", choices=("image", "last_crop"))
    entropy_logit_scale: float = setting(50.0, "logit scale of the entropy rule", gt=0)
    entropy_thr_default: float = setting(0.5, "threshold of the entropy rule when it is undecided", min=0, max=1)
    entropy_alpha: float = setting(2.5, "slope of the entropy rule", min=0)
    # PAMR (SPEC K.1-K.4): on the raw query logits at the original size, before logit_scale,
    # softmax, synonym merge and background
    pamr_steps: int = setting(0, "PAMR refinement steps on the full-resolution logits (0: off, the published "
                              "protocol; 10: the seeds' --pamr on)", min=0, max=1000, label="PAMR steps",
                              group="refinement")
    pamr_dilations: Tuple[int, ...] = setting((8, 16), "PAMR neighbour dilations, in pixels", item_min=1, item_max=512,
                                              label="PAMR dilations", group="refinement", shown_with="pamr_steps")
    pamr_guide: str = setting("processed", "image guiding PAMR: processed (the reference's up-sampled resized, "
                              "CLIP-normalised image) or original", choices=("processed", "original"),
                              label="PAMR guide image", group="refinement", shown_with="pamr_steps")
    # memory (not results): bytes allowed for the full-resolution logits of one image and the
    # up-sampled windows being stitched; larger images are labelled in row bands (the same label
    # maps). None = no bound (the whole image at once: Q x H x W floats, ~0.7 GB per megapixel
    # with 171 names). PAMR's bands are never thinner than its halo (models/segmenter.py
    # pamr_min_band), so with PAMR on a wide image can go over the budget (warned with the figure)
    full_res_budget: Optional[int] = setting(256 * 2**20, "bytes for one image's full-resolution logits "
                                             "(larger images go in row bands; none: no bound; PAMR bands "
                                             "are at least one halo tall and may go over it, with a warning)",
                                             min=2**20,
                                             output=False)


def options_from_json(value) -> Dict[str, Any]:
    """Segmenter options given as a JSON object string (CLI ``--options``, operator input) or a
    dict. Raises :class:`InvalidInputError` unless it is a JSON object."""
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    import json

    try:
        out = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"options must be a JSON object, e.g. '{{\"mode\": \"whole\"}}': {exc}") from None
    if not isinstance(out, dict):
        raise InvalidInputError("options must be a JSON object")
    return out


