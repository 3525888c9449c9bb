"""CASS (+ CDAM) as a FiftyOne model: ``dataset.apply_model``, ``compute_embeddings``, text prompts,
and the model zoo entry ``cass-vit-b16-torch``.

:class:`CassModel` is a :class:`fiftyone.core.models.Model` with FiftyOne's batching conventions:

* :class:`~fiftyone.core.models.SupportsGetItem` + :class:`~fiftyone.core.models.TorchModelMixin`:
  ``apply_model(..., batch_size=, num_workers=)`` decodes images in DataLoader workers
  (:class:`ImageGetItem`), and a batch reaches :meth:`CassModel.predict_all` as a list of RGB
  arrays of any sizes (the engine batches windows, not images);
* :class:`~fiftyone.core.models.EmbeddingsMixin`: the global CLIP ViT-B/16 image embedding (the
  CASS presence prior, E.1), unit norm;
* :class:`~fiftyone.core.models.PromptMixin`: text embeddings in the same space (the 80-template
  ensemble the engine uses for class names), so FiftyOne Brain sorts by free text;
* :class:`~fiftyone.core.models.SamplesMixin` (with no fields needed): the model learns which
  dataset it labels, so that at the end of ``apply_model`` it names the written field's ids
  (``dataset.mask_targets``) and writes the presence scores and concept tags (see
  :meth:`CassModel.finalize`).

The same object is the one inference path of the project: :func:`fiftyone_cass.apply` (the
operator, the CLI) decodes with :func:`load_item` and segments with :meth:`CassModel.segment`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

import fiftyone as fo
import fiftyone.core.fields as fof
import fiftyone.core.models as fom
from fiftyone import ViewField as F
from fiftyone.utils.torch import GetItem

from fiftyone_cass.errors import SOME_LIST, SOME_TEXT, ImageLoadError, InvalidInputError, is_sample_error, kw
from fiftyone_cass.images import describe, load_rgb
from fiftyone_cass.models.segmenter import SegmentationResult, Segmenter
from fiftyone_cass.models.vocabulary import Vocabulary
from fiftyone_cass.config.schema import setting_fields
from fiftyone_cass.config.settings import (DEFAULT_PRESENCE_THRESHOLD, EngineSettings, ModelSettings, engine_values,
                                           replace_settings, settings_for, settings_hash_values)
from fiftyone_cass.fo.regions import RegionsError, regions_of_label
from fiftyone_cass.fo.claims import FieldClaim
from fiftyone_cass.fo.outputs import (  # noqa: F401 - re-exported (they lived here)
    OutputContext,
    compute_outputs,
    declarations,
    model_outputs,
    presence_label,
    presence_tags,
    replace_prefixed_tags,
    stored_scores,
    write_outputs,
)

logger = logging.getLogger(__name__)

#: the default model's name in the FiftyOne model zoo (``manifest.json`` at the repository root;
#: one zoo name per backbone record: :func:`fiftyone_cass.models.backbones.zoo_names`)
ZOO_MODEL_NAME = "cass-vit-b16-torch"
#: attribute of each written Segmentation that identifies the settings that made it
CONFIG_ATTR = "config_id"


# ------------------------------------------------------------------------------------------------
# Segmenters kept loaded across calls (the backbones themselves are cached per process too)
# ------------------------------------------------------------------------------------------------
_SEGMENTERS: "collections.OrderedDict[str, Segmenter]" = collections.OrderedDict()
_SEGMENTERS_LOCK = threading.Lock()
_MAX_SEGMENTERS = 4


def get_segmenter(classes=None, preset: Optional[str] = None, settings: Optional[EngineSettings] = None,
                  **keywords) -> Segmenter:
    """A :class:`Segmenter` of this vocabulary and these settings (a built settings object of any
    layer, or keywords), reused across calls in this process (an LRU of the last few
    configurations). ``batch_size`` is not part of the key."""
    settings = settings_for(EngineSettings, settings, keywords)
    batch_size = settings.batch_size
    engine = {k: v for k, v in engine_values(settings).items() if k != "batch_size"}
    key = json.dumps(dict(classes=classes, preset=preset, **engine), sort_keys=True, default=repr)
    with _SEGMENTERS_LOCK:
        seg = _SEGMENTERS.get(key)
        if seg is not None:
            _SEGMENTERS.move_to_end(key)
    if seg is None:
        seg = Segmenter(classes, preset, settings=settings)
        with _SEGMENTERS_LOCK:
            _SEGMENTERS[key] = seg
            while len(_SEGMENTERS) > _MAX_SEGMENTERS:
                _SEGMENTERS.popitem(last=False)
    seg.batch_size = int(batch_size)
    return seg


def clear_segmenter_cache() -> None:
    with _SEGMENTERS_LOCK:
        _SEGMENTERS.clear()


def written_by_apply(path: Optional[str], sample_id: str, dataset_id: str) -> bool:
    """Whether ``path`` is a mask file that :func:`fiftyone_cass.apply` wrote for this sample of
    this dataset (``<sample id>-<dataset id>-<config id>.png``, see ``apply.mask_file_path``)."""
    return bool(path) and os.path.basename(path).startswith(f"{sample_id}-{dataset_id}-")


def _apply_model_call() -> Optional[Tuple[Any, str]]:
    """``(samples, label_field)`` of the ``fiftyone.core.models.apply_model`` call that is
    setting up this model (None outside one). FiftyOne never passes the label field to a model;
    CassModel needs it to claim the field and check what it holds before anything is written."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "apply_model" and f.f_globals.get("__name__") == "fiftyone.core.models":
            samples, field = f.f_locals.get("samples"), f.f_locals.get("label_field")
            return (samples, field) if samples is not None and isinstance(field, str) else None
        f = f.f_back
    return None


