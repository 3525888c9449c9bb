"""The one Vocabulary (fiftyone_cass.models.vocabulary): its constructors, the label -> written-id
mapping, its refusals, and that a Segmenter and the ground-truth mapping agree on names and ids."""

import types

import numpy as np
import pytest

from fiftyone_cass import InvalidInputError, Segmenter
from fiftyone_cass.models.presets import PRESETS, default_background_words, preset_class_lines
from fiftyone_cass.models.vocabulary import Vocabulary, queries_from_class_lines, vocabulary_from_mask_targets

NFC, NFD = "caf\u00e9", "cafe\u0301"
LONG = "a very " + "very " * 80 + "long dog"


# ------------------------------------------------------------------------------------------------
# constructors
# ------------------------------------------------------------------------------------------------
def test_from_classes_lines_names_queries_and_identity_ids():
    v = Vocabulary.from_classes(["dog", "cat, kitty", "grass"])
    assert v.class_lines == ["", "dog", "cat, kitty", "grass"]
    assert v.names == ["background", "dog", "cat", "grass"] and v.classes == ["dog", "cat", "grass"]
    assert v.queries == ["dog", "cat", "kitty", "grass"] and v.query_owner == [1, 2, 2, 3]
    assert v.has_queries.tolist() == [False, True, True, True]  # an empty background line: no query
    assert v.num_labels == 4 and v.background_label == 0 and v.background_id == 0
    assert v.mask_targets == {0: "background", 1: "dog", 2: "cat", 3: "grass"}
    assert v.lut is None and v.source == "classes" and v.preset is None
    labels = np.array([[0, 3], [2, 1]], np.uint8)
    assert v.map(labels) is labels  # the written ids are the labels
    assert v.written_id(2) == 2 and v.label_dtype == np.uint8


@pytest.mark.parametrize("classes", ["dog, cat", "dog\ncat", [" dog ", "cat"]])
def test_from_classes_string_and_list_forms(classes):
    assert Vocabulary.from_classes(classes).class_lines == ["", "dog", "cat"]


def test_from_classes_background_words():
    v = Vocabulary.from_classes(["dog"], background=["sky", " wall ", ""])
    assert v.class_lines == ["sky, wall", "dog"] and v.names[0] == "background"
    assert v.queries == ["sky", "wall", "dog"] and v.has_queries.tolist() == [True, True]
    d = Vocabulary.from_classes(["dog"], background="default")
    assert d.class_lines[0] == ", ".join(default_background_words()) and d.class_lines[0].startswith("sky, wall")
    assert Vocabulary.from_classes(["dog"], background="sky").class_lines == ["sky", "dog"]


def test_from_preset():
    voc = Vocabulary.from_preset("voc21")
    assert voc.num_labels == 21 and voc.background_label == 0 and voc.background_id == 0
    assert voc.class_lines == preset_class_lines(PRESETS["voc21"]) and voc.class_lines[0].startswith("sky, wall")
    assert voc.names[0] == "background" and voc.names[1] == "aeroplane"
    assert voc.preset is PRESETS["voc21"] and voc.source == "preset" and voc.lut is None
    queries, owner = queries_from_class_lines(voc.class_lines)
    assert voc.queries == queries and len(queries) == PRESETS["voc21"].num_queries and voc.query_owner == owner
    ade = Vocabulary.from_preset(PRESETS["ade20k"])  # a Preset object is accepted too
    assert ade.num_labels == 150 and ade.background_label is None and ade.background_id is None
    assert ade.names[0] == "wall" and ade.mask_targets[0] == "wall" and ade.classes == ade.names
    assert Vocabulary.from_preset("city_scapes").preset is PRESETS["cityscapes"]  # aliases
    with pytest.raises(ValueError, match="unknown preset"):
        Vocabulary.from_preset("nope")


def test_from_mask_targets_lut_maps_labels_to_ground_truth_ids():
    v = Vocabulary.from_mask_targets({0: "unlabeled", 5: "sky", "2": "tree", 255: "void"}, "gt")
    assert v.classes == ["tree", "sky"] and v.names == ["background", "tree", "sky"]
    assert v.class_lines == ["", "tree", "sky"] and v.background_label == 0 and v.background_id == 0
    assert v.lut.tolist() == [0, 2, 5] and v.lut.dtype == np.uint8
    assert v.mask_targets == {0: "unlabeled", 2: "tree", 5: "sky"} and list(v.mask_targets) == [0, 2, 5]
    assert v.source == "mask_targets"
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    np.testing.assert_array_equal(v.map(labels), [[0, 2], [5, 2]])
    assert [v.written_id(j) for j in range(3)] == [0, 2, 5]
    # the tuple form
    classes, lut, bg, out = vocabulary_from_mask_targets({0: "unlabeled", 5: "sky", 2: "tree"})
    assert (classes, lut.tolist(), bg, out) == (["tree", "sky"], [0, 2, 5], 0, {0: "unlabeled", 2: "tree", 5: "sky"})


