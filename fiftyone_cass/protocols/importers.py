"""Importers of the benchmark datasets of the papers into FiftyOne, in the evaluation label space.

Every importer creates a :class:`fiftyone.core.dataset.Dataset` with one sample per image and a GT
:class:`fiftyone.core.labels.Segmentation` field (default ``ground_truth``) whose mask is a
single-channel 8-bit PNG written under ``masks_dir`` and referenced by ``mask_path``. Pixel values
are the class ids of the protocol's class file (``fiftyone_cass/data/classes``: line i = id i) --
the same ids the :class:`fiftyone_cass.Segmenter` preset predicts -- and 255 = ignore.
``dataset.mask_targets[gt_field]`` maps id -> display name (first synonym of the line; line 0 of
the protocols with a background line is named ``background``). 255 is not in ``mask_targets``;
``dataset.info["fiftyone_cass"]`` records the protocol, ``ignore_index`` and the rule applied.

Protocols and expected layouts (the mmsegmentation layouts the reference configs use):

=============== ========================================================================= ========
protocol        layout (``root`` may be the folder shown or its parent)                    GT rule
=============== ========================================================================= ========
voc21           ``VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`` as is
voc20           same files                                                                 reduce
context60       ``VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,                  as is
                ImageSets/SegmentationContext}`` (mmseg's converted Pascal-Context)
context59       same files                                                                 reduce
ade20k          ``ADEChallengeData2016/{images,annotations}/{training,validation}``        reduce
coco_stuff      ``{images,annotations}/val2017``; ``*_labelTrainIds.png`` (mmseg            as is
                conversion) or the raw ``stuffthingmaps`` ``*.png`` (converted here)
coco_object     see :func:`load_coco_object`                                               below
cityscapes      ``{leftImg8bit,gtFine}/val/<city>``; ``*_gtFine_labelTrainIds.png`` or     as is
                ``*_gtFine_labelIds.png`` (converted with the official id -> trainId table)
=============== ========================================================================= ========

"reduce" is mmseg's ``reduce_zero_label``: 0 -> 255 (ignored), v -> v - 1, 255 stays 255.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

import fiftyone as fo
import fiftyone.core.utils as fou

from fiftyone_cass.errors import InvalidInputError, use
from fiftyone_cass.models.presets import get_preset
from fiftyone_cass.models.vocabulary import Vocabulary
from fiftyone_cass.fo.metrics import IGNORE_INDEX

logger = logging.getLogger(__name__)

#: COCO category ids of the 80 thing classes (1..90 with 11 unused ids); index + 1 = COCO-Object id
COCO_THING_IDS: Tuple[int, ...] = tuple(
    list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
    + [67, 70] + list(range(72, 83)) + list(range(84, 91))
)
#: COCO-Stuff stuff category ids (92..182); COCO-Stuff-171 ids = 80 things then 91 stuff
COCO_STUFF_IDS: Tuple[int, ...] = tuple(range(92, 183))

#: Cityscapes labelId -> trainId (the 19 evaluated classes; everything else 255)
CITYSCAPES_ID_TO_TRAINID: Dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

CROWD_RULES = ("skip", "paint", "ignore")

assert len(COCO_THING_IDS) == 80 and len(COCO_STUFF_IDS) == 91


# ------------------------------------------------------------------------------------------------
# Label-space helpers
# ------------------------------------------------------------------------------------------------
def protocol_info(protocol: str):
    """The :class:`fiftyone_cass.models.presets.Preset` of a protocol (aliases accepted)."""
    try:
        return get_preset(protocol)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None


def protocol_class_names(protocol: str) -> List[str]:
    """Display name of each class id: the first synonym of its line (``background`` for line 0 of
    protocols with a background line)."""
    return list(Vocabulary.from_preset(protocol_info(protocol)).names)


def protocol_mask_targets(protocol: str) -> Dict[int, str]:
    """``{id: name}`` of a protocol's ground truth: the ids of its :class:`Vocabulary` (the same
    ids and names a Segmenter with that preset writes)."""
    return dict(Vocabulary.from_preset(protocol_info(protocol)).mask_targets)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg ``reduce_zero_label``: 0 -> 255, v -> v - 1 (1..255), 255 stays 255."""
    lab = np.asarray(label).astype(np.int64)
    out = lab - 1
    out[lab == 0] = IGNORE_INDEX
    out[lab == IGNORE_INDEX] = IGNORE_INDEX
    if out.max(initial=0) > 255:
        raise InvalidInputError(f"label values above 255 ({int(lab.max())}) cannot be reduced to 8 bits")
    return out.astype(np.uint8)


