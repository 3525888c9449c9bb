"""The auto_label / retag_presence operators through FiftyOne's own plugin loader and executor, on
real datasets in a real MongoDB: immediate (Python and App-style streaming) and delegated runs."""

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState, execute_or_delegate_operator

from _label_helpers import (BATCH, CLASSES, OPTS, Reference, add_samples, all_scores, make_bad_files, make_images,
                            read_mask)
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.apply import CONFIG_ATTR, apply

PLUGIN = "@fiftyone-cass/cass"
AUTO = f"{PLUGIN}/auto_label"
RETAG = f"{PLUGIN}/retag_presence"
# Segmenter options for the tiny test model (JSON-able), passed through the operator's "options"
SEG_OPTIONS = {k: v for k, v in OPTS.items() if k not in ("backbone", "device")}
OP_KW = dict(backbone="tiny", device="cpu", batch_size=BATCH, options=SEG_OPTIONS, masks="database")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 5)


@pytest.fixture(scope="module")
def reference():
    return Reference()


def test_plugin_is_discovered_by_fiftyone():
    plugin = fop.get_plugin(PLUGIN)
    assert {"auto_label", "retag_presence", "evaluate_iou", "mean_iou"} <= set(plugin.operators)
    assert Path(plugin.directory).resolve() == Path(__file__).resolve().parents[1]
    op = foo.get_operator(AUTO)
    assert op.uri == AUTO and op.config.allow_delegated_execution and op.config.allow_immediate_execution
    assert foo.get_operator(RETAG).config.name == "retag_presence"
    assert AUTO in {o.uri for o in foo.list_operators()}
    # the CLI lists it as well (a fresh process with the same FIFTYONE_PLUGINS_DIR)
    exe = shutil.which("fiftyone", path=os.path.dirname(sys.executable))
    cmd = [exe, "plugins", "list"] if exe else [sys.executable, "-m", "fiftyone.core.cli", "plugins", "list"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert PLUGIN in out.stdout


def test_immediate_run_on_selected_samples_equals_the_library(fo_dataset, images, reference, tmp_path):
    ds = add_samples(fo_dataset("op"), images)
    ids = ds.values("id")
    chosen = [ids[0], ids[2], ids[3]]
    op = foo.get_operator(AUTO)
    res = op(ds, classes=CLASSES, selected=chosen, label_field="auto", **OP_KW)
    summary = res.result
    assert summary["num_labeled"] == 3 and summary["num_failed"] == 0 and summary["num_target"] == 3
    assert set(ds.exists("auto").values("id")) == set(chosen)  # exactly the target samples
    assert ds.mask_targets["auto"] == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}
    refs = dict(zip(images, reference(images)))
    for s in ds.select(chosen):
        np.testing.assert_array_equal(read_mask(s.auto), refs[s.filepath].label_map)
        assert isinstance(s.auto_presence, fo.Classifications)
        assert set(all_scores(s.auto_presence)) == set(CLASSES)
        assert {t for t in s.tags if t.startswith("auto:")} == {
            f"auto:{c}" for c, v in all_scores(s.auto_presence).items() if v >= 0.1
        } == {f"auto:{c.label}" for c in s.auto_presence.classifications}
    assert not any(t.startswith("auto:") for s in ds.exclude(chosen) for t in s.tags)

    # the field now exists: other settings are refused, the same settings resume (nothing to do)
    with pytest.raises(Exception, match="overwrite=True"):
        op(ds, classes=["dog", "frisbee"], selected=chosen, label_field="auto", **OP_KW)
    again = op(ds, classes=CLASSES, label_field="auto", **OP_KW).result
    assert (again["num_already_done"], again["num_labeled"]) == (3, 2)
    skip = op(ds, classes=["dog", "frisbee"], label_field="auto", skip_existing=True, **OP_KW).result
    assert (skip["num_already_done"], skip["num_labeled"]) == (5, 0)
    # a typo is an error, not dropped; Segmenter options may also be given as keywords
    with pytest.raises(InvalidInputError, match="unknown argument.*batchsize"):
        op(ds, classes=CLASSES, label_field="auto", batchsize=2, **OP_KW)
    kw = {k: v for k, v in OP_KW.items() if k != "options"}
    same = op(ds, classes=CLASSES, label_field="auto", **kw, **SEG_OPTIONS).result  # same settings: resumes
    assert (same["num_already_done"], same["num_labeled"]) == (5, 0)

    # on-disk masks through the operator
    disk = op(ds.limit(2), classes=CLASSES, label_field="auto_disk",
              **{**OP_KW, "masks": "disk", "mask_dir": str(tmp_path / "m")}).result
    assert disk["mask_dir"] == str(tmp_path / "m") and disk["num_labeled"] == 2
    for s in ds.limit(2):
        assert os.path.isfile(s.auto_disk.mask_path) and s.auto_disk.mask_path.startswith(str(tmp_path / "m"))
        np.testing.assert_array_equal(read_mask(s.auto_disk), refs[s.filepath].label_map)


