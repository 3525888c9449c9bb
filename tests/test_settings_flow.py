"""One settings object per request (issue 19, items 1, 3 and 4; issue 21, items 1, 3 and 6).

* The settings are built and checked once where a request enters (the command line, the operator,
  ``apply``, ``CassModel``, ``Segmenter``) and handed down unchanged: a preset with background
  words is refused alike everywhere (``CassModel`` used to rebuild the Segmenter's arguments and
  drop them).
* Each setting declares whether it changes outputs; the settings hash that marks labels as done is
  made of exactly those: a rerun with another memory budget or eigh placement resumes.
* A bad setting is an error carrying the setting, the value and what is allowed; each surface
  words it from those, never from the message text.
* The ``auto_label`` form is generated from the declarations: a multi-line class list (one class
  per line, synonyms kept), vocabulary errors and a non-Segmentation label field shown as invalid
  inputs before Execute.

Real MongoDB, the tiny random-weight backbone."""

from __future__ import annotations

import ast
import asyncio
import pathlib

import pytest

import fiftyone as fo
import fiftyone.operators as foo

from _label_helpers import BATCH, CLASSES, OPTS, add_samples, make_images
from fiftyone_cass import CassModel, Segmenter, cli
from fiftyone_cass.app.support import AUTO_LABEL_FIELDS, form_message
from fiftyone_cass.config.options import SegmenterOptions
from fiftyone_cass.config.schema import coerce_settings, output_settings, setting_fields
from fiftyone_cass.config.settings import EngineSettings, LabelSettings, build_settings, settings_hash_values
from fiftyone_cass.errors import InvalidInputError, SettingError
from fiftyone_cass.fo.apply import apply
from test_cli import TINY, run_cli

AUTO = "@fiftyone-cass/cass/auto_label"
SEG_OPTIONS = {k: v for k, v in OPTS.items() if k not in ("backbone", "device")}
OP_KW = dict(backbone="tiny", device="cpu", batch_size=BATCH, options=SEG_OPTIONS, masks="database")
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fiftyone_cass"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 3)


def _form(ds, **params):
    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    params = dict(dict(target="DATASET", class_source="classes", classes="dog, cat", backbone="tiny"), **params)
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params, target="inputs")
    return asyncio.run(resolve_type(OperatorRegistry(), AUTO, request)).to_json()["type"]["properties"]


# ------------------------------------------------------------------------------------------------
# item 1: what changes outputs, and the hash made of exactly that
# ------------------------------------------------------------------------------------------------
def test_every_setting_declares_whether_it_changes_outputs():
    for cls in (LabelSettings, SegmenterOptions):
        for name, f in setting_fields(cls).items():
            assert isinstance(f.metadata.get("output"), bool), (cls.__name__, name)
    not_outputs = {"device", "batch_size", "window_batch", "presence_threshold", "label_field", "masks", "mask_dir",
                   "skip_existing", "overwrite", "presence_field", "tag_prefix", "error_field", "embeddings_field",
                   "shard", "confidence_field", "uncertainty_field", "uncertainty_kind"}
    assert set(setting_fields(LabelSettings)) - set(output_settings(LabelSettings)) == not_outputs
    assert set(setting_fields(SegmenterOptions)) - set(output_settings(SegmenterOptions)) == {
        "full_res_budget", "eigh_placement"}
    # the hash is made of exactly the output settings (the vocabulary's ones stand as its class lines)
    s = build_settings(LabelSettings, dict(OPTS, classes="cat"))
    values = settings_hash_values(s, SegmenterOptions())
    assert set(values) == set(output_settings(EngineSettings)) - {"background"}
    assert set(values["options"]) == set(output_settings(SegmenterOptions))


def test_the_labels_hash_ignores_memory_placement_batching_and_device():
    base = CassModel(["cat", "dog"], **OPTS).config_id
    for change in (dict(full_res_budget=2**21), dict(eigh_placement="cpu"), dict(batch_size=7), dict(window_batch=3),
                   dict(presence_threshold=0.5), dict(device="auto")):
        assert CassModel(["cat", "dog"], **{**OPTS, **change}).config_id == base, change
    for change in (dict(gamma=0.3), dict(precision="fp16"), dict(method="cass"), dict(background="sky")):
        assert CassModel(["cat", "dog"], **{**OPTS, **change}).config_id != base, change