def _lut(mapping: Dict[int, int], default: int) -> np.ndarray:
    lut = np.full(256, default, dtype=np.uint8)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
    return lut


#: raw COCO-Stuff ``stuffthingmaps`` value (category id - 1; 255 unlabeled) -> COCO-Stuff-171 id
STUFFTHING_TO_COCO_STUFF = _lut(
    {cid - 1: i for i, cid in enumerate(COCO_THING_IDS + COCO_STUFF_IDS)}, IGNORE_INDEX
)
#: raw ``stuffthingmaps`` value -> COCO-Object id, as the reference ``cvt_coco_object.py``:
#: thing -> 1..80, stuff AND unlabeled (255) -> 0 background
STUFFTHING_TO_COCO_OBJECT = _lut({cid - 1: i + 1 for i, cid in enumerate(COCO_THING_IDS)}, 0)
CITYSCAPES_LUT = _lut(CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX)


def _read_label(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise InvalidInputError(
                    f"label file {path}: expected a single-channel (L/P/I) PNG of class ids, got mode {im.mode}"
                )
            a = np.array(im)
    except InvalidInputError:
        raise
    except Exception as e:
        raise InvalidInputError(f"label file {path} could not be read: {e}") from e
    if a.ndim != 2:
        raise InvalidInputError(f"label file {path}: expected a 2-D label map, got shape {a.shape}")
    return a


def _apply_lut(lut: np.ndarray, label: np.ndarray, path: str) -> np.ndarray:
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise InvalidInputError(f"label file {path}: values outside 0..255")
        label = label.astype(np.uint8)
    return lut[label]


def coco_semantic_mask(coco, img_id: int, crowd: str = "skip", category_to_label: Optional[Dict[int, int]] = None) -> np.ndarray:
    """COCO-Object semantic mask of one image from a ``pycocotools.coco.COCO`` index.

    Rule (documented, tested): start from 0 (background); for each annotation of the image **in
    annotation-file order**, decode it with pycocotools (``annToMask``: polygons, uncompressed and
    compressed RLE) and paint its pixels with ``category_to_label[category_id]`` (default: the
    contiguous COCO-Object id 1..80), **later annotations over earlier ones**. ``iscrowd=1``
    annotations: ``crowd="skip"`` (default) leaves them out (their pixels stay background unless
    another instance covers them) -- the default of cocostuffapi's ``cocoSegmentationToPng``, which
    produced the COCO-Stuff thing maps that the reference ``cvt_coco_object.py`` converts;
    ``"paint"`` paints them like other instances; ``"ignore"`` paints them 255 (in order).
    """
    if crowd not in CROWD_RULES:
        raise InvalidInputError(f"crowd must be one of {CROWD_RULES}, got {crowd!r}")
    if category_to_label is None:
        category_to_label = {cid: i + 1 for i, cid in enumerate(COCO_THING_IDS)}
    info = coco.imgs[img_id]
    mask = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
    for ann in coco.imgToAnns.get(img_id, []):
        is_crowd = bool(ann.get("iscrowd", 0))
        if is_crowd and crowd == "skip":
            continue
        if is_crowd and crowd == "ignore":
            value = IGNORE_INDEX
        else:
            cid = ann["category_id"]
            if cid not in category_to_label:
                raise InvalidInputError(
                    f"COCO image {img_id} ({info.get('file_name')}): annotation {ann.get('id')} has "
                    f"category_id {cid}, which is not one of the 80 COCO thing categories"
                )
            value = category_to_label[cid]
        try:
            m = coco.annToMask(ann)
        except Exception as e:
            raise InvalidInputError(
                f"COCO image {img_id} ({info.get('file_name')}): annotation {ann.get('id')} could not be decoded: {e}"
            ) from e
        if m.shape != mask.shape:
            raise InvalidInputError(
                f"COCO image {img_id}: annotation {ann.get('id')} decodes to {m.shape}, image is {mask.shape}"
            )
        mask[m.astype(bool)] = value
    return mask


# ------------------------------------------------------------------------------------------------
# Dataset building
# ------------------------------------------------------------------------------------------------
def _check_values(label: np.ndarray, num_classes: int, where: str):
    vals = np.unique(label)
    bad = vals[(vals >= num_classes) & (vals != IGNORE_INDEX)]
    if bad.size:
        raise InvalidInputError(
            f"{where}: label values {bad[:10].tolist()} are outside the {num_classes} classes (0..{num_classes - 1}) "
            f"and the ignore index {IGNORE_INDEX}; is this the right protocol / a converted annotation file?"
        )


def _default_masks_dir(name: str, gt_field: str) -> str:
    return os.path.join(fo.config.default_dataset_dir, "fiftyone_cass", name, gt_field)


def _new_dataset(name: str, persistent: bool, overwrite: bool) -> fo.Dataset:
    if fo.dataset_exists(name):
        if not overwrite:
            raise InvalidInputError(f"a FiftyOne dataset named {name!r} exists; {use('overwrite', True)} or another name")
        fo.delete_dataset(name)
    return fo.Dataset(name, persistent=persistent)


def build_dataset(
    items: Sequence[Tuple[str, Callable[[], np.ndarray], Dict]],
    protocol: str,
    name: str,
    gt_field: str = "ground_truth",
    masks_dir: Optional[str] = None,
    persistent: bool = False,
    overwrite: bool = False,
    rule: str = "",
    progress=None,
) -> fo.Dataset:
    """Creates the dataset from ``(image_path, load_label, extra_fields)`` items: ``load_label()``
    returns the label map already in the protocol's id space; it is validated and written as PNG."""
    preset = protocol_info(protocol)
    targets = protocol_mask_targets(protocol)
    if not items:
        raise InvalidInputError(f"no images found for protocol {protocol!r} (dataset {name!r})")
    masks_dir = os.path.abspath(masks_dir or _default_masks_dir(name, gt_field))
    os.makedirs(masks_dir, exist_ok=True)

    dataset = _new_dataset(name, persistent, overwrite)
    samples = []
    seen = set()
    with fou.ProgressBar(total=len(items), progress=progress) as pb:
        for image_path, load_label, extra in pb(items):
            stem = os.path.splitext(os.path.basename(image_path))[0]
            if stem in seen:
                raise InvalidInputError(f"two images named {stem!r}: mask file names would collide")
            seen.add(stem)
            label = np.asarray(load_label())
            if label.ndim != 2:
                raise InvalidInputError(f"{image_path}: label map has shape {label.shape}, expected (H, W)")
            _check_values(label, preset.num_classes, f"ground truth of {image_path}")
            mask_path = os.path.join(masks_dir, stem + ".png")
            Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(mask_path)
            sample = fo.Sample(filepath=os.path.abspath(image_path), **{gt_field: fo.Segmentation(mask_path=mask_path)})
            for k, v in (extra or {}).items():
                sample[k] = v
            samples.append(sample)
    dataset.add_samples(samples, progress=False)
    mt = dict(dataset.mask_targets)
    mt[gt_field] = targets
    dataset.mask_targets = mt
    dataset.info["fiftyone_cass"] = {
        "protocol": preset.name,
        "gt_field": gt_field,
        "ignore_index": IGNORE_INDEX,
        "reduce_zero_label": bool(preset.reduce_zero_label),
        "num_classes": preset.num_classes,
        "rule": rule,
    }
    dataset.save()
    return dataset


def _take(items: List, max_samples: Optional[int]) -> List:
    return items if max_samples is None else items[: int(max_samples)]


def _find_dir(root: str, candidates: Sequence[str], what: str) -> str:
    root = os.path.abspath(os.path.expanduser(str(root)))
    for c in candidates:
        p = os.path.join(root, c) if c else root
        if os.path.isdir(p):
            return p
    raise InvalidInputError(
        f"{what}: none of {[os.path.join(root, c) for c in candidates]} exists; check the dataset directory"
    )


def _read_split(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise InvalidInputError(f"split file {path} does not exist")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _paired(img_dir: str, ann_dir: str, ids: Iterable[str], img_ext: str, ann_suffix: str) -> List[Tuple[str, str]]:
    pairs = []
    for i in ids:
        img = os.path.join(img_dir, i + img_ext)
        ann = os.path.join(ann_dir, i + ann_suffix)
        if not os.path.isfile(img):
            raise InvalidInputError(f"image {img} listed in the split does not exist")
        if not os.path.isfile(ann):
            raise InvalidInputError(f"annotation {ann} for image {img} does not exist")
        pairs.append((img, ann))
    return pairs


def _loader(path: str, transform: Optional[Callable[[np.ndarray, str], np.ndarray]] = None) -> Callable[[], np.ndarray]:
    def load():
        a = _read_label(path)
        return transform(a, path) if transform is not None else a

    return load


def _reduce(a: np.ndarray, path: str) -> np.ndarray:
    return reduce_zero_label(a)


def _common(protocol, name, split):
    preset = protocol_info(protocol)
    return preset, name or f"{preset.name}-{split}"


# ------------------------------------------------------------------------------------------------
# Importers
# ------------------------------------------------------------------------------------------------
def load_voc(root, split="val", protocol="voc21", name=None, max_samples=None, **kwargs) -> fo.Dataset:
    """Pascal VOC 2012 (``voc21``: 0 = background + 20, 255 = boundary; ``voc20``: reduce_zero_label)."""
    preset, name = _common(protocol, name, split)
    if preset.name not in ("voc21", "voc20"):
        raise InvalidInputError(f"load_voc handles voc21/voc20, not {protocol!r}")
    base = _find_dir(root, ["VOCdevkit/VOC2012", "VOC2012", ""], "Pascal VOC 2012")
    ids = _take(_read_split(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt")), max_samples)
    pairs = _paired(os.path.join(base, "JPEGImages"), os.path.join(base, "SegmentationClass"), ids, ".jpg", ".png")
    tr = _reduce if preset.reduce_zero_label else None
    items = [(img, _loader(ann, tr), {}) for img, ann in pairs]
    rule = "SegmentationClass PNG" + (" + reduce_zero_label" if tr else "")
    return build_dataset(items, preset.name, name, rule=rule, **kwargs)


def load_context(root, split="val", protocol="context60", name=None, max_samples=None, **kwargs) -> fo.Dataset:
    """Pascal Context as converted by mmseg (``context60``: 0 = background + 59; ``context59``:
    reduce_zero_label)."""
    preset, name = _common(protocol, name, split)
    if preset.name not in ("context60", "context59"):
        raise InvalidInputError(f"load_context handles context60/context59, not {protocol!r}")
    base = _find_dir(root, ["VOCdevkit/VOC2010", "VOC2010", ""], "Pascal Context (VOC2010)")
    ids = _take(_read_split(os.path.join(base, "ImageSets", "SegmentationContext", f"{split}.txt")), max_samples)
    pairs = _paired(os.path.join(base, "JPEGImages"), os.path.join(base, "SegmentationClassContext"), ids, ".jpg", ".png")
    tr = _reduce if preset.reduce_zero_label else None
    items = [(img, _loader(ann, tr), {}) for img, ann in pairs]
    rule = "SegmentationClassContext PNG" + (" + reduce_zero_label" if tr else "")
    return build_dataset(items, preset.name, name, rule=rule, **kwargs)


def load_ade20k(root, split="validation", name=None, max_samples=None, **kwargs) -> fo.Dataset:
    """ADE20K (ADEChallengeData2016, 150 classes): annotations 0 = "other" -> 255, v -> v - 1."""
    preset, name = _common("ade20k", name, split)
    base = _find_dir(root, ["ADEChallengeData2016", ""], "ADE20K (ADEChallengeData2016)")
    img_dir = os.path.join(base, "images", split)
    ann_dir = os.path.join(base, "annotations", split)
    if not os.path.isdir(img_dir):
        raise InvalidInputError(f"ADE20K: {img_dir} does not exist")
    ids = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(img_dir, "*.jpg")))
    pairs = _paired(img_dir, ann_dir, _take(ids, max_samples), ".jpg", ".png")
    items = [(img, _loader(ann, _reduce), {}) for img, ann in pairs]
    return build_dataset(items, "ade20k", name, rule="ADE20K PNG + reduce_zero_label", **kwargs)


def _coco_images(base: str, split: str) -> str:
    return _find_dir(base, [f"images/{split}", split], f"COCO images of {split}")


def load_coco_stuff(root, split="val2017", name=None, max_samples=None, **kwargs) -> fo.Dataset:
    """COCO-Stuff-164k, 171 classes (80 things then 91 stuff). Uses mmseg's ``*_labelTrainIds.png``
    if present, else converts the raw ``stuffthingmaps`` PNGs (value = COCO id - 1) with the same
    table (the 11 unused COCO ids and 255 -> ignore)."""
    preset, name = _common("coco_stuff", name, split)
    base = os.path.abspath(os.path.expanduser(str(root)))
    img_dir = _coco_images(base, split)
    ann_dir = _find_dir(base, [f"annotations/{split}", f"stuffthingmaps_trainval2017/{split}"], "COCO-Stuff annotations")
    ids = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(img_dir, "*.jpg")))
    ids = _take(ids, max_samples)
    converted = bool(ids) and os.path.isfile(os.path.join(ann_dir, ids[0] + "_labelTrainIds.png"))
    if converted:
        pairs = _paired(img_dir, ann_dir, ids, ".jpg", "_labelTrainIds.png")
        items = [(img, _loader(ann), {}) for img, ann in pairs]
        rule = "mmseg *_labelTrainIds.png"
    else:
        pairs = _paired(img_dir, ann_dir, ids, ".jpg", ".png")
        items = [(img, _loader(ann, lambda a, p: _apply_lut(STUFFTHING_TO_COCO_STUFF, a, p)), {}) for img, ann in pairs]
        rule = "raw stuffthingmaps converted to 171 trainIds"
    return build_dataset(items, "coco_stuff", name, rule=rule, **kwargs)