def test_app_style_immediate_run_streams_progress(fo_dataset, images):
    ds = add_samples(fo_dataset("stream"), images)
    params = dict(class_source="classes", classes="dog, frisbee, cat", label_field="cass", backbone="tiny",
                  device="cpu", batch_size=2, masks="database", options=__import__("json").dumps(SEG_OPTIONS))
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params)

    async def run():
        result = await execute_or_delegate_operator(AUTO, request)
        return result

    result = asyncio.run(run())
    assert result.error is None and result.is_generator  # what the App's generator endpoint streams
    messages = [m.body.to_json() for m in result.result]
    progress = [m["params"]["progress"] for m in messages if m["operator_uri"] == "set_progress"]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert len(progress) == 2 + 3  # model loading + start + ceil(5 / 2) batches
    uris = [m["operator_uri"] for m in messages]
    assert uris[-4:] == ["reload_dataset", "set_active_fields", "set_color_scheme", "show_output"]
    shown = messages[-1]["params"]["results"]
    assert shown["num_labeled"] == 5
    assert len(ds.exists("cass")) == 5


def test_app_run_ticks_only_its_field_and_sends_its_class_colours_to_the_running_app(fo_dataset, images):
    """Issue 21 items 2 and 8: the App server builds its colour scheme when it opens a dataset, so a
    field labelled while the App runs got pool colours; and every run ticked its field on top of
    the older ones. The run now ticks only its field and sends the stored colours to the App."""
    from fiftyone_cass.app.support import class_colors

    ds = add_samples(fo_dataset("stream_colors"), images[:2])
    apply(ds, CLASSES, label_field="older", masks="database", batch_size=2, **OPTS)
    params = dict(class_source="classes", classes="dog, cat", label_field="newer", backbone="tiny",
                  device="cpu", batch_size=2, masks="database", options=__import__("json").dumps(SEG_OPTIONS))
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params,
                   active_fields=["older", "tags", "metadata.width"])
    result = asyncio.run(execute_or_delegate_operator(AUTO, request))
    assert result.error is None
    messages = {m.body.to_json()["operator_uri"]: m.body.to_json()["params"] for m in result.result}
    # older label fields unticked, non-label ticks kept, the new field ticked
    assert messages["set_active_fields"]["fields"] == ["tags", "metadata.width", "newer"]
    scheme = messages["set_color_scheme"]
    by_path = {f["path"]: f for f in scheme["fields"]}
    assert by_path["newer"]["maskTargetsColors"] == class_colors(ds.mask_targets["newer"])
    assert by_path["older"]["maskTargetsColors"] == class_colors(ds.mask_targets["older"])
    assert scheme["color_by"] == "value"
    assert "only ticked label field" in messages["show_output"]["results"]["shown"]
    ds.reload()
    assert ds.app_config.active_fields.paths == ["newer"]


