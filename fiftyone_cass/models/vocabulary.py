"""The vocabulary: what a labelling run predicts and under which ids and names it is written.

One :class:`Vocabulary` is shared by the :class:`~fiftyone_cass.Segmenter` (its class lines,
queries and label ids) and the FiftyOne side (:class:`~fiftyone_cass.fo.model.CassModel`,
:func:`fiftyone_cass.apply`: the written ids, ``mask_targets``, presence names). Two id spaces:

* **labels**: the Segmenter's output, ``0..num_labels-1``; label ``j`` is class line ``j``
  (", "-separated synonyms). In a free vocabulary label 0 is background (its line holds the
  background *words*, possibly none) and the classes get labels ``1..C`` in order;
* **written ids**: the ids stored in the masks, named by :attr:`Vocabulary.mask_targets`.
  ``lut[j]`` is the written id of label ``j`` (``lut`` None: the same ids).

Constructors: :meth:`Vocabulary.from_classes` (names typed by a user), :meth:`Vocabulary.from_preset`
(a published protocol) and :meth:`Vocabulary.from_mask_targets` (a ground truth's ``{id: name}``,
so that predictions use its ids). Every refusal of a vocabulary lives here and raises
:class:`~fiftyone_cass.errors.InvalidInputError` naming the class.

Pure Python + numpy: no model is loaded (the over-long-name check reads open_clip's tokenizer).
"""

from __future__ import annotations

import dataclasses
import logging
import unicodedata
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fiftyone_cass.errors import SOME_LIST, SOME_TEXT, InvalidInputError, kw, use
from fiftyone_cass.models.presets import Preset, default_background_words, get_preset, preset_class_lines

logger = logging.getLogger(__name__)

#: the value evaluation ignores by default (``ignore_index`` / ``--ignore-index``)
IGNORE_VALUE = 255
#: names of a ground-truth id 0 that mean "background"
BACKGROUND_NAMES = {"background", "bg", "_background_", "__background__", "unlabeled", "unlabelled", "none"}
#: names of ground-truth ids that are never predicted (e.g. 255): not classes of a vocabulary
IGNORE_NAMES = {"ignore", "ignored", "void", "unlabeled", "unlabelled", "_ignore_", "__ignore__"}
#: the largest id a mask can hold (16-bit PNG)
MAX_ID = 65535


def parse_classes(classes: Union[str, Sequence[str]]) -> List[str]:
    """Class lines of ``"dog, frisbee"`` / ``"dog\\nfrisbee"`` / ``["dog", "frisbee"]``. In the
    string forms each comma- or line-separated part is a class; in the list form each entry is a
    class line whose ", "-separated parts are synonyms."""
    if isinstance(classes, str):
        parts = classes.split("\n") if "\n" in classes else classes.split(",")
        return [p.strip() for p in parts]
    if isinstance(classes, (bytes, bytearray, dict, set, frozenset)) or not hasattr(classes, "__iter__"):
        # (sets and dicts: their order, hence the label ids, is not the caller's)
        raise InvalidInputError(f"classes must be text or an ordered list of texts, not {type(classes).__name__} "
                                f"{classes!r}")
    classes = list(classes)
    for i, c in enumerate(classes):
        if not isinstance(c, str):  # None, numbers, bytes: not silently turned into names like "None"
            raise InvalidInputError(f"class {i + 1} of {list(classes)!r} is {type(c).__name__} {c!r}, not text")
    return [c.strip() for c in classes]


def queries_from_class_lines(lines: Sequence[str]) -> Tuple[List[str], List[int]]:
    """Expand class lines (", "-separated synonyms) to ``(queries, query_to_class)``."""
    queries, owner = [], []
    for ci, line in enumerate(lines):
        for name in line.split(","):
            name = name.strip()
            if name:
                queries.append(name)
                owner.append(ci)
    return queries, owner


def _tokenizer():
    from fiftyone_cass.models.text import default_tokenizer  # open_clip's CLIP tokenizer, read on first use

    return default_tokenizer()


def name_key(name: str) -> Tuple[int, ...]:
    """A name as the text encoder sees it: the token ids of open_clip's CLIP tokenizer, which
    cleans the text first (ftfy's ``fix_text``: Unicode NFC, ligatures, full-width letters,
    mojibake; HTML entities unescaped twice; lower case; runs of white space as one). Two names
    with the same key get the same embedding: "fish"/"\ufb01sh", "cat"/"\uff43\uff41\uff54",
    "caf\u00e9"/"caf\u00c3\u00a9", "dog"/"&#100;og", NFC/NFD forms."""
    return tuple(_tokenizer().encode(name))