def test_a_rerun_with_another_memory_budget_or_placement_resumes(tmp_path, capsys, names):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 2)
    name = names.new("resume-budget")
    argv = ["label", img_dir, "--dataset", name, "--classes", "dog, cat", *TINY]
    rc, out = run_cli(*argv, capsys=capsys)
    assert rc == 0 and "2 labelled now" in out.out, out.err
    for extra in (["-o", "full_res_budget=2000000"], ["-o", "eigh_placement=cpu"], ["--batch-size", "1"]):
        rc, out = run_cli(*argv, *extra, capsys=capsys)
        assert rc == 0, (extra, out.err)
        assert "0 labelled now, 2 already done" in out.out, (extra, out.out)
    rc, out = run_cli(*argv, "-o", "gamma=0.3", capsys=capsys)  # changes the masks: other settings
    assert rc == 2 and "already holds labels of other settings" in out.err and "--overwrite" in out.err, out.err


# ------------------------------------------------------------------------------------------------
# item 1: a preset with background words, refused by every entry point
# ------------------------------------------------------------------------------------------------
def test_a_preset_with_background_words_is_refused_by_segmenter_and_cassmodel():
    with pytest.raises(InvalidInputError, match="background words apply to a free vocabulary"):
        Segmenter(preset="voc20", background="default", **OPTS)
    with pytest.raises(InvalidInputError, match="background words apply to a free vocabulary.*preset 'voc20'"):
        CassModel(preset="voc20", background="default", **OPTS)


def test_a_preset_with_background_words_is_refused_by_apply(fo_dataset, images):
    ds = add_samples(fo_dataset("preset-bg"), images)
    with pytest.raises(InvalidInputError, match="background words apply to a free vocabulary.*preset 'voc21'"):
        apply(ds, preset="voc21", background="default", masks="database", **OPTS)
    assert "cass" not in ds.get_field_schema() and ds.list_runs() == []


def test_a_preset_with_background_words_is_refused_by_the_cli(tmp_path, capsys, names):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 1)
    name = names.new("preset-bg-cli")
    rc, out = run_cli("label", img_dir, "--dataset", name, "--preset", "voc21", "--background", "default", *TINY,
                      capsys=capsys)
    assert rc == 2, out.err
    assert "--background words apply to a free vocabulary of classes; --preset 'voc21' has its own" in out.err
    assert "Traceback" not in out.err
    assert not fo.dataset_exists(name) or "cass" not in fo.load_dataset(name).get_field_schema()


def test_a_preset_with_background_words_is_an_invalid_input_of_the_form(fo_dataset, images):
    ds = add_samples(fo_dataset("preset-bg-form"), images[:1])
    form = _form(ds, class_source="preset", preset="voc21", background="default")
    assert form["background"].get("invalid") is True
    msg = form["background"]["error_message"]
    assert "“Background words” words apply to a free vocabulary of classes; “Preset” 'voc21'" in msg, msg
    assert _form(ds, class_source="classes", background="default")["background"].get("invalid") is not True
    # executed anyway (a Python caller): FiftyOne's validation refuses it before anything runs
    with pytest.raises(Exception, match="Background words"):
        foo.get_operator(AUTO)(ds, preset="voc21", background="default", **OP_KW)
    assert "cass" not in ds.get_field_schema()