def test_show_class_colors_sends_stored_colours_and_updates_the_app_server_state(fo_dataset, images):
    """For an App opened before a CLI/delegated run: the operator sends the stored colours, and in
    the App server's process its session state takes them (page reloads draw them too)."""
    import fiftyone.core.state as fos
    import fiftyone.server.events.state as server_state

    from fiftyone_cass.app.support import class_colors

    ds = add_samples(fo_dataset("show_colors"), images[:2])
    old_state = server_state._state
    state = fos.StateDescription(dataset=ds)
    state.color_scheme = fos.build_color_scheme(None, ds)  # as the server built it: before the field
    server_state._state = state
    try:
        apply(ds, CLASSES, label_field="cli_field", masks="database", batch_size=2, **OPTS)  # "the CLI"
        assert not state.color_scheme.fields
        request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params={})
        result = asyncio.run(execute_or_delegate_operator(f"{PLUGIN}/show_class_colors", request))
        assert result.error is None and result.result == {"fields": ["cli_field"]}
    finally:
        server_state._state = old_state
    want = class_colors(ds.mask_targets["cli_field"])
    assert {f["path"]: f["maskTargetsColors"] for f in state.color_scheme.fields}["cli_field"] == want


def test_delegated_run_queues_executes_and_matches_immediate(fo_dataset, images, bad_files):
    paths = images[:3] + [bad_files["garbage"]]
    ds_now = add_samples(fo_dataset("now"), paths)
    ds_later = add_samples(fo_dataset("later"), paths)
    op = foo.get_operator(AUTO)

    now = op(ds_now, classes=CLASSES, **OP_KW).result
    queued = op(ds_later, classes=CLASSES, delegate=True, **OP_KW)
    assert queued.delegated
    op_id = queued.result["id"]
    svc = DelegatedOperationService()
    doc = svc.get(op_id)
    assert doc.run_state == ExecutionRunState.QUEUED and doc.operator == AUTO
    assert not ds_later.has_sample_field("cass")  # nothing ran yet

    svc.execute_queued_operations(operator=AUTO, dataset_name=ds_later.name)
    doc = svc.get(op_id)
    assert doc.run_state == ExecutionRunState.COMPLETED, doc.result and doc.result.error
    later = doc.result.result
    assert doc.status.progress == 1.0 and "Labeled" in doc.status.label  # ctx.set_progress was used
    for key in ("num_labeled", "num_failed", "num_target", "config_id", "mask_targets", "failure_reasons"):
        assert later[key] == now[key], key
    assert later["num_failed"] == 1 and later["num_labeled"] == 3

    ds_later.reload()
    a = {s.filepath: s for s in ds_now}
    for s in ds_later:
        t = a[s.filepath]
        assert s.tags == t.tags and s.cass_error == t.cass_error
        if s.cass is None:
            assert t.cass is None and s.filepath == bad_files["garbage"]
            continue
        np.testing.assert_array_equal(read_mask(s.cass), read_mask(t.cass))
        assert s.cass[CONFIG_ATTR] == t.cass[CONFIG_ATTR]
        assert [(c.label, c.confidence) for c in s.cass_presence.classifications] == [
            (c.label, c.confidence) for c in t.cass_presence.classifications
        ]
    assert ds_later.mask_targets["cass"] == ds_now.mask_targets["cass"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


def test_gt_field_through_the_operator(fo_dataset, images, reference):
    ds = add_samples(fo_dataset("gtop"), images[:2])
    ds.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    ds.mask_targets = {"ground_truth": {0: "background", 4: "cat", 9: "dog"}}
    ds.save()
    op = foo.get_operator(AUTO)
    r = op(ds, gt_field="ground_truth", label_field="pred", **OP_KW).result
    assert r["num_labeled"] == 2
    assert ds.mask_targets["pred"] == {0: "background", 4: "cat", 9: "dog"}
    lut = np.array([0, 4, 9])
    for s, ref in zip(ds, reference(images[:2], classes=["cat", "dog"])):
        np.testing.assert_array_equal(read_mask(s.pred), lut[ref.label_map])


def test_retag_operator_uses_stored_scores(fo_dataset, images):
    ds = add_samples(fo_dataset("retagop"), images[:3])
    apply(ds, CLASSES, masks="database", presence_threshold=0.0, batch_size=BATCH, **OPTS)
    assert all(len([t for t in s.tags if t.startswith("cass:")]) == 3 for s in ds)
    top = {s.id: max(s.cass_presence.classifications, key=lambda c: c.confidence) for s in ds}
    thr = min(c.confidence for c in top.values())
    res = foo.get_operator(RETAG)(ds, presence_field="cass_presence", threshold=thr).result
    assert res["samples_changed"] >= 1
    for s in ds:
        expected = {f"cass:{c}" for c, v in all_scores(s.cass_presence).items() if v >= thr}
        assert {t for t in s.tags if t.startswith("cass:")} == expected
        assert f"cass:{top[s.id].label}" in s.tags
    assert sum(res["tag_counts"].values()) == sum(
        len([v for v in all_scores(s.cass_presence).values() if v >= thr]) for s in ds
    )


def test_retag_operator_checks_the_threshold_and_uses_the_recorded_prefix(fo_dataset, images):
    from fiftyone.operators.executor import ExecutionError

    ds = add_samples(fo_dataset("retagchk"), images[:2])
    apply(ds, CLASSES, label_field="lf", presence_field="pp", tag_prefix="tp", masks="database",
          presence_threshold=0.0, batch_size=BATCH, **OPTS)
    tags = {s.id: sorted(s.tags) for s in ds}
    assert all({f"tp:{c}" for c in CLASSES} <= set(t) for t in tags.values())
    op = foo.get_operator(RETAG)
    for bad in [float("nan"), -1, 7]:
        with pytest.raises(ExecutionError, match=r"“Threshold” .* is not allowed: a finite number from 0 to 1"):
            op(ds, presence_field="pp", threshold=bad)
    assert {s.id: sorted(s.tags) for s in ds} == tags
    # the form marks the input invalid, in its words
    form = _form(ds, RETAG, {"presence_field": "pp", "threshold": -1})
    assert form["threshold"]["invalid"] is True
    assert "“Threshold” -1 is not allowed: a finite number from 0 to 1" in form["threshold"]["error_message"]
    # the form and the operator default to the prefix apply used
    assert _form(ds, RETAG, {"presence_field": "pp"})["tag_prefix"]["default"] == "tp"
    # ... and to the field's current threshold (issue 21 item 9: it was always 0.1)
    assert _form(ds, RETAG, {"presence_field": "pp"})["threshold"]["default"] == 0.0
    res = op(ds, presence_field="pp", threshold=1.0).result
    assert res["samples_changed"] == 2
    assert _form(ds, RETAG, {"presence_field": "pp"})["threshold"]["default"] == 1.0  # retag's threshold now
    assert not [t for s in ds for t in s.tags if t.startswith(("tp:", "pp:", "lf:"))]


def test_preset_through_the_operator_names_background(fo_dataset, images):
    ds = add_samples(fo_dataset("preset"), images[:1])
    r = foo.get_operator(AUTO)(ds, preset="voc21", presence_threshold=0.0, **OP_KW).result
    assert r["num_labeled"] == 1
    targets = ds.mask_targets["cass"]
    assert len(targets) == 21 and targets[0] == "background" and targets[1] == "aeroplane"
    s = ds.first()
    assert set(np.unique(read_mask(s.cass))) <= set(targets)
    labels = set(all_scores(s.cass_presence))
    assert labels == set(targets.values())  # the background words have a presence score too
    # threshold 0: every class is a visible label, but background never is
    assert {c.label for c in s.cass_presence.classifications} == set(targets.values()) - {"background"}
    tags = {t for t in s.tags if t.startswith("cass:")}
    assert len(tags) == 20 and "cass:background" not in tags  # ... but background is never a tag


def test_synonyms_in_a_class_list_stay_one_class(fo_dataset, images):
    ds = add_samples(fo_dataset("syn"), images[:1])
    r = foo.get_operator(AUTO)(ds, classes=["person, people"], **OP_KW).result
    assert r["mask_targets"] == {"0": "background", "1": "person"}


def _form(ds, uri, params, target="inputs", results=None):
    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params, target=target, results=results)
    prop = asyncio.run(resolve_type(OperatorRegistry(), uri, request))
    assert not hasattr(prop, "error") or prop.error is None, getattr(prop, "error", None)
    return prop.to_json()["type"]["properties"]