def check_name_characters(name: str, where: str = "class name") -> None:
    """Refuses a name holding a control character (NUL, ESC, DEL, tab, ...): the tokenizer drops
    or changes them silently, so the name would not be what the user sees."""
    for ch in name:
        if unicodedata.category(ch) == "Cc":
            raise InvalidInputError(f"{where} {name!r} holds the control character U+{ord(ch):04X}; remove it")


def _same_text(a: str, b: str) -> str:
    if a == b or " ".join(a.lower().split()) == " ".join(b.lower().split()):
        return ""
    if unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b):
        return " (the same text in two Unicode forms, NFC and NFD)"
    seen = _tokenizer().decode(list(name_key(a))).strip()
    return f" (the text encoder reads both as {seen!r})"


def _norm_name(name: str) -> str:
    return str(name).strip().lower()


def check_class_lines(lines: Sequence[str]) -> Dict[Tuple[int, ...], Tuple[int, str]]:
    """Refuses an empty vocabulary, empty names, names with control characters, duplicates
    (compared with :func:`name_key`, the tokens the text encoder sees: NFC/NFD, case, spacing,
    ligature, full-width, mojibake and HTML-entity variants are duplicates) and 'background' as a
    class. Returns
    ``{key: (line index, name)}`` of every synonym."""
    if not lines or all(not line for line in lines):
        raise InvalidInputError("the vocabulary is empty: give at least one class name")
    if any(not line for line in lines):
        raise InvalidInputError(f"empty class name in {list(lines)!r}")
    seen: Dict[Tuple[int, ...], Tuple[int, str]] = {}
    for i, line in enumerate(lines):
        for raw in (p.strip() for p in line.split(",")):
            check_name_characters(raw)
            name = name_key(raw)
            if not name:
                raise InvalidInputError(f"empty synonym in class {line!r}")
            if name in seen and seen[name][0] != i:
                j, other = seen[name]
                raise InvalidInputError(
                    f"duplicate class name {raw!r} (classes {j + 1} and {i + 1}: {other!r} and {raw!r})"
                    + _same_text(other, raw)
                )
            if name in seen:
                raise InvalidInputError(f"duplicate synonym {raw!r} in class {line!r}" + _same_text(seen[name][1], raw))
            seen[name] = (i, raw)
    if any(name_key(line.split(",")[0]) == name_key("background") for line in lines):
        raise InvalidInputError(f"'background' is label 0 and cannot be a class; use {kw('background', SOME_LIST)} for words")
    return seen


def background_line(background: Union[None, str, Sequence[str]]) -> str:
    """The class line of background: None -> no words; ``"default"`` -> VOC's 26 background words;
    else the given word(s)."""
    if background is None:
        return ""
    if background == "default":
        return ", ".join(default_background_words())
    words = [background] if isinstance(background, str) else list(background)
    return ", ".join(w.strip() for w in words if w.strip())


def _check_name_lengths(names: Sequence[str]) -> None:
    from fiftyone_cass.models.text import check_name_lengths  # open_clip's tokenizer, read on first use

    check_name_lengths(names)