_SEG_LOCKS: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_SEG_LOCKS_LOCK = threading.Lock()


@contextlib.contextmanager
def _engine_outputs(seg, confidence: bool, uncertainty: Optional[str], probability_maps: Sequence[int] = ()):
    """Sets the Segmenter's confidence outputs for one call (restored after), holding the
    Segmenter meanwhile: cached Segmenters are shared by the runs of one process. What the
    Segmenter was set to itself stays on (a ready segmenter given by the caller)."""
    with _SEG_LOCKS_LOCK:
        try:
            lock = _SEG_LOCKS.setdefault(seg, threading.Lock())
        except TypeError:  # not weak-referenceable: a private lock
            lock = threading.Lock()
    names = ("return_confidence", "uncertainty", "probability_maps")
    with lock:
        saved = tuple(getattr(seg, n, d) for n, d in zip(names, (False, None, ())))
        want = (bool(confidence) or saved[0], uncertainty or saved[1], tuple(probability_maps) or saved[2])
        changed = want != saved
        try:
            if changed:
                for n, v in zip(names, want):
                    setattr(seg, n, v)
            yield
        finally:
            if changed:
                for n, v in zip(names, saved):
                    setattr(seg, n, v)


# ------------------------------------------------------------------------------------------------
# Decoding (the same function in DataLoader workers and in apply()'s loader thread)
# ------------------------------------------------------------------------------------------------
class LoadFailure:
    """An image that could not be decoded, as a value: a DataLoader worker returns it instead of
    raising, so one bad file does not take its whole batch down (FiftyOne skips a batch whose
    items raised). Picklable."""

    __slots__ = ("name", "message")

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message

    def __repr__(self) -> str:
        return f"LoadFailure({self.message!r})"


def load_item(item: Any, name: Optional[str] = None) -> Union[np.ndarray, LoadFailure]:
    """An RGB uint8 array for a path / PIL image / array, or a :class:`LoadFailure` naming it."""
    if isinstance(item, LoadFailure):
        return item
    name = describe(item, name)
    try:
        return load_rgb(item, name)
    except ImageLoadError as exc:
        return LoadFailure(name, str(exc))