def load_coco_object(
    root=None,
    split="val2017",
    name=None,
    max_samples=None,
    annotations_json=None,
    images_dir=None,
    source="auto",
    crowd="skip",
    **kwargs,
) -> fo.Dataset:
    """COCO-Object (81 classes: 0 = background + the 80 things, contiguous ids in COCO id order).

    Sources (``source="auto"`` tries them in this order):

    * ``"converted"``: the reference's converted files ``annotations/<split>/*_instanceTrainIds.png``
      (written by ``cvt_coco_object.py``), used as they are;
    * ``"json"``: COCO instances JSON (``annotations_json``, default
      ``<root>/annotations/instances_<split>.json``) decoded with pycocotools, painted by the rule of
      :func:`coco_semantic_mask` (annotation order, later over earlier; ``crowd`` rule);
    * ``"stuffthingmaps"``: raw COCO-Stuff ``annotations/<split>/*.png``, converted as
      ``cvt_coco_object.py`` does: thing -> 1..80, stuff and unlabeled (255) -> 0.

    COCO-Object has no ignored pixels under the reference conversion (unlabeled -> background).
    """
    preset, name = _common("coco_object", name, split)
    if source not in ("auto", "converted", "json", "stuffthingmaps"):
        raise InvalidInputError(f"source must be auto, converted, json or stuffthingmaps, got {source!r}")
    base = os.path.abspath(os.path.expanduser(str(root))) if root is not None else None

    if annotations_json is not None and source == "auto":
        source = "json"
    ann_dir = None
    if base is not None and source in ("auto", "converted", "stuffthingmaps"):
        cand = os.path.join(base, "annotations", split)
        ann_dir = cand if os.path.isdir(cand) else None
    if source == "auto":
        if ann_dir and glob.glob(os.path.join(ann_dir, "*_instanceTrainIds.png")):
            source = "converted"
        elif base and os.path.isfile(os.path.join(base, "annotations", f"instances_{split}.json")):
            source = "json"
        elif ann_dir and glob.glob(os.path.join(ann_dir, "*.png")):
            source = "stuffthingmaps"
        else:
            raise InvalidInputError(
                f"COCO-Object: found neither annotations/{split}/*_instanceTrainIds.png, "
                f"annotations/instances_{split}.json nor raw stuffthingmaps under {base}"
            )

    if source == "json":
        try:
            from pycocotools.coco import COCO
        except ImportError:
            raise InvalidInputError("COCO-Object from the instances JSON needs pycocotools: "
                                    "pip install 'fiftyone_cass[coco]' (or pip install pycocotools)") from None

        if annotations_json is None:
            if base is None:
                raise InvalidInputError("COCO-Object: pass root or annotations_json")
            annotations_json = os.path.join(base, "annotations", f"instances_{split}.json")
        if not os.path.isfile(annotations_json):
            raise InvalidInputError(f"COCO-Object: {annotations_json} does not exist")
        if images_dir is None:
            if base is None:
                raise InvalidInputError("COCO-Object: pass images_dir with annotations_json")
            images_dir = _coco_images(base, split)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            try:
                coco = COCO(annotations_json)
            except Exception as e:
                raise InvalidInputError(f"{annotations_json} is not a readable COCO annotation file: {e}") from e
        unknown = [c for c in coco.cats if c not in COCO_THING_IDS]
        if unknown:
            raise InvalidInputError(f"{annotations_json}: category ids {unknown[:10]} are not COCO thing categories")
        img_ids = _take(sorted(coco.imgs), max_samples)
        items = []
        for iid in img_ids:
            info = coco.imgs[iid]
            img = os.path.join(images_dir, info["file_name"])
            if not os.path.isfile(img):
                raise InvalidInputError(f"image {img} (COCO id {iid}) does not exist")
            items.append((img, (lambda i=iid: coco_semantic_mask(coco, i, crowd=crowd)), {"coco_id": int(iid)}))
        rule = f"instances JSON, annotation order, later over earlier, crowd={crowd}"
        return build_dataset(items, "coco_object", name, rule=rule, **kwargs)

    if base is None or ann_dir is None:
        raise InvalidInputError(f"COCO-Object: {os.path.join(str(base), 'annotations', split)} does not exist")
    img_dir = _coco_images(base, split)
    ids = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(img_dir, "*.jpg")))
    ids = _take(ids, max_samples)
    if source == "converted":
        pairs = _paired(img_dir, ann_dir, ids, ".jpg", "_instanceTrainIds.png")
        items = [(img, _loader(ann), {}) for img, ann in pairs]
        rule = "cvt_coco_object *_instanceTrainIds.png"
    else:
        pairs = _paired(img_dir, ann_dir, ids, ".jpg", ".png")
        items = [(img, _loader(ann, lambda a, p: _apply_lut(STUFFTHING_TO_COCO_OBJECT, a, p)), {}) for img, ann in pairs]
        rule = "raw stuffthingmaps converted as cvt_coco_object.py"
    return build_dataset(items, "coco_object", name, rule=rule, **kwargs)


