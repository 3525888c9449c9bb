"""The segmenter pipeline: resize -> windows in batches -> last-block variants -> stitching ->
class merging -> background. Batched over windows of several images (SPEC A, E, G, H)."""

from __future__ import annotations

import os
import dataclasses
import math
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from fiftyone_cass.core import cdam as cdam_ops
from fiftyone_cass.core.entropy import entropy_range, threshold_from_entropy
from fiftyone_cass.core.cass import CassOptions
from fiftyone_cass.core.confidence import ConfidenceSums, band_sums, pixel_confidence
from fiftyone_cass.core.graphs import resample_dino_keys
from fiftyone_cass.core.pamr import pamr_halo, refine_rows
from fiftyone_cass.core.preprocess import clip_normalize
from fiftyone_cass.core.presence import cluster_text, merge_synonyms
from fiftyone_cass.core.regions import VOTES, Region, RegionSums, vote
from fiftyone_cass.core.windows import (
    SMALL_OUTPUT,
    bilinear_variant,
    keep_ratio_size,
    row_bands,
    sliding_windows,
    stitch_windows,
    upsample_logits,
    upsample_rows,
)
from fiftyone_cass.errors import ImageLoadError, InvalidInputError, is_sample_error
from fiftyone_cass.images import describe, load_rgb
from fiftyone_cass.methods import get_family, method_names, split_method
from fiftyone_cass.config.options import SegmenterOptions, options_from_json  # noqa: F401 - re-exported
from fiftyone_cass.config.schema import settings_doc
from fiftyone_cass.config.settings import EngineSettings, settings_for
from fiftyone_cass.models import clip_visual as cv
from fiftyone_cass.models.backbones import cached_models, cached_prior, get_backbone_spec
from fiftyone_cass.models.dino import dino_keys, dino_pixels_from_clip
from fiftyone_cass.models.profiling import NO_STAGE, StageTimer
from fiftyone_cass.models.presets import FREE_VOCAB, Preset, cdam_aug_words
from fiftyone_cass.models.text import text_embedder
from fiftyone_cass.models.vocabulary import Vocabulary, vocabulary_of