# ------------------------------------------------------------------------------------------------
# item 3: structured errors
# ------------------------------------------------------------------------------------------------
def test_a_bad_setting_carries_the_setting_the_value_and_what_is_allowed():
    with pytest.raises(SettingError) as err:
        coerce_settings(LabelSettings, {"batch_size": "0"})
    e = err.value
    assert (e.setting, e.value, e.allowed) == ("batch_size", "0", "an integer from 1 to 4096")
    assert isinstance(e, InvalidInputError) and e.help == LabelSettings.__dataclass_fields__["batch_size"].metadata["help"]
    # each surface words it from the attributes: Python keyword, form label, command-line flag
    assert str(e).startswith("option batch_size='0' is not allowed: an integer from 1 to 4096")
    assert form_message(e, AUTO_LABEL_FIELDS) == "“Batch size” '0' is not allowed: an integer from 1 to 4096"
    flags = cli._flags_of(cli.build_parser(), "label")
    assert cli.cli_message(e, flags) == "argument --batch-size: '0' is not allowed: an integer from 1 to 4096"
    with pytest.raises(SettingError) as err:  # a Segmenter option: named as typed (-o KEY=VALUE)
        Segmenter("cat", **{**OPTS, "gamma": 2})
    assert err.value.setting == "gamma" and cli.cli_message(err.value, flags).startswith("-o gamma=2 is not allowed")
    # nested in the form's JSON input: the option named inside the field
    with pytest.raises(SettingError) as err:
        coerce_settings(LabelSettings, {"options": '{"mode": "tiles"}'})
    assert form_message(err.value, AUTO_LABEL_FIELDS).startswith("“Advanced options (JSON)”: mode='tiles' is not allowed")