class ImageGetItem(GetItem):
    """How FiftyOne's DataLoader feeds :class:`CassModel`: the sample's ``filepath`` decoded to an
    RGB uint8 array (EXIF orientation applied), or a :class:`LoadFailure`."""

    @property
    def required_keys(self):
        return ["filepath"]

    def __call__(self, d):
        path = d["filepath"]
        return load_item(path, path)


def collate_list(batch):
    """Images of different sizes stay a list (the engine batches their windows)."""
    return list(batch)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CassModelConfig(ModelSettings):
    """The settings a :class:`CassModel` was made with (FiftyOne reads ``model.config``): its
    :class:`~fiftyone_cass.config.settings.ModelSettings` plus the vocabulary and Segmenter options."""

    classes: Optional[List[str]] = None
    preset: Optional[str] = None
    mask_targets: Optional[Dict[int, str]] = None
    presence: bool = True
    confidence: bool = True


class CassModel(fom.Model, fom.SamplesMixin, fom.SupportsGetItem, fom.TorchModelMixin,
                fom.EmbeddingsMixin, fom.PromptMixin):
    """Open-vocabulary semantic segmentation (CASS + CDAM) as a FiftyOne model.

    Args:
        classes: class names (a list, or one string separated by commas / new lines; a list entry
            may hold ", "-separated synonyms). Or give ``preset=`` or ``mask_targets=``. With none
            of the three the model only embeds images and prompts.
        preset: a published protocol (``voc21``, ``coco_object``, ``ade20k``, ...)
        mask_targets: a ground truth's ``{id: name}``: the classes to predict, written under
            those ids (id 0 named like background is background)
        presence (True): at the end of ``apply_model``, write ``<field>_presence`` and the tags
            ``<field>:<class>`` (see :meth:`finalize`)
        confidence (True): at the end of ``apply_model``, write ``<field>_confidence`` (and its
            ``_margin``, ``_removed``, ``_per_class``), as the labelling run does
        **settings: :class:`~fiftyone_cass.config.settings.ModelSettings` fields (``method``, ``backbone``,
            ``device``, ``batch_size``, ``precision``, checkpoints, ``background``,
            ``presence_threshold``: see :func:`fiftyone_cass.config.settings`) and any
            :class:`fiftyone_cass.SegmenterOptions` field
        segmenter: a ready :class:`fiftyone_cass.Segmenter` instead of classes/preset/mask_targets

    Bad arguments raise :class:`fiftyone_cass.InvalidInputError`; missing weights raise
    :class:`fiftyone_cass.WeightsUnavailableError` at once.
    """

    def __init__(
        self,
        classes: Union[None, str, Sequence[str]] = None,
        *,
        preset: Optional[str] = None,
        mask_targets: Optional[Dict[Any, str]] = None,
        mask_targets_name: str = "mask_targets",
        presence: bool = True,
        confidence: bool = True,
        segmenter: Optional[Segmenter] = None,
        settings: Optional[ModelSettings] = None,
        **keywords,
    ):
        fom.SamplesMixin.__init__(self)
        # one settings object (ModelSettings fields + Segmenter options), checked once: the
        # caller's (apply, the operator, the CLI) or built here; handed to the Segmenter unchanged
        s = settings_for(ModelSettings, settings, keywords)
        self.presence_threshold = s.presence_threshold
        # region voting (SPEC K.5): apply_model hands the field's value with each sample (needs_fields)
        self.regions_field = s.regions_field
        self.region_vote, self.region_min_area = s.region_vote, s.region_min_area
        self._fields = {"regions": self.regions_field} if self.regions_field else {}
        self.num_without_regions = 0
        self.presence = bool(presence)
        self.confidence = bool(confidence)
        self._preprocess = True
        self._lock = threading.Lock()
        self._dataset = None
        self._pending: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self._last_embeddings: Optional[np.ndarray] = None

        given = [n for n, v in (("classes", classes), ("preset", preset), ("mask_targets", mask_targets)) if v is not None]
        # the embedding model: the same settings, MaskCLIP's plain CLIP forward, no vocabulary
        self._embed_settings = replace_settings(s, method="maskclip", background=None)
        if segmenter is not None:
            if given:
                raise InvalidInputError("give either a segmenter or classes/preset/mask_targets, not both")
            self.segmenter: Optional[Segmenter] = segmenter
            segmenter.batch_size = int(s.batch_size)
            self.vocab: Optional[Vocabulary] = Vocabulary.of_segmenter(segmenter)
        elif len(given) > 1:
            raise InvalidInputError(f"give one of {kw('classes', SOME_LIST)}, {kw('preset', SOME_TEXT)} or "
                                    f"mask_targets={{...}}, not {' and '.join(given)}")
        elif given:
            gt: Optional[Vocabulary] = None
            seg_classes = None
            if classes is not None:
                seg_classes = classes if isinstance(classes, str) else list(classes)
            elif mask_targets is not None:
                # the ground truth's ids: the Segmenter predicts its classes, written under its ids
                gt = Vocabulary.from_mask_targets(mask_targets, mask_targets_name, s.background)
                seg_classes = gt.classes
                if gt.background_id is None:  # id 0 is a class: every pixel gets a class
                    if s.options.get("bg_rule", "none") != "none":
                        raise InvalidInputError(
                            f"{mask_targets_name}: its id 0 is a class, not background, so bg_rule must be 'none'"
                        )
                    s = replace_settings(s, options={**s.options, "bg_rule": "none"})
            try:
                self.segmenter = get_segmenter(seg_classes, preset, s)
            except InvalidInputError as exc:
                where = f"{mask_targets_name}" if gt is not None else "vocabulary"
                raise exc.prefixed(f"{where}: ") from exc
            self.vocab = gt if gt is not None else dataclasses.replace(self.segmenter.vocabulary, source=given[0])
            if self.vocab.class_lines != self.segmenter.class_lines:  # one vocabulary on both sides
                raise RuntimeError(f"the segmenter's class lines differ from the vocabulary's: {self.segmenter.class_lines!r}")
        else:  # embeddings and prompts only
            self.segmenter = None
            self.vocab = None
            self._embedding_segmenter()  # loads CLIP now: missing weights fail here, not mid-run
        model_fields = {n: getattr(s, n) for n in setting_fields(ModelSettings)}
        self.config = CassModelConfig(
            **model_fields,
            classes=None if self.vocab is None else list(self.vocab.mask_targets.values()),
            preset=preset, mask_targets=None if self.vocab is None else dict(self.vocab.mask_targets),
            presence=self.presence, confidence=self.confidence,
        )
        self.settings: Optional[Dict[str, Any]] = None
        self.config_id: Optional[str] = None
        if self.segmenter is not None:
            seg = self.segmenter
            # the settings that change outputs (declared output=True), from the segmenter's own
            # settings (a stand-in without them: its method, backbone and precision): memory,
            # placement, batching and device settings are not part of it
            seg_settings = getattr(seg, "settings", None) or replace_settings(
                s, method=seg.method, backbone=seg.backbone, precision=seg.precision, clip_checkpoint=None,
                dino_checkpoint=None)
            self.settings = {
                "version": 2,
                "class_lines": list(seg.class_lines),
                "lut": None if self.vocab.lut is None else [int(x) for x in self.vocab.lut],
                **settings_hash_values(seg_settings, seg.options),
            }
            if self.regions_field:  # voted labels are other labels (absent when off: the same hashes as before)
                self.settings["regions"] = {"field": self.regions_field, "vote": self.region_vote,
                                            "min_area": int(self.region_min_area)}
            self.config_id = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]

    # -------------------------------------------------------------- FiftyOne's model interface
    @property
    def media_type(self):
        return "image"

    @property
    def ragged_batches(self):
        # False, so that FiftyOne honours batch_size; collate_list keeps different sizes as a list
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = bool(value)

    @property
    def has_collate_fn(self):
        return True

    collate_fn = staticmethod(collate_list)

    @property
    def has_embeddings(self):
        return True

    @property
    def can_embed_prompts(self):
        return True

    @property
    def device(self):
        return (self.segmenter or self._embedding_segmenter()).device

    @property
    def _using_gpu(self):
        return self.device.type == "cuda"

    @property
    def mask_targets(self) -> Optional[Dict[int, str]]:
        """``{id: class name}`` of the masks this model writes (None: no vocabulary)."""
        return None if self.vocab is None else dict(self.vocab.mask_targets)

    @property
    def classes(self) -> Optional[List[str]]:
        """The class names, background excluded."""
        return None if self.vocab is None else self.vocab.classes

    def build_get_item(self, field_mapping=None):
        return ImageGetItem(field_mapping=field_mapping)

    @property
    def needs_fields(self):
        return self._fields

    @needs_fields.setter
    def needs_fields(self, fields):
        # dataset.apply_model sets this before its first batch (compute_embeddings does not): a
        # model without a vocabulary fails there once, instead of once per batch
        if self.segmenter is None:
            self._require_vocabulary()
        fields = dict(fields or {})
        if self.regions_field:  # the regions this model votes in come with every sample
            fields["regions"] = self.regions_field
        self._fields = fields

    def __enter__(self):
        with self._lock:
            self._dataset = None
            self._pending = {}
        target = _apply_model_call()  # entered by dataset.apply_model: its dataset and label field
        if target is not None and self.config_id is not None:
            self._claim_field(*target)
        return self

    def __exit__(self, *args):
        try:
            self.finalize()
        finally:
            claim, self._claim = getattr(self, "_claim", None), None
            if claim is not None:
                claim.release()

    def _claim_field(self, samples, field: str) -> None:
        """Before ``apply_model`` writes ``field``: claims it as :func:`fiftyone_cass.apply` does
        (:class:`~fiftyone_cass.fo.claims.FieldClaimedError` while a run with other
        settings writes it), and refuses a field holding labels of other settings (their ids
        would be renamed by this model's ``mask_targets``) or mask files written by
        :func:`fiftyone_cass.apply` (replacing them with database masks would orphan the files).
        A fresh field, or one written by the same settings in the database, is the model's:
        FiftyOne's semantics (it is relabelled)."""
        ds = samples._root_dataset if hasattr(samples, "_root_dataset") else samples
        claim = FieldClaim(ds, field, self.config_id)
        claim.acquire()
        try:
            ds.reload()
            f = ds.get_field(field)
            if not (isinstance(f, fof.EmbeddedDocumentField) and issubclass(f.document_type, fo.Segmentation)):
                self._claim = claim
                return  # fresh (or not a Segmentation field: FiftyOne's own error follows)
            ids, cfgs, paths = ds.exists(field).values(["id", f"{field}.{CONFIG_ATTR}", f"{field}.mask_path"])
            foreign = sum(1 for c in cfgs if c != self.config_id)
            if foreign:
                raise InvalidInputError(
                    f"field {field!r} of dataset {ds.name!r} holds labels of other settings on {foreign} sample(s); "
                    "apply_model would replace them (and rename their class ids): choose another label_field, or "
                    "relabel with fiftyone_cass.apply(..., label_field=..., overwrite=True)"
                )
            ds_id = str(ds._doc.id)
            files = sum(1 for sid, p in zip(ids, paths) if written_by_apply(p, sid, ds_id))
            if files:
                raise InvalidInputError(
                    f"field {field!r} of dataset {ds.name!r} holds {files} mask files written by fiftyone_cass.apply "
                    "with these settings; apply_model would replace them by masks in the database and leave the "
                    "files behind: run fiftyone_cass.apply(...) again (it resumes), or choose another label_field"
                )
        except BaseException:
            claim.release()
            raise
        self._claim = claim

    # -------------------------------------------------------------- the inference path
    def _require_vocabulary(self) -> Segmenter:
        if self.segmenter is None:
            raise InvalidInputError(
                "this CassModel has no vocabulary (it can embed images and prompts only): pass "
                "classes=[...], preset='...' or mask_targets={...} to segment"
            )
        return self.segmenter

    def _embedding_segmenter(self) -> Segmenter:
        return self.segmenter if self.segmenter is not None else get_segmenter(["object"], None, self._embed_settings)

    def segment(self, loaded: Sequence[Union[np.ndarray, LoadFailure]], names: Sequence[str],
                embeddings: Optional[bool] = None, confidence: bool = False, uncertainty: Optional[str] = None,
                probability_maps: Sequence[int] = (), regions: Optional[Sequence[Any]] = None,
                ) -> List[Tuple[Optional[SegmentationResult], Optional[str]]]:
        """THE inference step of the project: decoded images (or :class:`LoadFailure`) in,
        ``(result | None, error | None)`` per image out; one bad image never fails the others.
        ``confidence`` / ``uncertainty`` (None, "margin" or "entropy") / ``probability_maps``
        (labels): the engine's confidence outputs on each result (``Segmenter.return_confidence`` /
        ``uncertainty`` / ``probability_maps`` for this call;
        the shared Segmenter is held for the call, so concurrent runs never see each other's).
        ``regions``: per image, the values of :attr:`regions_field` (labels; None: no regions),
        turned into regions here; a sample whose regions are unusable fails with the reason."""
        seg = self._require_vocabulary()
        pairs = [(None, x.message) if isinstance(x, LoadFailure) else (x, None) for x in loaded]
        per_image = None
        if self.regions_field and regions is not None:
            per_image = []
            for k, ((arr, err), label) in enumerate(zip(pairs, regions)):
                if arr is None:
                    per_image.append(None)
                    continue
                try:
                    per_image.append(regions_of_label(label, arr.shape[:2], self.regions_field))
                except RegionsError as exc:
                    pairs[k] = (None, f"{names[k]}: {exc}")
                    per_image.append(None)
        with _engine_outputs(seg, bool(confidence), uncertainty, probability_maps):
            if per_image is None:
                return seg.segment_loaded(pairs, list(names), embeddings)
            return seg.segment_loaded(pairs, list(names), embeddings, per_image, self.region_vote, self.region_min_area)

    def segmentation_label(self, result: SegmentationResult, mask_path: Optional[str] = None) -> fo.Segmentation:
        """The ``fo.Segmentation`` of a result, in the written ids, tagged with :attr:`config_id`;
        the mask inline, or ``mask_path`` when the caller has written it there."""
        if mask_path is not None:
            return fo.Segmentation(mask_path=mask_path, **{CONFIG_ATTR: self.config_id})
        return fo.Segmentation(mask=self.vocab.map(result.label_map), **{CONFIG_ATTR: self.config_id})

    def presence_label(self, result: SegmentationResult) -> fo.Classifications:
        return presence_label(self.vocab.names, result.presence, self.presence_threshold, self.vocab.background_label)

    def _decode(self, args) -> Tuple[List[Union[np.ndarray, LoadFailure]], List[str]]:
        loaded, names = [], []
        for i, a in enumerate(args):
            name = a.name if isinstance(a, LoadFailure) else describe(a, None if not isinstance(a, np.ndarray) else f"image {i}")
            loaded.append(load_item(a, name))
            names.append(name)
        return loaded, names

    def predict(self, arg, sample=None):
        return self.predict_all([arg], samples=None if sample is None else [sample])[0]

    def predict_all(self, args, samples=None):
        """``fo.Segmentation`` per image (None for an image that cannot be read or segmented:
        it is logged by name and FiftyOne leaves its field empty)."""
        self._require_vocabulary()
        loaded, names = self._decode(args)
        samples = list(samples) if samples is not None else None
        regions = None
        if samples is not None:
            names = [s.filepath for s in samples]
            if self.regions_field:
                regions = [s[self.regions_field] if s.has_field(self.regions_field) else None for s in samples]
        kept = model_outputs(self.presence, self.confidence) if samples is not None else {}
        outputs = self.segment(loaded, names, confidence="confidence" in kept, regions=regions)
        ctx = self._output_context()
        labels = []
        embeddings = []
        for k, (res, err) in enumerate(outputs):
            if res is None:
                who = f"sample {samples[k].id}" if samples is not None else names[k]
                logger.warning("%s skipped: %s", who, err)
                labels.append(None)
                embeddings.append(None)
                continue
            labels.append(self.segmentation_label(res))
            embeddings.append(res.embedding)
            if self.regions_field and res.regions_voted is None:
                self.num_without_regions += 1
            if kept:  # the outputs finalize() writes, computed now (small: no per-pixel data kept)
                with self._lock:
                    self._dataset = samples[k]._dataset
                    self._pending[samples[k].id] = compute_outputs(ctx, kept, samples[k].id, res)
        if embeddings and all(e is not None for e in embeddings):
            self._last_embeddings = np.stack(embeddings)
        return labels

    # -------------------------------------------------------------- embeddings and prompts
    def get_embeddings(self):
        if self._last_embeddings is None:
            raise ValueError("no embeddings: call embed()/embed_all() or predict() first")
        return self._last_embeddings

    def embed(self, arg):
        out = self.embed_all([arg])
        if out[0] is None:
            raise ImageLoadError(self._decode([arg])[0][0].message)
        return out[0]

    def embed_all(self, args):
        """Unit-norm global CLIP embeddings ``(B, E)`` float32; with an unreadable image, a list
        holding None in its place (FiftyOne stores nothing for it) and a warning naming it."""
        seg = self._embedding_segmenter()
        loaded, names = self._decode(args)
        out: List[Optional[np.ndarray]] = [None] * len(loaded)
        good = [i for i, x in enumerate(loaded) if not isinstance(x, LoadFailure)]
        for i, x in enumerate(loaded):
            if isinstance(x, LoadFailure):
                logger.warning("%s skipped: %s", x.name, x.message)
        for start in range(0, len(good), seg.batch_size):
            idx = good[start : start + seg.batch_size]
            try:
                emb = seg.embed_arrays([loaded[i] for i in idx], [names[i] for i in idx])
            except Exception as exc:  # noqa: BLE001 - a sample's error: isolate the failing image
                if not is_sample_error(exc):
                    raise  # a bug (FiftyOne's skip_failures decides what happens to the batch)
                emb = []
                for i in idx:
                    try:
                        emb.append(seg.embed_arrays([loaded[i]], [names[i]])[0])
                    except Exception as exc:  # noqa: BLE001 - reported per image
                        if not is_sample_error(exc):
                            raise
                        logger.warning("%s skipped: %s: %s", names[i], type(exc).__name__, exc)
                        emb.append(None)
            for i, e in zip(idx, emb):
                out[i] = e
        if all(e is not None for e in out):
            self._last_embeddings = np.stack(out) if out else np.zeros((0, 0), np.float32)
            return self._last_embeddings
        return out

    def embed_prompt(self, arg):
        return self.embed_prompts([arg])[0]

    def embed_prompts(self, args):
        """Unit-norm text embeddings ``(N, E)`` float32 of free-text prompts, averaged over the 80
        OpenAI ImageNet templates as for class names."""
        if isinstance(args, str):  # one prompt, not its characters
            args = [args]
        for i, a in enumerate(args):
            if not isinstance(a, str) or not a.strip():
                raise InvalidInputError(f"prompt {i + 1} of {list(args)!r} is not a non-empty text")
        prompts = [a.strip() for a in args]
        seg = self._embedding_segmenter()
        if not prompts:  # (no text to embed: the width of the shared image-text space)
            return np.zeros((0, int(seg.clip.visual.output_dim)), np.float32)
        return seg.embedder(prompts).to("cpu").float().numpy()

    # -------------------------------------------------------------- after apply_model
    def _output_context(self) -> OutputContext:
        return OutputContext(self.vocab, self.presence_threshold, self.config_id)

    def finalize(self) -> Optional[Dict[str, int]]:
        """Completes an ``apply_model`` run on a dataset: for every Segmentation field holding
        labels of this model's settings (``config_id``), sets ``dataset.mask_targets[field]``
        and writes the outputs of :data:`fiftyone_cass.fo.outputs.OUTPUTS` that the model
        writes (``<field>_presence``, the tags ``<field>:<class>``, ``<field>_confidence`` and
        its parts) for the samples labelled in this run, computed as the labelling run does.
        Called by FiftyOne when ``apply_model`` ends (the model is a context manager); returns
        ``{field: samples}`` (None when nothing was run)."""
        with self._lock:
            ds, pending = self._dataset, self._pending
            self._dataset, self._pending = None, {}
        if ds is None or not pending or self.vocab is None:
            return None
        ds = ds._root_dataset if hasattr(ds, "_root_dataset") else ds
        ds.reload()
        ids = list(pending)
        done: Dict[str, int] = {}
        templates = model_outputs(self.presence, self.confidence)
        for field in sorted(ds.get_field_schema(embedded_doc_type=fo.Segmentation)):
            mine = ds.select(ids).match(F(f"{field}.{CONFIG_ATTR}") == self.config_id).values("id")
            if not mine:
                continue
            targets = dict(ds.mask_targets)
            if targets.get(field) != self.vocab.mask_targets:
                targets[field] = dict(self.vocab.mask_targets)
                ds.mask_targets = targets
                ds.save()
            fields = {n: t.replace("{label_field}", field) for n, t in templates.items()}
            for out in [n for n in fields if n != "tags"]:
                for name, decl in declarations({out: fields[out]}):
                    f = ds.get_field(name)
                    doc = decl.get("embedded_doc_type")
                    if f is None:
                        ds.add_sample_field(name, **decl)
                    elif not (isinstance(f, fof.EmbeddedDocumentField) and issubclass(f.document_type, doc)
                              if doc is not None else isinstance(f, decl["ftype"])):
                        logger.warning("%s: field %r exists and is not a %s field: %s not written", ds.name, name,
                                       (doc or decl["ftype"]).__name__, out)
                        fields.pop(out, None)
                        if out == "presence":
                            fields.pop("tags", None)
                        break
            write_outputs(ds, self._output_context(), fields,
                          {sid: {n: v for n, v in pending[sid].items() if n in fields} for sid in mine})
            done[field] = len(mine)
        return done