def load_cityscapes(root, split="val", name=None, max_samples=None, **kwargs) -> fo.Dataset:
    """Cityscapes (19 trainId classes, 255 ignored): ``*_gtFine_labelTrainIds.png`` if present,
    else ``*_gtFine_labelIds.png`` converted with the official labelId -> trainId table."""
    preset, name = _common("cityscapes", name, split)
    base = os.path.abspath(os.path.expanduser(str(root)))
    img_root = _find_dir(base, [f"leftImg8bit/{split}"], "Cityscapes images")
    gt_root = _find_dir(base, [f"gtFine/{split}"], "Cityscapes gtFine")
    imgs = sorted(glob.glob(os.path.join(img_root, "*", "*_leftImg8bit.png")))
    imgs = _take(imgs, max_samples)
    items = []
    rules = set()
    for img in imgs:
        city = os.path.basename(os.path.dirname(img))
        stem = os.path.basename(img)[: -len("_leftImg8bit.png")]
        train = os.path.join(gt_root, city, stem + "_gtFine_labelTrainIds.png")
        ids = os.path.join(gt_root, city, stem + "_gtFine_labelIds.png")
        if os.path.isfile(train):
            items.append((img, _loader(train), {"city": city}))
            rules.add("labelTrainIds")
        elif os.path.isfile(ids):
            items.append((img, _loader(ids, lambda a, p: _apply_lut(CITYSCAPES_LUT, a, p)), {"city": city}))
            rules.add("labelIds -> trainIds")
        else:
            raise InvalidInputError(f"Cityscapes: no gtFine labelTrainIds/labelIds file for {img}")
    return build_dataset(items, "cityscapes", name, rule=", ".join(sorted(rules)), **kwargs)


LOADERS = {
    "voc21": lambda root, **kw: load_voc(root, protocol="voc21", **kw),
    "voc20": lambda root, **kw: load_voc(root, protocol="voc20", **kw),
    "context60": lambda root, **kw: load_context(root, protocol="context60", **kw),
    "context59": lambda root, **kw: load_context(root, protocol="context59", **kw),
    "ade20k": load_ade20k,
    "coco_object": load_coco_object,
    "coco_stuff": load_coco_stuff,
    "cityscapes": load_cityscapes,
}


def load_protocol_dataset(protocol: str, root, **kwargs) -> fo.Dataset:
    """Dispatches to the importer of ``protocol`` (preset names; aliases such as ``city_scapes``)."""
    key = protocol_info(protocol).name
    return LOADERS[key](root, **kwargs)