@dataclasses.dataclass(eq=False)
class Vocabulary:
    """What is predicted and how it is written.

    Attributes:
        class_lines: line ``j`` is Segmenter label ``j`` (", "-separated synonyms; the background
            line of a free vocabulary holds background words, possibly none)
        names: ``names[j]`` is the display name of label ``j`` (``"background"`` for the
            background label)
        background_label: the label of background (0), or None when every label is a class
        mask_targets: ``{written id: name}`` of the masks
        lut: ``lut[j]`` is the written id of label ``j``; None: written id = label
        background_id: the written id of background, or None when nothing is written as
            background (a ground truth whose id 0 is a class)
        source: ``"classes"``, ``"preset"``, ``"mask_targets"`` or ``"segmenter"``
        preset: the :class:`~fiftyone_cass.models.presets.Preset` of a preset vocabulary
    """

    class_lines: List[str]
    names: List[str]
    background_label: Optional[int]
    mask_targets: Dict[int, str]
    lut: Optional[np.ndarray] = None
    background_id: Optional[int] = None
    source: str = "classes"
    preset: Optional[Preset] = None

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_class_lines(cls, lines: Sequence[str], background_label: Optional[int] = None,
                         source: str = "classes", preset: Optional[Preset] = None) -> "Vocabulary":
        """A vocabulary of ready class lines (not checked), written under the label ids. Names:
        the first synonym of each line, ``"background"`` for ``background_label``."""
        lines = [str(line) for line in lines]
        names = [(line.split(",")[0].strip() if line.strip() else "background") for line in lines]
        if background_label is not None:
            names[background_label] = "background"  # whatever words stand for it (sky, wall, ...)
        return cls(lines, names, background_label, {i: n for i, n in enumerate(names)}, None, background_label,
                   source, preset)

    @classmethod
    def from_classes(cls, classes: Union[str, Sequence[str]],
                     background: Union[None, str, Sequence[str]] = None) -> "Vocabulary":
        """A free vocabulary: label 0 is background (``background`` words: None, ``"default"``
        or a list), ``classes`` get labels 1..C in order (see :func:`parse_classes`). Refuses
        empty names, duplicates (NFC/NFD, case and spacing variants too), 'background' as a
        class, a background word that is a class and names too long for CLIP's context."""
        if classes is None:
            raise InvalidInputError(f"no classes given: {use('classes', SOME_LIST)} or {kw('preset', SOME_TEXT)}")
        lines = parse_classes(classes)
        seen = check_class_lines(lines)
        bg = background_line(background)
        for w in (p.strip() for p in bg.split(",") if p.strip()):
            check_name_characters(w, "background word")
            if name_key(w) in seen:
                raise InvalidInputError(f"background word {w!r} is also a class name" + _same_text(seen[name_key(w)][1], w))
        # every name must fit CLIP's context in each of the 80 template sentences
        _check_name_lengths([p.strip() for line in lines + [bg] for p in line.split(",") if p.strip()])
        return cls.from_class_lines([bg] + lines, 0, "classes")

    @classmethod
    def from_preset(cls, preset: Union[str, Preset]) -> "Vocabulary":
        """The class file of a published protocol: line ``i`` is label ``i``; label 0 is background
        in the protocols that have one (voc21, context60, coco_object). An unknown name raises
        ``ValueError`` (from :func:`~fiftyone_cass.models.presets.get_preset`)."""
        p = preset if isinstance(preset, Preset) else get_preset(preset)
        return cls.from_class_lines(preset_class_lines(p), 0 if p.has_background else None, "preset", p)

    @classmethod
    def from_mask_targets(cls, mask_targets: Mapping[Any, str], field_name: str = "ground truth",
                          background: Union[None, str, Sequence[str]] = None) -> "Vocabulary":
        """The vocabulary that makes predictions use the ids of a ground truth's ``mask_targets``.

        The classes are the named ids in id order, except id 0 when it is named like background
        (:data:`BACKGROUND_NAMES`: then it is the background id) and names of ignored ids
        (:data:`IGNORE_NAMES`, e.g. 255 ``void``). Label ``k`` (``classes[k-1]``) is written as
        its GT id, label 0 (background) as the GT background id; without one (id 0 is a class),
        :attr:`background_id` is None and nothing may be labelled background. Refuses empty
        ``mask_targets``, non-integer (RGB) keys, ids outside 0..65535, ``mask_targets`` naming
        no class, and the refusals of :meth:`from_classes`. ``field_name`` says where the
        ``mask_targets`` come from (a field name, or a description such as ``"gt_field 'gt'
        mask_targets"``): every refusal starts with it and a colon.
        """
        if not mask_targets:
            raise InvalidInputError(
                f"{field_name}: no mask_targets to take the classes from; give them ({{id: name}}, e.g. the "
                f"ground-truth field's dataset.mask_targets[field]) or {use('classes', SOME_LIST)}"
            )
        targets: Dict[int, str] = {}
        for k, v in mask_targets.items():
            if isinstance(k, str) and k.lstrip("-").isdigit():
                k = int(k)
            if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
                raise InvalidInputError(
                    f"{field_name}: mask_targets key {k!r} is not an integer id (RGB mask targets are not supported)"
                )
            if int(k) < 0 or int(k) > MAX_ID:
                raise InvalidInputError(f"{field_name}: mask_targets id {k} is outside 0..{MAX_ID}")
            targets[int(k)] = str(v)
        background_id = 0 if (0 in targets and _norm_name(targets[0]) in BACKGROUND_NAMES) else None
        classes, gt_ids, dropped = [], [], []
        for k in sorted(targets):
            if k == background_id:
                continue
            name = targets[k].strip()
            if not name:
                dropped.append(f"id {k} (empty name)")
            elif _norm_name(name) == "background":
                dropped.append(f"id {k} ({name!r}: only id 0 can be background)")
            elif _norm_name(name) not in IGNORE_NAMES:
                classes.append(name)
                gt_ids.append(k)
        if dropped:
            logger.warning("%s: %s never predicted: name them as classes in the mask_targets to predict them",
                           field_name, ", ".join(dropped) + (" is" if len(dropped) == 1 else " are"))
        if IGNORE_VALUE in gt_ids:
            logger.warning("%s: id %d (%r) is a class, so labels hold the value %d, which evaluation ignores by "
                           "default (ignore_index / --ignore-index %d): evaluate with another ignore index",
                           field_name, IGNORE_VALUE, targets[IGNORE_VALUE], IGNORE_VALUE, IGNORE_VALUE)
        if not classes:
            raise InvalidInputError(f"{field_name}: mask_targets {targets!r} name no class to predict")
        try:
            labels = cls.from_classes(classes, background)
        except InvalidInputError as exc:
            raise exc.prefixed(f"{field_name}: ") from exc
        top = max(gt_ids + [background_id or 0])
        lut = np.zeros(len(classes) + 1, dtype=np.uint8 if top <= 255 else np.uint16)
        lut[0] = background_id if background_id is not None else 0  # never produced without background
        lut[1:] = gt_ids
        out = {k: targets[k] for k in gt_ids}
        if background_id is not None:
            out[background_id] = targets[background_id]
        # names: the ground truth's own (a GT name "a, b" stays one name; its line holds synonyms)
        return cls(labels.class_lines, ["background"] + classes, 0, dict(sorted(out.items())), lut, background_id,
                   "mask_targets")

    @classmethod
    def of_segmenter(cls, segmenter) -> "Vocabulary":
        """The vocabulary of a ready segmenter: its own :attr:`vocabulary`, else (an object with the
        Segmenter interface) one made from its ``class_lines`` and ``background_id``."""
        vocab = getattr(segmenter, "vocabulary", None)
        if vocab is not None:
            return dataclasses.replace(vocab, source="segmenter")
        return cls.from_class_lines(segmenter.class_lines, segmenter.background_id, "segmenter")

    # ---------------------------------------------------------------- derived
    @property
    def num_labels(self) -> int:
        return len(self.class_lines)

    @property
    def queries(self) -> List[str]:
        """Every synonym of every class line, in order (the text queries)."""
        return queries_from_class_lines(self.class_lines)[0]

    @property
    def query_owner(self) -> List[int]:
        """``query_owner[q]``: the label of query ``q``."""
        return queries_from_class_lines(self.class_lines)[1]

    @property
    def has_queries(self) -> np.ndarray:
        """``(num_labels,)`` bool: labels with at least one query (False: an empty background line)."""
        out = np.zeros(self.num_labels, dtype=bool)
        out[np.asarray(self.query_owner, dtype=np.int64)] = True
        return out

    @property
    def classes(self) -> List[str]:
        """The class names, background excluded."""
        return [n for j, n in enumerate(self.names) if j != self.background_label]

    @property
    def label_dtype(self):
        """The dtype of the Segmenter's label maps: uint8 up to 256 labels, else uint16."""
        return np.uint8 if self.num_labels <= 256 else np.uint16

    def written_id(self, label: int) -> int:
        return int(label) if self.lut is None else int(self.lut[label])

    def map(self, label_map: np.ndarray) -> np.ndarray:
        """A Segmenter label map in the written ids (the same array when they are the labels)."""
        return label_map if self.lut is None else self.lut[label_map]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        same_lut = (self.lut is None and other.lut is None) or (
            self.lut is not None and other.lut is not None and np.array_equal(self.lut, other.lut)
            and self.lut.dtype == other.lut.dtype)
        fields = ("class_lines", "names", "background_label", "mask_targets", "background_id")
        return all(getattr(self, f) == getattr(other, f) for f in fields) and same_lut