def test_from_mask_targets_without_background_and_with_large_ids():
    v = Vocabulary.from_mask_targets({0: "wall", 1: "floor", 300: "lamp"})
    assert v.classes == ["wall", "floor", "lamp"] and v.background_id is None
    assert v.background_label == 0  # the Segmenter's label 0 exists but is never written
    assert v.lut.dtype == np.uint16 and v.lut[1:].tolist() == [0, 1, 300]
    assert v.mask_targets == {0: "wall", 1: "floor", 300: "lamp"}
    assert v.map(np.array([3, 1], np.uint8)).tolist() == [300, 0]
    top = Vocabulary.from_mask_targets({0: "background", 65535: "edge"})
    assert top.lut.tolist() == [0, 65535] and top.lut.dtype == np.uint16


def test_from_mask_targets_keeps_ground_truth_names_and_background_words():
    v = Vocabulary.from_mask_targets({0: "Background", 1: "cat, kitty", 2: " dog "}, background=["sky"])
    assert v.names == ["background", "cat, kitty", "dog"]  # the GT's names, not first synonyms
    assert v.class_lines == ["sky", "cat, kitty", "dog"] and v.queries == ["sky", "cat", "kitty", "dog"]
    assert v.mask_targets == {0: "Background", 1: "cat, kitty", 2: " dog "}


def test_of_segmenter_for_objects_with_the_segmenter_interface():
    stand_in = types.SimpleNamespace(class_lines=["", "a", "b"], class_names=["background", "a", "b"], background_id=0)
    v = Vocabulary.of_segmenter(stand_in)
    assert v.names == ["background", "a", "b"] and v.mask_targets == {0: "background", 1: "a", 2: "b"}
    assert v.source == "segmenter" and v.lut is None
    no_bg = Vocabulary.of_segmenter(types.SimpleNamespace(class_lines=["0", "1"], background_id=None))
    assert no_bg.names == ["0", "1"] and no_bg.background_id is None


# ------------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "classes,background,match",
    [
        (None, None, "no classes given"),
        ([], None, "vocabulary is empty"),
        ("", None, "vocabulary is empty"),
        (["dog", ""], None, "empty class name"),
        (["dog, , cat"], None, "empty synonym"),
        (["dog", "cat", "dog"], None, r"duplicate class name 'dog' \(classes 1 and 3"),
        (["dog", "Dog"], None, "duplicate class name 'Dog'"),
        (["big  dog", "Big dog"], None, "duplicate class name"),
        (["cat, kitty, Kitty"], None, "duplicate synonym 'Kitty' in class"),
        ([NFC, NFD], None, r"duplicate class name .*two Unicode forms, NFC and NFD"),
        (["background", "dog"], None, "'background' is label 0 and cannot be a class"),
        (["Background, bg", "dog"], None, "'background' is label 0"),
        (["dog", "sky"], ["sky"], "background word 'sky' is also a class name"),
        ([NFC], [NFD], "background word .* is also a class name .*two Unicode forms"),
        (["cat", LONG], None, "too long"),
        (["cat", f"dog, {LONG}"], None, "too long"),
        (["cat"], [LONG], "too long"),
    ],
)
def test_from_classes_refusals(classes, background, match):
    with pytest.raises(InvalidInputError, match=match):
        Vocabulary.from_classes(classes, background)


@pytest.mark.parametrize(
    "targets,match",
    [
        ({}, r"^gt: no mask_targets to take the classes from; give them \(\{id: name\}"),
        (None, "^gt: no mask_targets"),
        ({"#ff0000": "cat"}, r"gt: mask_targets key '#ff0000' is not an integer id \(RGB"),
        ({(255, 0, 0): "cat"}, "is not an integer id"),
        ({True: "cat"}, "is not an integer id"),
        ({1.0: "cat"}, "is not an integer id"),
        ({70000: "cat"}, r"gt: mask_targets id 70000 is outside 0..65535"),
        ({-1: "cat", 1: "dog"}, "outside 0..65535"),
        ({0: "background", 255: "ignore"}, "gt: mask_targets .* name no class to predict"),
        ({0: "unlabeled", 1: "", 2: "Void", 3: "background"}, "name no class"),
        ({1: "cat", 2: "Cat"}, r"^gt: duplicate class name 'Cat'"),
        ({1: NFC, 2: NFD}, r"^gt: duplicate class name .*two Unicode forms"),
        ({1: "cat", 2: LONG}, r"^gt: class name .* too long"),
    ],
)
def test_from_mask_targets_refusals(targets, match):
    with pytest.raises(InvalidInputError, match=match):
        Vocabulary.from_mask_targets(targets, "gt")


def test_ground_truth_background_word_clash_is_refused_naming_the_field():
    with pytest.raises(InvalidInputError, match="^gt_field 'gt' mask_targets: background word 'sky'"):
        Vocabulary.from_mask_targets({0: "background", 1: "sky"}, "gt_field 'gt' mask_targets", background=["sky"])