def __getattr__(name):
    if name == "METHODS":  # every registered family, alone and with +cdam, now (fiftyone_cass.methods)
        return tuple(method_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # EngineSettings.precision


@dataclass
class SegmentationResult:
    """One image's output."""

    label_map: np.ndarray  # (H, W) at the original size; uint8, or uint16 for > 256 labels
    presence: np.ndarray  # (num_labels,) softmax over classes of the global similarity (NaN: no query)
    threshold: float  # background threshold that was applied (0 = none)
    name: str = ""
    #: the global CLIP image embedding ``(E,)`` float32, unit norm, in the text embeddings' space
    #: (the E.1 prior); None when the pipeline did not compute it (see ``Segmenter.return_embeddings``)
    embedding: Optional[np.ndarray] = None
    #: how sure the engine is of this label map (None unless ``Segmenter.return_confidence``)
    confidence: Optional["LabelConfidence"] = None
    #: per-pixel uncertainty ``(H, W)`` float32 in [0, 1] at the original size (None unless
    #: ``Segmenter.uncertainty`` is set): 1 - margin, or the normalised query entropy
    uncertainty: Optional[np.ndarray] = None
    #: per-pixel class probability ``(H, W)`` float32 in [0, 1] of each label in
    #: ``Segmenter.probability_maps`` (None unless set)
    probabilities: Optional[Dict[int, np.ndarray]] = None
    #: regions given for region voting (SPEC K.5; None: no regions given, not voted)
    regions_voted: Optional[int] = None

    def presence_dict(self, class_names: Sequence[str]) -> Dict[str, float]:
        return {n: float(p) for n, p in zip(class_names, self.presence) if np.isfinite(p)}


@dataclass
class LabelConfidence:
    """Per-image confidence of a label map, from the class probabilities of every pixel (E.5):
    ``mean`` top-1 class probability, ``margin`` mean top-1 minus top-2, ``removed`` the share of
    pixels the background rule turned into background (each in [0, 1]), and ``per_class`` the mean
    top-1 probability of the pixels given each label ``(num_labels,)`` (NaN: no pixel)."""

    mean: float
    margin: float
    removed: float
    per_class: np.ndarray


#: per-pixel uncertainty kinds of ``Segmenter.uncertainty``
UNCERTAINTY_KINDS = ("margin", "entropy")
#: on a CPU, the full-resolution label step (no PAMR) cuts its row bands at most this big for the
#: labels alone (the confidence outputs' tensors ride along in the same rows), however large
#: ``full_res_budget`` is (a bound on memory, not a target): bands that stay in the caches
#: were measured twice as fast at 12 MP as 256 MiB ones, with the same label maps
#: (benchmarks/RESULTS.md, "Full-resolution bands on a CPU"). ``full_res_budget=None`` (unbounded)
#: keeps the whole-image computation.
CPU_BAND_BYTES = 32 * 2**20


@dataclass
class _Prepared:
    index: int
    name: str
    original_size: Tuple[int, int]
    image: torch.Tensor  # CLIP-normalised (3, H, W), possibly padded
    size: Tuple[int, int]  # resized size before padding
    windows: List[Tuple[int, int, int, int]] = field(default_factory=list)
    rgb: Optional[np.ndarray] = None  # the original pixels, kept only to guide PAMR (pamr_guide="original")
    regions: Optional[List[Region]] = None  # regions to vote in (SPEC K.5); None: no voting
    votes: Optional[RegionSums] = None  # the mean vote's per-region class-probability sums
    vote_mode: str = "majority"
    min_area: int = 0


def device_memory_bytes(device) -> Optional[int]:
    """The memory of ``device``: a GPU's total memory, else the machine's RAM (None if unknown)."""
    try:
        if torch.device(device).type == "cuda":
            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


class Segmenter:
    """Open-vocabulary semantic segmentation with CASS (+ CDAM) on CLIP ViT-B/16 + DINO ViT-B/8.

    Args:
        classes: class names (a list, or one string separated by commas or new lines). In a list,
            an entry may hold synonyms separated by ", " (the class files' convention). Label id
            0 is background; classes get ids 1..C in order.
        preset: one of the published protocols (voc21, voc20, context60, context59, coco_object,
            coco_stuff, ade20k, cityscapes): its class file, ids and constants.
        models: ready ``(clip, dino, tokenizer)`` instead of loading the backbone's weights; a
            fourth item ``(prior_clip, prior_tokenizer)`` gives the prior CLIP of a record with one
            (SPEC L.1; otherwise it is loaded as the record says).
        settings: a built :class:`~fiftyone_cass.config.settings.EngineSettings` (or a subclass:
            :func:`~fiftyone_cass.config.settings.build_settings`), handed down by the layer above;
            or instead
        **keywords: :class:`~fiftyone_cass.config.settings.EngineSettings` fields (below) and any
            :class:`SegmenterOptions` field; each value is checked against its declaration.

    Engine settings:
    """

    __doc__ += settings_doc(EngineSettings, indent="        ") + "\n"

    #: a :class:`~fiftyone_cass.models.profiling.StageTimer` to time the stages (None: off, free)
    profiler: Optional[StageTimer] = None
    #: attach the global image embedding to every result. Free in the slide protocol with the
    #: image prior (the default: the prior *is* that embedding); with ``mode="whole"`` or
    #: ``global_prior="crop"`` it costs one more CLIP forward per image, so it is off unless set
    return_embeddings: bool = False
    #: compute :class:`LabelConfidence` with every result, in the same row bands as the labels
    #: (no further full-resolution memory; it does not change the labels)
    return_confidence: bool = False
    #: a per-pixel uncertainty map with every result: None, "margin" (1 - top-1 + top-2 class
    #: probability) or "entropy" (query entropy / log Q)
    uncertainty: Optional[str] = None
    #: labels whose per-pixel class probability map comes with every result (concept heatmaps)
    probability_maps: Tuple[int, ...] = ()
    #: region voting (SPEC K.5) for images given with regions (``segment_arrays(..., regions=)``):
    #: "majority" (the most frequent label of a region's pixels) or "mean" (the argmax of their
    #: mean class probabilities), and the smallest region kept, in pixels
    region_vote: str = "majority"
    region_min_area: int = 0

    def __init__(
        self,
        classes: Union[None, str, Sequence[str]] = None,
        preset: Optional[str] = None,
        *,
        models: Optional[Tuple[Any, Any, Any]] = None,
        settings: Optional[EngineSettings] = None,
        **keywords,
    ):
        # one settings object (EngineSettings fields + the Segmenter options), checked once: the
        # caller's (CassModel, apply, the operator, the CLI) or built here from the keywords
        engine = self.settings = settings_for(EngineSettings, settings, keywords)
        method, backbone, background = engine.method, engine.backbone, engine.background
        self.base, self.use_cdam = split_method(method)
        self.family = get_family(self.base)
        self.method = method
        self.batch_size = engine.batch_size
        self.window_batch = engine.window_batch
        self.precision = engine.precision
        self.device = torch.device(engine.device)  # resolved with the settings
        self.backbone = backbone

        # the vocabulary (one object shared with the FiftyOne side: models/vocabulary.py)
        self.vocabulary = self._vocabulary(classes, preset, background)
        self.preset: Preset = self.vocabulary.preset or FREE_VOCAB
        self.options = self._options(engine.options)
        v = self.vocabulary
        self.class_lines = list(v.class_lines)
        self.queries, owner = v.queries, v.query_owner
        self.query_to_class = torch.tensor(owner, dtype=torch.long, device=self.device)
        self.num_labels = v.num_labels
        self.has_queries = v.has_queries
        self.class_names = list(v.names)
        self.background_id = v.background_label
        self.mask_targets = dict(v.mask_targets)

        # models: the backbone record (models/backbones.py) says which, and the VFM's input rule
        self.record = get_backbone_spec(backbone)
        if models is None:
            models = cached_models(backbone, engine.clip_checkpoint, engine.dino_checkpoint, self.device,
                                   self.family.needs_dino)
        if not isinstance(models, (tuple, list)) or len(models) not in (3, 4):
            raise InvalidInputError(f"models must be a (clip, dino, tokenizer) tuple of loaded models (dino None "
                                    f"for methods without DINO), or (clip, dino, tokenizer, (prior, tokenizer)), "
                                    f"not {type(models).__name__} {models!r:.80}")
        models = tuple(models)
        self.clip, self.dino, self.tokenizer = models[:3]
        self.visual = self.clip.visual
        # the object-presence prior's CLIP (SPEC L.1): its own image forward and text embeddings
        prior = models[3] if len(models) == 4 else (cached_prior(backbone, self.device) if self.record.prior else None)
        self.prior, self.prior_tokenizer = prior if prior is not None else (None, None)
        self.prior_visual = self.visual if self.prior is None else self.prior.visual
        if self.family.needs_dino and self.dino is None:
            raise InvalidInputError(f"method {self.base!r} needs a DINO model")
        self.heads = cv.num_heads(self.visual)
        self.head_dim = cv.width(self.visual) // self.heads
        if self.dino is not None:
            dh = self.dino.blocks[-1].attn.num_heads
            dd = self.dino.embed_dim // dh
            if (dh, dd) != (self.heads, self.head_dim):
                raise InvalidInputError(
                    f"DINO head geometry {dh}x{dd} differs from CLIP's {self.heads}x{self.head_dim} (SPEC J.3)"
                )
        # one text cache per CLIP model, shared by every Segmenter using it
        self.embedder = text_embedder(self.clip, self.tokenizer, self.device)
        self.prior_embedder = None if self.prior is None else text_embedder(self.prior, self.prior_tokenizer, self.device)
        self._prepare_text()

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _vocabulary(classes, preset, background) -> Vocabulary:
        return vocabulary_of(classes, preset, background)

    def _options(self, overrides) -> SegmenterOptions:
        p = self.preset
        base = dict(
            short_side=p.short_side, long_side=p.long_side, mode=p.mode, prob_thd=p.prob_thd,
            gamma=p.gamma, alpha=p.alpha, h_threshold=p.h_threshold, eigenscale=p.eigenscale,
            global_prior=p.global_prior,
        )
        if self.family.logit_scale is not None:
            base["logit_scale"] = self.family.logit_scale  # the family's protocol (CDAM/MaskCLIP: 50)
        base.update(overrides)  # (checked with the settings)
        return SegmenterOptions(**base)

    def _prepare_text(self) -> None:
        self.text = self.embedder(self.queries)  # (Q, E)
        self.clusters = torch.from_numpy(cluster_text(self.text, self.options.h_threshold)).to(self.device)
        if self.use_cdam:
            self.aug_words = cdam_aug_words()
            self.text_aug = self.embedder(self.aug_words)
        # the global similarity g = cos(v_glob, T) of E.1 in the prior CLIP's space (L.1): its own
        # text embeddings of the queries (and of CDAM's words); the patch path keeps self.text
        if self.prior_embedder is None:
            self.prior_text = self.text
            self.prior_text_aug = self.text_aug if self.use_cdam else None
        else:
            self.prior_text = self.prior_embedder(self.queries)
            self.prior_text_aug = self.prior_embedder(self.aug_words) if self.use_cdam else None
        o = self.options
        self.cass_options = CassOptions(
            gaussian_std=o.gaussian_std, k_eigen=o.k_eigen, rank=o.rank, eigenscale=o.eigenscale,
            beta=o.beta, paper_matching=o.paper_matching, energy_rank=o.energy_rank,
            spectral_dtype=torch.float64 if o.spectral_dtype == "float64" else torch.float32,
            eigh_placement=o.eigh_placement,
        )

    # ------------------------------------------------------------------ public API
    @staticmethod
    def _names(images: Sequence[Any], names: Optional[Sequence[str]]) -> List[str]:
        """``names`` (one per image, checked) or a description of each image."""
        if names is None:
            return [describe(im) for im in images]
        names = list(names)
        if len(names) != len(images):  # zip() would drop images or misname them
            raise InvalidInputError(f"{len(names)} names for {len(images)} images: give one name per image")
        return names

    def __call__(self, images: Sequence[Any], names: Optional[Sequence[str]] = None) -> List[SegmentationResult]:
        """Segment a list of images (paths, PIL images, HxW[xC] arrays). Returns one result per
        image, in order. Raises :class:`ImageLoadError` naming the first unreadable image; use
        :meth:`segment_safe` to get per-image errors instead."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images] if not isinstance(images, Iterable) or isinstance(images, (str, bytes)) else list(images)
        names = self._names(images, names)
        results: List[SegmentationResult] = []
        starts = list(range(0, len(images), self.batch_size))
        for start, rgbs in zip(starts, self._load_ahead(images, names, starts)):
            results.extend(self.segment_arrays(rgbs, names[start : start + self.batch_size]))
        return results

    def _load_ahead(self, images: Sequence[Any], names: List[str], starts: List[int]) -> Iterator[List[np.ndarray]]:
        """The decoded chunks, in order. While the caller segments one chunk, the next is decoded
        in a background thread (decoding releases the GIL), so loading overlaps compute. An
        unreadable image raises when its chunk is reached, as without the overlap. With a
        profiler attached, chunks are loaded in line, so the stage times do not overlap."""
        bs = self.batch_size

        def load(start: int) -> List[np.ndarray]:
            with self._stage("load"):
                return [load_rgb(im, n) for im, n in zip(images[start : start + bs], names[start : start + bs])]

        if len(starts) < 2 or self.profiler is not None:
            for start in starts:
                yield load(start)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cass-load") as pool:
            pending = pool.submit(load, starts[0])
            for i in range(len(starts)):
                rgbs = pending.result()
                if i + 1 < len(starts):
                    pending = pool.submit(load, starts[i + 1])
                yield rgbs

    segment = __call__

    def segment_safe(self, images: Sequence[Any], names: Optional[Sequence[str]] = None):
        """Like ``__call__`` but never raises for a bad image: returns ``(result | None, error | None)``
        per image, so one bad sample does not stop a batch. It is :meth:`load_safe` then
        :meth:`segment_loaded`; callers that overlap loading with compute call the two apart."""
        names = self._names(images, names)
        return self.segment_loaded(self.load_safe(images, names), names)

    def load_safe(self, images: Sequence[Any], names: Optional[Sequence[str]] = None):
        """Decodes images to RGB uint8 arrays without raising: ``(array | None, error | None)``
        per image. Thread-safe, and decoding releases the GIL: run it ahead in a thread."""
        names = self._names(images, names)
        out: List[Tuple[Optional[np.ndarray], Optional[str]]] = []
        for im, n in zip(images, names):
            try:
                out.append((load_rgb(im, n), None))
            except ImageLoadError as exc:
                out.append((None, str(exc)))
        return out

    def segment_loaded(self, loaded: Sequence[Tuple[Optional[np.ndarray], Optional[str]]], names: Sequence[str],
                       return_embeddings: Optional[bool] = None, regions: Optional[Sequence[Any]] = None,
                       region_vote: Optional[str] = None, region_min_area: Optional[int] = None):
        """Segments the output of :meth:`load_safe` in batches of ``batch_size``; a failed load
        stays an error, and a batch that raises a sample's error (an input error or out of memory,
        :func:`~fiftyone_cass.errors.is_sample_error`) is retried one image at a time so that only
        the failing image is reported. Any other exception is a bug and propagates at once.
        Returns ``(result | None, error | None)`` per image. ``return_embeddings``: see
        :meth:`segment_arrays`."""
        names = self._names(loaded, names)
        out: List[Tuple[Optional[SegmentationResult], Optional[str]]] = [(None, err) for _, err in loaded]
        good, good_names, where = [], [], []
        for i, ((arr, _), n) in enumerate(zip(loaded, names)):
            if arr is not None:
                good.append(arr)
                good_names.append(n)
                where.append(i)
        for start in range(0, len(good), self.batch_size):
            sl = slice(start, start + self.batch_size)
            try:
                res = self.segment_arrays(good[sl], good_names[sl], return_embeddings,
                                          None if regions is None else [regions[i] for i in where[sl]],
                                          region_vote, region_min_area)
                for i, r in zip(where[sl], res):
                    out[i] = (r, None)
            except Exception as exc:  # a sample's error: isolate the failing image by retrying one at a time
                if not is_sample_error(exc):
                    raise  # a bug: not a per-image failure
                del exc
                for i, arr, n in zip(where[sl], good[sl], good_names[sl]):
                    try:
                        out[i] = (self.segment_arrays([arr], [n], return_embeddings,
                                                      None if regions is None else [regions[i]],
                                                      region_vote, region_min_area)[0], None)
                    except Exception as exc1:  # noqa: BLE001 - reported per image
                        if not is_sample_error(exc1):
                            raise
                        out[i] = (None, f"{n}: {type(exc1).__name__}: {exc1}")
        return out

    @torch.no_grad()
    def segment_arrays(self, rgbs: Sequence[np.ndarray], names: Optional[Sequence[str]] = None,
                       return_embeddings: Optional[bool] = None,
                       regions: Optional[Sequence[Optional[List[Region]]]] = None, region_vote: Optional[str] = None,
                       region_min_area: Optional[int] = None) -> List[SegmentationResult]:
        """Segment RGB uint8 arrays ``(H, W, 3)`` as one batch: all windows of all images go
        through the backbones together (in chunks of ``window_batch``). ``return_embeddings``
        (None: :attr:`return_embeddings`) forces the global image embedding on every result.
        ``regions``: per image, the :class:`~fiftyone_cass.core.regions.Region` list to vote in
        (SPEC K.5) or None (not voted); ``region_vote`` / ``region_min_area`` (None: the
        attributes of the same names)."""
        if return_embeddings is None:
            return_embeddings = self.return_embeddings
        names = list(names) if names is not None else [f"image {i}" for i in range(len(rgbs))]
        with self._stage("prepare"):
            prepared = [self._prepare(i, a, n) for i, (a, n) in enumerate(zip(rgbs, names))]
        if not prepared:
            return []
        if regions is not None:
            if len(regions) != len(prepared):
                raise InvalidInputError(f"{len(regions)} region lists for {len(prepared)} images")
            mode = self.region_vote if region_vote is None else region_vote
            min_area = self.region_min_area if region_min_area is None else int(region_min_area)
            if mode not in VOTES:
                raise InvalidInputError(f"region_vote={mode!r} is not allowed: one of {', '.join(VOTES)}")
            for p, r in zip(prepared, regions):
                p.regions = None if r is None else list(r)
                p.vote_mode, p.min_area = mode, min_area
                if p.regions is not None and mode == "mean":
                    p.votes = RegionSums(p.regions, self.num_labels)
        o = self.options
        # global prior v_glob once per image (SPEC E.1 [rec]), by the prior CLIP (L.1; the CLIP
        # itself by default); whole mode / crop prior: per window. The image embeddings returned
        # are always the CLIP's (the space of embedder's text embeddings).
        image_prior = o.mode == "slide" and o.global_prior == "image"
        per_image_prior = emb = None
        if image_prior:
            with self._stage("clip_global"):
                per_image_prior = self._global_embeddings(prepared, self.prior_visual)
        if return_embeddings:
            if per_image_prior is not None and self.prior is None:
                emb = per_image_prior
            else:
                with self._stage("clip_global"):
                    emb = self._global_embeddings(prepared)
        # gather windows
        crops, owners = [], []
        for p in prepared:
            for (y1, y2, x1, x2) in p.windows:
                crops.append(p.image[:, y1:y2, x1:x2])
                owners.append(p.index)
        window_logits: List[torch.Tensor] = []
        window_hrange: List[torch.Tensor] = []
        window_g: List[torch.Tensor] = []
        for start in range(0, len(crops), self.window_batch):
            chunk = crops[start : start + self.window_batch]
            own = owners[start : start + self.window_batch]
            # windows of one size are batched together (whole mode may mix sizes)
            groups: Dict[Tuple[int, int], List[int]] = {}
            for j, c in enumerate(chunk):
                groups.setdefault(tuple(c.shape[-2:]), []).append(j)
            res: List[Any] = [None] * len(chunk)
            for _, idx in groups.items():
                batch = torch.stack([chunk[j] for j in idx])
                vg = per_image_prior[[own[j] for j in idx]] if per_image_prior is not None else None
                logits, hmin, hmax, g = self._forward_windows(batch, vg)
                for k, j in enumerate(idx):
                    res[j] = (logits[k], torch.stack([hmin[k], hmax[k]]), g[k])
            for r in res:
                window_logits.append(r[0])
                window_hrange.append(r[1])
                window_g.append(r[2])
        results = []
        cursor = 0
        for p in prepared:
            n = len(p.windows)
            wl = window_logits[cursor : cursor + n]
            hr = torch.stack(window_hrange[cursor : cursor + n])
            g = torch.stack(window_g[cursor : cursor + n]).mean(0)
            cursor += n
            with self._stage("stitch"):
                res = self._finish(p, wl, hr, g)
            if emb is not None:
                res.embedding = emb[p.index].to("cpu", torch.float32).numpy().copy()
            results.append(res)
        return results

    @torch.no_grad()
    def embed_arrays(self, rgbs: Sequence[np.ndarray], names: Optional[Sequence[str]] = None) -> np.ndarray:
        """The global CLIP image embeddings ``(B, E)`` (float32, unit norm) of RGB uint8 arrays:
        the whole image resized by the protocol's rule, one unmodified CLIP forward (E.1), the
        same vectors :attr:`SegmentationResult.embedding` holds. Comparable with
        ``embedder(texts)``: the text embeddings of the 80-template ensemble."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(rgbs))]
        if not len(rgbs):
            return np.zeros((0, self.text.shape[1]), np.float32)
        with self._stage("prepare"):
            prepared = [self._prepare(i, a, n) for i, (a, n) in enumerate(zip(rgbs, names))]
        with self._stage("clip_global"):
            emb = self._global_embeddings(prepared)
        return emb.to("cpu", torch.float32).numpy()

    # ------------------------------------------------------------------ stages
    def _stage(self, name: str):
        """Context timing one pipeline stage when a profiler is attached; a shared no-op otherwise."""
        return NO_STAGE if self.profiler is None else self.profiler(name)

    def _prepare(self, index: int, rgb: np.ndarray, name: str) -> _Prepared:
        import cv2

        h0, w0 = rgb.shape[:2]
        if h0 < 1 or w0 < 1:
            raise ImageLoadError(f"{name}: image has zero size {w0}x{h0}")
        o = self.options
        h, w = keep_ratio_size(h0, w0, o.long_side, o.short_side)
        self._check_memory(name, h, w)
        resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR) if (h, w) != (h0, w0) else rgb
        img = clip_normalize(torch.as_tensor(np.array(resized, copy=not resized.flags.writeable)).to(self.device).permute(2, 0, 1))
        if o.mode == "slide":
            # images smaller than a crop are zero-padded (0 = the CLIP mean colour) to one crop
            ph, pw = max(h, o.crop), max(w, o.crop)
            if (ph, pw) != (h, w):
                img = F.pad(img, (0, pw - w, 0, ph - h))
            windows = sliding_windows(ph, pw, o.crop, o.stride)
        else:
            ph, pw = h, w
            if o.pad_to_patch or h < 16 or w < 16:
                ph, pw = max(-(-h // 16) * 16, 16), max(-(-w // 16) * 16, 16)
                img = F.pad(img, (0, pw - w, 0, ph - h))
            windows = [(0, ph, 0, pw)]
        keep = rgb if (o.pamr_steps > 0 and o.pamr_guide == "original") else None
        return _Prepared(index, name, (h0, w0), img, (h, w), windows, keep)

    def _check_memory(self, name: str, h: int, w: int) -> None:
        """Refuses (per image, before anything is allocated) a processing size whose whole-image
        pass cannot fit the device: CLIP's attention over every patch of the resized image (heads x
        tokens^2 floats, in whole mode and for the image-level prior) and the logits canvases."""
        o = self.options
        ph, pw = cv.patch_size(self.visual)
        tokens = max(h // ph, 1) * max(w // pw, 1)
        whole_pass = o.mode != "slide" or o.global_prior == "image"
        need = (cv.num_heads(self.visual) * tokens * tokens * 4 if whole_pass else 0) + 3 * len(self.queries) * h * w * 4
        have = device_memory_bytes(self.device)
        if have is not None and need > have:
            raise InvalidInputError(
                f"{name}: with short_side={o.short_side} and long_side={o.long_side} it is processed at {w}x{h} "
                f"({tokens} CLIP tokens), which needs about {need / 2**30:.0f} GiB, more than the "
                f"{have / 2**30:.0f} GiB of memory of {self.device}; lower short_side/long_side (e.g. the "
                "defaults)")

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def _trunk(self, images: torch.Tensor, visual=None):
        with self._autocast():
            x, grid = cv.trunk(self.visual if visual is None else visual, images)
        return x.float(), grid

    def _global_embeddings(self, prepared: List[_Prepared], visual=None) -> torch.Tensor:
        """One unmodified CLIP forward per image on the whole resized image (E.1), batched over
        images of the same size; ``visual``: the prior CLIP's image tower (default: the CLIP's)."""
        visual = self.visual if visual is None else visual
        out: List[Optional[torch.Tensor]] = [None] * len(prepared)
        groups: Dict[Tuple[int, int], List[int]] = {}
        ph, pw = cv.patch_size(visual)
        for p in prepared:
            # a side shorter than one patch uses the zero padding added by _prepare
            groups.setdefault((max(p.size[0], ph), max(p.size[1], pw)), []).append(p.index)
        for size, idx in groups.items():
            imgs = torch.stack([prepared[i].image[:, : size[0], : size[1]] for i in idx])
            x, _ = self._trunk(imgs, visual)
            with self._autocast():
                g = cv.global_embedding(visual, x)
            for k, i in enumerate(idx):
                out[i] = g[k].float()
        return torch.stack(out)

    def _dino_keys_on_grid(self, crops: torch.Tensor, grid) -> torch.Tensor:
        """The VFM's keys by the record's input rule (B.6, L.2), resampled to CLIP's grid."""
        v = self.record.vfm
        pixels = dino_pixels_from_clip(crops, clean=self.options.dino_clean_input, size=v.input_size,
                                       norm_mean=v.mean, norm_std=v.std)
        with self._autocast():
            keys, dgrid = dino_keys(self.dino, pixels, v.registers, v.keys == "rope")
        return resample_dino_keys(keys.float(), dgrid, grid)

    def _forward_windows(self, crops: torch.Tensor, vglob: Optional[torch.Tensor]):
        """All last-block work for a batch of same-size windows, through the method family's hooks
        (:mod:`fiftyone_cass.methods`). Returns patch-resolution query logits ``(B, Q, h, w)``,
        each window's entropy range (G.7) ``(B,), (B,)`` and the raw global similarity."""
        o = self.options
        with self._stage("clip"):
            x, grid = self._trunk(crops)
        if vglob is None:
            if self.prior is None:
                with self._autocast():
                    vglob = cv.global_embedding(self.visual, x).float()
            else:  # the prior CLIP's own forward on the windows (L.1)
                with self._stage("clip_global"):
                    px, _ = self._trunk(crops, self.prior_visual)
                    with self._autocast():
                        vglob = cv.global_embedding(self.prior_visual, px).float()
        g = vglob @ self.prior_text.T  # (B, Q) raw cosine, unadjusted text (E.1; L.1: the prior's)
        b = x.shape[0]
        family = self.family
        out = family.features(self, x, crops, grid)
        logits, text_adj = family.logits(self, out.feats, g)
        if self.use_cdam:
            with self._stage("cdam"):
                cd = self._cdam_map(family.cdam_similarity(self, out.feats, g, vglob, text_adj), grid)
                feats = family.repredict(self, x, out, cd.to(out.feats.dtype))
            logits = family.relogits(self, feats, g, text_adj)
        qlogits = logits.transpose(1, 2).reshape(b, -1, *grid)
        # G.7 entropy range per window over the Q queries (before the synonym max, H.6)
        hmin, hmax = entropy_range(qlogits, o.entropy_logit_scale)
        return qlogits, hmin, hmax, g

    def _cdam_map(self, sim: torch.Tensor, grid) -> torch.Tensor:
        """SPEC G.2-G.5: the multi-scale CDAM map ``(B, N, N)`` of the similarity ``(B, N, Q + A)``."""
        o = self.options
        sim = sim.transpose(1, 2).reshape(sim.shape[0], -1, *grid)
        cdt = torch.float64 if o.cdam_dtype == "float64" else torch.float32
        return cdam_ops.multiscale_cdam(sim.to(cdt), o.cdam_scales, o.cdam_temperature, o.cdam_attn_temperature)

    _warned: set = set()

    @classmethod
    def _warn_once(cls, message: str) -> None:
        if message not in cls._warned:
            cls._warned.add(message)
            import logging

            logging.getLogger("fiftyone_cass").warning(message)

    def _finish(self, p: _Prepared, window_logits: List[torch.Tensor], hrange: torch.Tensor, g: torch.Tensor) -> SegmentationResult:
        o = self.options
        h, w = p.size
        budget = o.full_res_budget
        if o.mode == "slide":
            ph, pw = max(h, o.crop), max(w, o.crop)
            canvas = stitch_windows(torch.stack(window_logits), p.windows, (ph, pw), budget)[:, :h, :w]
        else:
            y1, y2, x1, x2 = p.windows[0]
            lg = window_logits[0]
            if o.pad_to_patch or y2 != h or x2 != w:
                canvas = upsample_logits(lg, (y2, x2))[:, :h, :w]
            else:
                canvas = upsample_logits(lg, (h, w))  # floor grid stretched over H x W (J.5)
        thr = 0.0
        if self.background_id is not None:
            if self.use_cdam and o.bg_rule == "entropy":
                if o.entropy_source == "last_crop":
                    hmin, hmax = hrange[-1, 0], hrange[-1, 1]
                else:
                    hmin, hmax = hrange[:, 0].min(), hrange[:, 1].max()
                thr = float(threshold_from_entropy(hmin, hmax, o.entropy_thr_default, o.entropy_alpha))
            elif o.bg_rule != "none":
                thr = o.prob_thd
        dtype = np.uint8 if self.num_labels <= 256 else np.uint16
        h0, w0 = p.original_size
        q = canvas.shape[0]
        item = canvas.element_size()
        cap = CPU_BAND_BYTES if budget is not None and canvas.device.type == "cpu" else None  # cache-sized bands
        # the whole-image computation holds up to four (Q, H0, W0) tensors (logits, scaled,
        # shifted, exponentiated); row bands hold about (2 + source rows per row) per band
        extras = self._band_outputs(p.original_size)
        # the confidence outputs hold one more (Q, H, W) tensor and a boolean one
        extra = 0.0 if extras is None else 1.0 + 1.0 / item
        whole_fits = budget is None or (4 + extra) * q * h0 * w0 * item <= min(budget, cap or budget)
        small = h0 + w0 <= SMALL_OUTPUT or (w != w0 and h + w0 <= SMALL_OUTPUT)
        if o.pamr_steps > 0:
            label_map = self._pamr_labels(p, canvas, thr, dtype, small, extras)
        elif whole_fits or small:
            labels = self._labels(upsample_logits(canvas, p.original_size), thr, inplace=True,
                                  extras=extras, rows=(0, h0), votes=p.votes)  # (Q, H0, W0)
            label_map = labels.to("cpu", torch.int64).numpy().astype(dtype)
        else:
            variant = bilinear_variant(canvas.device)
            if variant is None:
                variant = "addcmul"
                self._warn_once(
                    f"bilinear up-sampling on {canvas.device} matches none of the known roundings; "
                    "label maps of images over full_res_budget may differ from an unbounded run at a few pixels"
                )
            per_pixel = int(q * item * (2 + extra + -(-h // h0))) + 32 + (0 if extras is None else 48)
            if cap is not None:  # the rows of a cache-sized band of the labels alone, with or without the extras
                budget = min(budget, cap * per_pixel // (int(q * item * (2 + -(-h // h0))) + 32))
            label_map = np.empty((h0, w0), dtype)
            for a, b in row_bands(h0, w0, per_pixel, budget):
                band = upsample_rows(canvas, p.original_size, a, b, variant)  # (Q, b - a, W0)
                label_map[a:b] = self._labels(band, thr, inplace=True, extras=extras,
                                              rows=(a, b), votes=p.votes).to("cpu", torch.int64).numpy()
                del band
        if p.regions is not None:  # SPEC K.5, on the final label map
            label_map, _ = vote(label_map, p.regions, p.vote_mode, p.min_area,
                                None if p.votes is None else p.votes.sums, thr, self.background_id)
        result = SegmentationResult(label_map, self.presence_scores(g), thr, p.name)
        result.regions_voted = None if p.regions is None else len(p.regions)
        if extras is not None:
            extras.attach(result)
        return result

    def _pamr_labels(self, p: _Prepared, canvas: torch.Tensor, thr: float, dtype, small: bool,
                     extras: Optional["_BandOutputs"] = None) -> np.ndarray:
        """The label map with PAMR (SPEC K) on the raw query logits at the original size, in row
        bands under ``full_res_budget`` with the exact halo (:func:`~fiftyone_cass.core.pamr.refine_rows`):
        the same label map as the whole image at once. Band heights and channel chunks come from
        :func:`pamr_band_plan`: what one band holds stays under the budget, except that a band is
        never thinner than one halo (each band recomputes its halo: thinner bands would multiply
        the work); then the band's memory is over the budget and that is warned once with its
        figure."""
        o = self.options
        h0, w0 = p.original_size
        h, w = p.size
        q, item = canvas.shape[0], canvas.element_size()
        budget = o.full_res_budget
        steps, dil = o.pamr_steps, tuple(o.pamr_dilations)
        halo = pamr_halo(steps, dil)
        neighbours = 8 * len(dil)
        extra = 0.0 if extras is None else 1.0 + 1.0 / item
        whole = small or budget is None or (6 * q + 2 * neighbours + 8) * h0 * w0 * item <= budget
        if whole:
            bands, full, variant = [(0, h0)], upsample_logits(canvas, p.original_size), None
        else:
            full = None
            variant = bilinear_variant(canvas.device)
            if variant is None:
                variant = "addcmul"
                self._warn_once(f"bilinear up-sampling on {canvas.device} matches none of the known roundings; "
                                "PAMR label maps of images over full_res_budget may differ from an unbounded run")
            rows, _, need = pamr_band_plan(q, h0, w0, item, budget, steps, dil, extra)
            if need > budget:
                self._warn_once(f"PAMR on {w0}x{h0} images with {q} queries uses about {need / 2**20:.0f} MiB per "
                                f"{rows}-row band, over full_res_budget={budget / 2**20:.0f} MiB: a band is at "
                                f"least one halo ({halo} rows) tall so that the work stays within 2-3x one pass")
            bands = [(a, min(a + rows, h0)) for a in range(0, h0, rows)]
        image = p.image[:, :h, :w]

        def read_guide(e0, e1):
            if p.rgb is not None:  # the original pixels, CLIP-normalised like the processed image
                return clip_normalize(torch.as_tensor(np.ascontiguousarray(p.rgb[e0:e1])).to(canvas.device).permute(2, 0, 1))[None]
            if full is not None:
                return upsample_logits(image, p.original_size)[None, :, e0:e1]
            return upsample_rows(image, p.original_size, e0, e1, variant)[None]

        def read_mask(c0, c1, e0, e1):
            if full is not None:
                return full[None, c0:c1, e0:e1]
            return upsample_rows(canvas[c0:c1], p.original_size, e0, e1, variant)[None]

        label_map = np.empty((h0, w0), dtype)
        for a, b in bands:
            ext = min(b + halo, h0) - max(a - halo, 0)
            chunk = q if whole else _pamr_chunk(q, ext, w0, item, budget)
            band = refine_rows(read_guide, read_mask, q, h0, a, b, steps, dil, chunk)[0]
            label_map[a:b] = self._labels(band, thr, inplace=True, extras=extras, rows=(a, b),
                                          votes=p.votes).to("cpu", torch.int64).numpy()
            del band
        return label_map

    def _band_outputs(self, size: Tuple[int, int]) -> Optional["_BandOutputs"]:
        """The collector of the confidence outputs asked for (None: none)."""
        if not (self.return_confidence or self.uncertainty or self.probability_maps):
            return None
        return _BandOutputs(self, size)

    def _labels(self, logits: torch.Tensor, thr: float, inplace: bool = False,
                extras: Optional["_BandOutputs"] = None, rows: Tuple[int, int] = (0, 0),
                votes: Optional[RegionSums] = None) -> torch.Tensor:
        """E.5 / G.8 on full-resolution query logits ``(Q, H, W)`` without materialising the
        query and class probabilities (two Q x H x W tensors and a scatter): the softmax is
        monotone, so the top class is the owner of the top query (queries are ordered by class,
        so ties go to the lowest class id, as an argmax over classes does), and the top
        probability is the softmax's value at the top query, computed only when a threshold
        applies. ``inplace``: ``logits`` may be overwritten (no further Q x H x W tensor; the
        same values, as in-place and out-of-place operations share their kernels)."""
        scale = self.options.logit_scale
        x = logits.mul_(scale) if inplace else scale * logits
        if votes is not None:  # the mean vote: class probabilities (E.5: softmax, max over synonyms) summed per region
            probs = torch.softmax(x, 0)
            cls = probs.new_zeros((self.num_labels, *probs.shape[1:]))  # a label without queries: 0
            q2c = self.query_to_class
            single = torch.bincount(q2c, minlength=self.num_labels)[q2c] == 1
            cls.index_copy_(0, q2c[single], probs[single])  # one-query labels: their query's plane
            for c in torch.unique(q2c[~single]).tolist():  # a max over synonyms is exact in any order
                cls[c] = probs[q2c == c].amax(0)
            del probs
            votes.add(cls, rows)
            del cls
        if extras is not None:  # the same labels, with the class probabilities' figures
            conf = pixel_confidence(x, self.query_to_class, inplace=inplace, classes=extras.classes,
                                    entropy=extras.kind == "entropy")
            labels = self.query_to_class[conf.query]
            if thr > 0:
                drop = conf.p1 < thr
                bg = self.background_id or 0
                removed = drop & (labels != bg)
                labels = torch.where(drop, torch.full_like(labels, bg), labels)
            else:
                removed = torch.zeros_like(labels, dtype=torch.bool)
            extras.add(conf, labels, removed, rows)
            return labels
        top, query = x.max(0)
        labels = self.query_to_class[query]
        if thr > 0:
            shifted = x.sub_(top) if inplace else x - top
            top_prob = 1.0 / torch.exp_(shifted).sum(0) if inplace else 1.0 / torch.exp(shifted).sum(0)  # = softmax(x)[query]
            labels = torch.where(top_prob < thr, torch.full_like(labels, self.background_id or 0), labels)
        return labels

    def presence_scores(self, g: torch.Tensor) -> np.ndarray:
        """Object-presence prior per class: softmax over classes of ``logit_scale`` x the
        per-class max (over synonyms) of the raw global image-text cosine ``g`` (E.1). Classes
        without queries (an empty background line) get NaN."""
        per_class = merge_synonyms(g, self.query_to_class, self.num_labels, dim=0)
        probs = torch.softmax(self.options.logit_scale * per_class, dim=0)  # -inf -> 0
        out = probs.to("cpu", torch.float32).numpy().copy()
        out[~self.has_queries] = np.nan
        return out


def _pamr_chunk(q: int, ext: int, width: int, item: int, budget: int) -> int:
    """Mask channels refined at a time over ``ext`` rows: a quarter of the budget (the chunk's
    up-sampled rows and :func:`~fiftyone_cass.core.pamr.pamr_propagate`'s output: ~2 tensors of
    the chunk; the propagation's own work is one channel at a time)."""
    return max(1, min(q, (budget // 4) // (2 * ext * width * item)))


def pamr_min_band(steps: int, dilations: Sequence[int], height: int, width: int, align: int = 32) -> int:
    """The thinnest PAMR band :func:`pamr_band_plan` plans: one halo
    (:func:`~fiftyone_cass.core.pamr.pamr_halo`) rounded up to the band unit, at most the image.
    A band of ``h`` rows reads ``h + 2 halo`` rows and its ``steps`` propagations cover on
    average ``h + halo``, so from this height on the work is at most 2x (propagation) and 3x
    (weights) one pass over the image; thinner bands would cost ``(h + halo) / h``."""
    unit = align // math.gcd(align, width)
    halo = pamr_halo(steps, dilations)
    return min(height, -(-max(halo, 1) // unit) * unit)


def pamr_band_plan(q: int, height: int, width: int, item: int, budget: int, steps: int, dilations: Sequence[int],
                   extra: float = 0.0, align: int = 32, min_rows: Optional[int] = None) -> Tuple[int, int, int]:
    """``(band rows, channel chunk, bytes)`` of banded PAMR (SPEC K.3) on ``q`` query channels of
    ``item``-byte floats over a ``height`` x ``width`` image under ``budget`` bytes: the tallest
    band whose estimated memory fits, but never thinner than ``min_rows`` (default
    :func:`pamr_min_band`: one halo, so that recomputing the halos costs at most 2-3x the work
    of one pass; below it the time grows as ``(h + halo) / h`` and 12-MP runs never finish). A
    band of ``h`` rows reads ``E = h + 2 halo`` rows (:func:`~fiftyone_cass.core.pamr.pamr_halo`;
    fewer at the image's borders) and holds:

    * per read row: the neighbour weights (P = 8 x len(dilations) per pixel), the guide and
      pamr_weights' temporaries (4 x 3 channels), a few rows of scratch and the one channel
      being propagated (padded, output): ``(P + 19) x W`` floats;
    * per read row: the mask channels being refined and their propagated rows, ``2 x chunk x W``
      floats (chunk: a quarter of the budget);
    * per band row: the refined query logits and the label step's work, ``(Q x (1 + extra)) x W``
      floats and 32 bytes per pixel (``extra``: the confidence outputs' additions).

    The band height is a multiple of the rows holding a multiple of ``align`` pixels (as
    :func:`~fiftyone_cass.core.windows.row_bands`, for the same vectorised rounding as the whole
    image). When the floor (or even one unit of rows) does not fit, it is returned with its
    (larger) bytes: the caller warns with that figure."""
    halo = pamr_halo(steps, dilations)
    neighbours = 8 * len(dilations)
    unit = align // math.gcd(align, width)
    floor = pamr_min_band(steps, dilations, height, width, align) if min_rows is None else max(1, min(int(min_rows), height))

    def need(h: int) -> Tuple[int, int]:
        ext = min(h + 2 * halo, height)
        chunk = _pamr_chunk(q, ext, width, item, budget)
        fixed = (neighbours + 19 + 2 * chunk) * ext * width * item
        return int(fixed + (q * (1.0 + extra) * item + 32) * h * width), chunk

    lo, hi = 1, max(1, -(-height // unit))  # band heights in units of `unit` rows
    while lo < hi:  # the largest multiple that fits (need grows with the height; 1 when none fits)
        mid = (lo + hi + 1) // 2
        if need(min(mid * unit, height))[0] <= budget:
            lo = mid
        else:
            hi = mid - 1
    rows = max(min(lo * unit, height), floor)
    b, chunk = need(rows)
    return rows, chunk, b


class _BandOutputs:
    """Collects, band by band, the outputs besides the labels that ``Segmenter.return_confidence``,
    ``uncertainty`` and ``probability_maps`` ask for, and attaches them to the result."""

    def __init__(self, seg: "Segmenter", size: Tuple[int, int]):
        self.num_queries = len(seg.queries)
        self.sums = ConfidenceSums.empty(seg.num_labels) if seg.return_confidence else None
        if seg.uncertainty is not None and seg.uncertainty not in UNCERTAINTY_KINDS:
            raise InvalidInputError(f"uncertainty={seg.uncertainty!r} is not allowed: one of {', '.join(UNCERTAINTY_KINDS)}")
        self.kind = seg.uncertainty
        self.uncertainty = np.empty(size, np.float32) if self.kind else None
        self.classes = tuple(int(c) for c in seg.probability_maps)
        bad = [c for c in self.classes if not 0 <= c < seg.num_labels]
        if bad:
            raise InvalidInputError(f"probability_maps: no label {bad[0]} (labels are 0..{seg.num_labels - 1})")
        self.maps = {c: np.empty(size, np.float32) for c in self.classes}

    def add(self, conf, labels: torch.Tensor, removed: torch.Tensor, rows: Tuple[int, int]) -> None:
        a, b = rows
        if self.sums is not None:
            self.sums = self.sums + band_sums(conf, labels, removed, len(self.sums.class_pixels))
        if self.kind == "margin":
            self.uncertainty[a:b] = (1.0 - conf.margin).clamp_(0.0, 1.0).to("cpu", torch.float32).numpy()
        elif self.kind == "entropy":
            self.uncertainty[a:b] = conf.normalized_entropy(self.num_queries).to("cpu", torch.float32).numpy()
        for c, m in conf.class_maps.items():
            self.maps[c][a:b] = m.clamp_(0.0, 1.0).to("cpu", torch.float32).numpy()

    def attach(self, result: SegmentationResult) -> None:
        if self.sums is not None:
            mean, margin, removed, per_class = self.sums.summary()
            result.confidence = LabelConfidence(mean, margin, removed, per_class.numpy())
        result.uncertainty = self.uncertainty
        result.probabilities = self.maps if self.classes else None