def vocabulary_from_mask_targets(mask_targets: Mapping[Any, str], field_name: str = "ground truth"):
    """:meth:`Vocabulary.from_mask_targets` as ``(classes, lut, background_id, mask_targets)``."""
    v = Vocabulary.from_mask_targets(mask_targets, field_name)
    return v.classes, v.lut, v.background_id, dict(v.mask_targets)


__all__ = [
    "BACKGROUND_NAMES",
    "IGNORE_NAMES",
    "MAX_ID",
    "Vocabulary",
    "background_line",
    "check_class_lines",
    "check_name_characters",
    "name_key",
    "parse_classes",
    "queries_from_class_lines",
    "vocabulary_from_mask_targets",
]


def vocabulary_of(classes, preset: Optional[str], background) -> "Vocabulary":
    """The vocabulary of a request: ``classes`` (with ``background`` words) or a ``preset`` (which
    has its own background: ``background`` words with a preset are refused), not both."""
    if preset is not None and classes is not None:
        raise InvalidInputError(f"give either {kw('classes')} or {kw('preset')}, not both")
    if preset is not None:
        if background is not None:  # the protocol decides what background is
            raise InvalidInputError(f"{kw('background')} words apply to a free vocabulary of classes; "
                                    f"{kw('preset')} {preset!r} has its own (leave {kw('background')} unset)")
        return Vocabulary.from_preset(preset)
    return Vocabulary.from_classes(classes, background)