def test_forms_the_app_renders(fo_dataset, images):
    from fiftyone.operators.executor import resolve_execution_options
    from fiftyone.operators.registry import OperatorRegistry

    ds = add_samples(fo_dataset("form"), images[:2])
    empty = _form(ds, AUTO, {})
    assert {"target", "class_source", "classes", "label_field", "method", "backbone", "device", "batch_size",
            "masks", "mask_dir", "presence_field", "tag_prefix", "presence_threshold"} <= set(empty)
    assert "overwrite" not in empty and "skip_existing" not in empty
    assert "no_gt" in _form(ds, AUTO, {"class_source": "gt_field"})  # no Segmentation field yet
    assert "preset" in _form(ds, AUTO, {"class_source": "preset"})
    assert "mask_dir" not in _form(ds, AUTO, {"masks": "database"})

    apply(ds, CLASSES, masks="database", batch_size=BATCH, **OPTS)
    existing = _form(ds, AUTO, {"label_field": "cass"})
    assert "overwrite" in existing and "skip_existing" in existing
    gt = _form(ds, AUTO, {"class_source": "gt_field"})
    assert "cass" in [c["value"] for c in gt["gt_field"]["view"]["choices"]]  # its mask_targets have int ids
    retag_form = _form(ds, RETAG, {})
    assert retag_form["presence_field"]["default"] == "cass_presence"
    assert retag_form["tag_prefix"]["default"] == "cass"
    outputs = _form(ds, AUTO, {}, target="outputs", results={"num_labeled": 2})
    assert {"num_labeled", "num_failed", "failure_reasons"} <= set(outputs)

    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params={})
    opts = asyncio.run(resolve_execution_options(OperatorRegistry(), AUTO, request))
    assert opts.allow_immediate_execution and opts.allow_delegated_execution
    assert opts.default_choice_to_delegated is False  # small target: immediate by default