# ------------------------------------------------------------------------------------------------
# one vocabulary on both sides
# ------------------------------------------------------------------------------------------------
def _seg(**kw):
    return Segmenter(backbone="tiny", device="cpu", method="cass", **kw)


def test_segmenter_attributes_come_from_its_vocabulary():
    seg = _seg(classes=["dog", "cat, kitty"], background=["sky"])
    v = seg.vocabulary
    assert v == Vocabulary.from_classes(["dog", "cat, kitty"], ["sky"])
    assert seg.class_lines == v.class_lines == ["sky", "dog", "cat, kitty"]
    assert seg.class_names == v.names == ["background", "dog", "cat"]
    assert seg.queries == v.queries and seg.query_to_class.tolist() == v.query_owner == [0, 1, 2, 2]
    assert seg.num_labels == v.num_labels == 3 and seg.background_id == v.background_label == 0
    assert seg.mask_targets == v.mask_targets == {0: "background", 1: "dog", 2: "cat"}
    assert seg.has_queries.tolist() == v.has_queries.tolist() == [True, True, True]
    p = _seg(preset="ade20k")
    assert p.vocabulary == Vocabulary.from_preset("ade20k") and p.preset is PRESETS["ade20k"]
    assert p.background_id is None and p.class_names[0] == "wall"


@pytest.mark.parametrize(
    "targets",
    [
        {0: "background", 7: "dog", 3: "cat", 255: "ignore"},
        {"0": "wall", "1": "floor", "300": "lamp"},
    ],
)
def test_segmenter_and_ground_truth_mapping_agree_on_names_and_ids(targets):
    gt = Vocabulary.from_mask_targets(targets, "gt")
    seg = _seg(classes=gt.classes)
    # the same labels: class lines, queries, names of the classes
    assert seg.class_lines == gt.class_lines and seg.queries == gt.queries
    assert seg.query_to_class.tolist() == gt.query_owner and seg.num_labels == gt.num_labels == len(gt.lut)
    assert seg.class_names[1:] == gt.names[1:] == gt.classes
    # each Segmenter label is written under the GT id of the class of the same name
    written = {j: int(gt.lut[j]) for j in range(1, seg.num_labels)}
    for j, gid in written.items():
        assert gt.mask_targets[gid].strip() == seg.class_names[j]
        assert str(gid) in {str(k) for k in targets} and targets.get(gid, targets.get(str(gid))) == seg.class_names[j]
    labels = np.arange(seg.num_labels, dtype=np.uint8)[None]
    assert set(gt.map(labels)[0, 1:].tolist()) == set(written.values())


@pytest.mark.parametrize("classes,match", [
    ([None, "dog"], "class 1 of .* is NoneType None, not text"),
    (["dog", 2], "class 2 of .* is int 2, not text"),
    (b"dog,cat", "not bytes"),
    ({"dog", "cat"}, "ordered list"),
    (7, "not int"),
])
def test_classes_that_are_not_texts_are_refused_not_renamed(classes, match):
    with pytest.raises(InvalidInputError, match=match):
        Vocabulary.from_classes(classes)
    assert Vocabulary.from_classes(("dog", "cat")).classes == Vocabulary.from_classes(iter(["dog", "cat"])).classes


# issue 24 item 6: names compared as open_clip's tokenizer sees them; control characters refused
@pytest.mark.parametrize("a, b", [("fish", "\ufb01sh"), ("cat", "\uff43\uff41\uff54"), ("caf\u00e9", "caf\u00c3\u00a9"),
                                  ("dog", "&#100;og"), ("dog", "DOG"), ("hot dog", "hot  dog")])
def test_names_the_tokenizer_reads_as_one_are_refused_as_duplicates(a, b):
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-16")
    assert tok.encode(a) == tok.encode(b)  # what the text encoder would see: one name
    with pytest.raises(InvalidInputError, match=r"duplicate class name .*classes 1 and 2"):
        Vocabulary.from_classes([a, b])
    with pytest.raises(InvalidInputError, match="duplicate synonym"):
        Vocabulary.from_classes([f"{a}, {b}"])
    with pytest.raises(InvalidInputError, match="background word"):
        Vocabulary.from_classes([a], background=[b])


@pytest.mark.parametrize("name", ["ca\x00t", "cat\x1b", "\x1b[31mred", "do\x7fg"])
def test_control_characters_in_a_name_are_refused(name):
    with pytest.raises(InvalidInputError, match=r"control character U\+00[0-9A-F]{2}") as e:
        Vocabulary.from_classes(["dog", name] if "dog" not in name else ["cat", name])
    assert repr(name) in str(e.value)


def test_names_with_other_tokens_stay_two_classes():
    v = Vocabulary.from_classes(["dog", "do g", "dogs", "caf\u00e9", "cafe"])
    assert v.names[1:] == ["dog", "do g", "dogs", "caf\u00e9", "cafe"]