def test_no_surface_rewords_messages_with_regular_expressions():
    for path in ("cli.py", "app/support.py", "models/weights.py"):
        tree = ast.parse((PACKAGE / path).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "re" not in imported, path


def test_settings_and_the_segmenter_do_not_import_each_other():
    def imports(path):
        tree = ast.parse((PACKAGE / path).read_text())
        out = set()
        for n in ast.walk(tree):  # every import statement, also inside functions
            if isinstance(n, ast.ImportFrom) and n.module:
                out.add(n.module)
            elif isinstance(n, ast.Import):
                out |= {a.name for a in n.names}
        return out

    assert not imports("config/settings.py") & {"fiftyone_cass.models.segmenter", "fiftyone_cass.models"}
    assert "fiftyone_cass.config.settings" in imports("models/segmenter.py")  # one direction only
    # the model layer carries no wording of the App's form
    for path in PACKAGE.glob("models/*.py"):
        text = path.read_text()
        assert "“" not in text and "the form's" not in text and "wording" not in text, path


def test_one_settings_object_is_handed_down_unchanged(fo_dataset, images, monkeypatch):
    """apply builds the settings once; CassModel and the Segmenter receive that very object."""
    import fiftyone_cass.config.settings as settings_mod
    from fiftyone_cass.fo.apply import AutoLabelRun

    built = []
    real = settings_mod.build_settings

    def counting(cls, values, what="option"):
        built.append(cls)
        return real(cls, values, what)

    monkeypatch.setattr(settings_mod, "build_settings", counting)  # (settings_for builds through it)
    from fiftyone_cass.fo import model as model_mod

    model_mod.clear_segmenter_cache()
    ds = add_samples(fo_dataset("handed"), images[:1])
    run = AutoLabelRun(ds, CLASSES, masks="database", **OPTS)
    assert built == [LabelSettings]  # checked once, where the request entered
    assert run.segmenter.settings is run.run_settings and run.model.config.device == "cpu"


# ------------------------------------------------------------------------------------------------
# item 4 (+ issue 21): the form from the declarations
# ------------------------------------------------------------------------------------------------
def test_the_form_inputs_come_from_the_declarations(fo_dataset, images):
    ds = add_samples(fo_dataset("formdecl"), images[:1])
    ds.add_sample_field("sam", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    form = _form(ds, pamr_steps=10, regions_field="sam")  # the inputs shown_with these too
    overridden = {"classes", "backbone"}  # the class box's help says how lines work; test backbones
    with_input = {n: f for n, f in setting_fields(SegmenterOptions).items() if f.metadata.get("group")}
    assert set(with_input) == {"pamr_steps", "pamr_dilations", "pamr_guide"}
    for name, f in {**setting_fields(LabelSettings), **with_input}.items():
        meta = f.metadata
        if meta.get("form") is False or name in ("preset", "gt_field", "skip_existing", "overwrite"):
            continue
        assert name in form, name
        view = form[name]["view"]
        assert view.get("label") == meta["label"], name
        if name not in overridden:
            assert view.get("description") == meta["help"], name
        if meta.get("min") is not None:
            assert form[name]["type"].get("min") == meta["min"] and form[name]["type"].get("max") == meta["max"], name
    assert form["classes"]["view"].get("multiline") is True  # a list of lines: a text area
    assert [c["value"] for c in form["masks"]["view"]["choices"]] == ["auto", "disk", "database"]
    assert [c["value"] for c in form["precision"]["view"]["choices"]] == ["fp32", "fp16", "bf16"]
    assert [form[k]["view"]["label"] for k in form if k.startswith("section_")] == ["Vocabulary", "Output", "Model",
                                                                                   "Refinement"]
    # the other sources' inputs, from their declarations too
    assert form_gt_label(ds) == LabelSettings.__dataclass_fields__["gt_field"].metadata["label"]
    preset = _form(ds, class_source="preset")["preset"]
    assert "voc21" in [c["value"] for c in preset["view"]["choices"]]


def form_gt_label(ds):
    import numpy as np

    ds.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    ds.set_values("ground_truth", [fo.Segmentation(mask=np.zeros((2, 2), np.uint8))] * len(ds))
    ds.mask_targets = {"ground_truth": {0: "background", 1: "dog"}}
    ds.save()
    return _form(ds, class_source="gt_field")["gt_field"]["view"]["label"]


def test_a_class_list_of_lines_keeps_each_line_as_one_class_with_its_synonyms(fo_dataset, images):
    ds = add_samples(fo_dataset("multiline"), images[:2])
    op = foo.get_operator(AUTO)
    text = "person\nanimal, cat, dog\nsky\nvehicle, car, motorcycle\n"
    res = op(ds, classes=text, label_field="lines", **OP_KW).result
    assert res["num_labeled"] == 2
    assert ds.mask_targets["lines"] == {0: "background", 1: "person", 2: "animal", 3: "sky", 4: "vehicle"}
    cfg = ds.get_run_info("cass_lines").config
    assert cfg.settings["class_lines"][1:] == ["person", "animal, cat, dog", "sky", "vehicle, car, motorcycle"]
    # one line: comma-separated classes; a Python list of one line: one class with synonyms
    op(ds, classes="dog, cat", label_field="one_line", **OP_KW)
    assert ds.mask_targets["one_line"] == {0: "background", 1: "dog", 2: "cat"}
    op(ds, classes=["person, people"], label_field="one_entry", **OP_KW)
    assert ds.mask_targets["one_entry"] == {0: "background", 1: "person"}


@pytest.mark.parametrize("text,expected", [
    ("dog, Dog, grass", "duplicate class name 'Dog'"),
    (" , ,", "the vocabulary is empty"),
    ("dog\ncat\ndog", "duplicate class name 'dog'"),
    ("background, cat", "'background' is label 0"),
])
def test_vocabulary_errors_are_invalid_inputs_before_execute(fo_dataset, images, text, expected):
    ds = add_samples(fo_dataset("vocab-form"), images[:1])
    form = _form(ds, classes=text, label_field="mine")
    assert form["classes"].get("invalid") is True, form["classes"]
    msg = form["classes"]["error_message"]
    assert msg.startswith("“Class names”: ") and expected in msg, msg
    assert form["label_field"].get("invalid") is not True  # the other inputs stay as they are
    assert _form(ds, classes="dog, cat")["classes"].get("invalid") is not True


def test_a_label_field_that_is_not_a_segmentation_field_is_an_invalid_input(fo_dataset, images):
    ds = add_samples(fo_dataset("notseg"), images[:1])
    ds.add_sample_field("cass_presence", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications)
    ds.add_sample_field("notes", fo.StringField)
    for field, kind in (("cass_presence", "Classifications"), ("notes", "StringField")):
        form = _form(ds, label_field=field)
        assert form["label_field"].get("invalid") is True, field
        msg = form["label_field"]["error_message"]
        assert f"“Label field” '{field}' exists and holds {kind}, not Segmentation labels" in msg, msg
        assert "field_exists" not in form and "overwrite" not in form