def load_cass_model(model_name: str = ZOO_MODEL_NAME, **kwargs) -> CassModel:
    """The zoo entry point: ``CassModel(backbone=<the record of model_name>, **kwargs)``; unknown
    arguments are a clear error naming what it accepts (:class:`~fiftyone_cass.config.settings.ModelSettings`
    fields, Segmenter options), and so is a ``backbone=`` that is another published record's
    (its zoo name is named; the random-weight test records are accepted)."""
    from fiftyone_cass.models.backbones import BACKBONES, backbone_for_zoo_name
    from fiftyone_cass.models.segmenter import SegmenterOptions

    record = backbone_for_zoo_name(model_name)
    given = kwargs.setdefault("backbone", record)
    if given != record and given in BACKBONES and not BACKBONES[given].test:
        raise InvalidInputError(f"{model_name}: is backbone {record!r}, not {given!r}; load the zoo model "
                                f"{BACKBONES[given].zoo_name!r} for that one")

    known = {"classes", "preset", "mask_targets", "presence", "confidence"} | set(setting_fields(ModelSettings))
    known |= set(setting_fields(SegmenterOptions))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InvalidInputError(
            f"{model_name}: unknown argument(s) {', '.join(map(repr, unknown))}; accepted: classes, preset, "
            f"mask_targets, presence, confidence, {', '.join(setting_fields(ModelSettings))} and any fiftyone_cass.SegmenterOptions field"
        )
    return CassModel(**kwargs)


__all__ = [
    "CONFIG_ATTR",
    "CassModel",
    "CassModelConfig",
    "DEFAULT_PRESENCE_THRESHOLD",
    "ImageGetItem",
    "LoadFailure",
    "Vocabulary",
    "ZOO_MODEL_NAME",
    "clear_segmenter_cache",
    "get_segmenter",
    "load_cass_model",
    "load_item",
    "presence_label",
    "presence_tags",
    "replace_prefixed_tags",
    "stored_scores",
    "written_by_apply",
]