def test_concept_heatmap_form_has_the_model_inputs_and_runs_from_them(fo_dataset, images):
    """The concept_heatmap form takes the model from the auto_label form's Model section (the same
    declarations): a run from the App's params (the tiny backbone, the JSON options) writes the
    selected samples' heatmaps only."""
    from fiftyone_cass.app.review_operators import CONCEPT_URI

    ds = add_samples(fo_dataset("conceptform"), images[:3])
    form = _form(ds, CONCEPT_URI, {})
    assert {"prompt", "heatmap_field", "section_model", "backbone", "device", "batch_size", "options"} <= set(form)
    assert form["backbone"]["default"] == "openai"
    bad = _form(ds, CONCEPT_URI, {"options": "{not json"})["options"]
    assert bad["invalid"] is True and "options must be a JSON object" in bad["error_message"]
    chosen = ds.values("id")[1:]
    params = dict(prompt="a dog", heatmap_field="dog_map", backbone="tiny", device="cpu", batch_size=2,
                  options=__import__("json").dumps(SEG_OPTIONS), target="SELECTED_SAMPLES")
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params, selected=chosen)
    result = asyncio.run(execute_or_delegate_operator(f"{PLUGIN}/concept_heatmap", request))
    assert result.error is None, result.error
    assert result.result["num_computed"] == 2
    assert set(ds.exists("dog_map").values("id")) == set(chosen)
    from PIL import Image

    s = ds[chosen[0]]
    with Image.open(s.filepath) as im:
        assert s.dog_map.map.shape == (im.size[1], im.size[0])
    # another prompt into the same field: refused in the form's words, nothing replaced
    again = dict(request, params=dict(params, prompt="a cat"))
    refused = asyncio.run(execute_or_delegate_operator(f"{PLUGIN}/concept_heatmap", again))
    assert "tick “Replace heatmaps of another prompt” to replace them" in str(refused.error), refused.error
    assert result.result["num_computed"] == 2 and ds.count("dog_map") == 2
