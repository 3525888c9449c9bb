"""What the App user sees when an operator fails (no browser: the App's own endpoints' code paths).

* auto_label, run from the App, streams progress as a generator. FiftyOne drops an exception raised
  inside a streamed generator (the App shows nothing), so every error, raised before or during the
  stream, must end the stream with an error notification and an error summary in the form's words.
* evaluate_iou is all-or-nothing: a failed run leaves no evaluation record and no fields, and an
  overwrite that fails keeps the old evaluation.
* missing weights fail within seconds with the form's checkpoint fields.
"""

import asyncio
import json
import socket
import time

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState, execute_or_delegate_operator

from _label_helpers import CLASSES, OPTS, add_samples, make_images
from fiftyone_cass.app import support as app_support
from fiftyone_cass.fo.apply import AutoLabelRun, apply

AUTO = "@fiftyone-cass/cass/auto_label"
EVALUATE = "@fiftyone-cass/cass/evaluate_iou"
SEG_OPTIONS = {k: v for k, v in OPTS.items() if k not in ("backbone", "device")}
FORM = dict(class_source="classes", classes="dog, frisbee, cat", label_field="cass", backbone="tiny",
            device="cpu", batch_size=2, masks="database", options=json.dumps(SEG_OPTIONS))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 4)


def _app_run(ds, uri, params):
    """Runs an operator as the App does (``/operators/execute/generator`` for generators) and
    returns (ExecutionResult, [messages as the App receives them])."""
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params)

    async def run():
        return await execute_or_delegate_operator(uri, request)

    result = asyncio.run(run())
    messages = [m.body.to_json() for m in result.result] if result.is_generator else []
    return result, messages


def _errors(messages):
    return [m["params"]["message"] for m in messages
            if m["operator_uri"] == "notify" and m["params"].get("variant") == "error"]


def _shown(messages):
    shown = [m["params"] for m in messages if m["operator_uri"] == "show_output"]
    assert len(shown) == 1
    return shown[0]


def test_error_raised_during_the_stream_reaches_the_user(fo_dataset, images):
    ds = add_samples(fo_dataset("midstream"), images)
    apply(ds, CLASSES, masks="database", batch_size=2, **OPTS)
    before = {s.id: s.cass.mask.copy() for s in ds}

    # other settings on a labelled field: raised when the run plans, after the stream started
    result, messages = _app_run(ds, AUTO, dict(FORM, classes="dog, frisbee"))
    assert result.error is None and result.is_generator
    assert messages[0]["operator_uri"] == "set_progress"  # the stream had started
    errors = _errors(messages)
    assert len(errors) == 1
    msg = errors[0]
    assert "already holds labels of other settings" in msg
    assert "“Overwrite existing labels”" in msg and "“Skip samples that already have labels”" in msg
    assert "overwrite=True" not in msg and "Traceback" not in msg and len(msg) < 600
    shown = _shown(messages)
    assert shown["results"] == {"error": msg.removeprefix("Auto-labelling failed: ")}
    assert "error_notice" in shown["outputs"]["type"]["properties"]
    for s in ds:  # nothing was rewritten
        np.testing.assert_array_equal(s.cass.mask, before[s.id])


def test_unexpected_error_after_some_batches_is_shown_and_names_the_log(fo_dataset, images, monkeypatch):
    ds = add_samples(fo_dataset("crash"), images)
    real = AutoLabelRun.iter_progress

    def crashing(self):
        for i, step in enumerate(real(self)):
            yield step
            if i == 1:
                raise RuntimeError("disk on fire")

    monkeypatch.setattr(AutoLabelRun, "iter_progress", crashing)
    _, messages = _app_run(ds, AUTO, FORM)
    progress = [m["params"]["progress"] for m in messages if m["operator_uri"] == "set_progress"]
    assert progress[:3] == [0.0, 0.0, 0.5]  # loading, start, first batch
    (msg,) = _errors(messages)
    assert "RuntimeError: disk on fire" in msg and "server log" in msg
    assert "reload_dataset" in [m["operator_uri"] for m in messages]  # the first batch landed: show it
    assert len(ds.exists("cass")) == 2


def test_error_before_the_stream_is_shown_in_the_forms_words(fo_dataset, images):
    ds = add_samples(fo_dataset("early"), images[:1])
    # a value outside the setting's declaration: the form refuses it (the input is marked invalid
    # with this message, and FiftyOne's validation stops the run before it starts)
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError) as err:
        _app_run(ds, AUTO, dict(FORM, presence_field="bad name"))
    assert "Path: presence_field" in str(err.value)
    assert "“Presence score field” 'bad name' is not allowed: a plain field name or none" in str(err.value)
    with pytest.raises(ExecutionError) as err:
        _app_run(ds, AUTO, dict(FORM, batch_size=0))
    assert "Path: batch_size" in str(err.value) and "“Batch size” 0 is not allowed" in str(err.value)
    with pytest.raises(ExecutionError) as err:  # the JSON input is checked in the form too
        _app_run(ds, AUTO, dict(FORM, options="{not json"))
    assert "Path: options" in str(err.value) and "options must be a JSON object" in str(err.value)
    assert not ds.has_sample_field("cass")


def test_resolve_output_shows_the_error_not_an_empty_summary(fo_dataset, images):
    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    ds = add_samples(fo_dataset("outputs"), images[:1])

    def outputs(results):
        request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=FORM, target="outputs",
                       results=results)
        prop = asyncio.run(resolve_type(OperatorRegistry(), AUTO, request))
        return None if prop is None else prop.to_json()["type"]["properties"]

    assert outputs({}) is None  # the streamed run shows its own summary
    assert "error_notice" in outputs({"error": "boom"})
    assert "num_labeled" in outputs({"num_labeled": 1})


def test_delegated_failure_is_recorded_in_the_forms_words(fo_dataset, images):
    ds = add_samples(fo_dataset("delegated_fail"), images[:2])
    apply(ds, CLASSES, masks="database", batch_size=2, **OPTS)
    op = foo.get_operator(AUTO)
    queued = op(ds, classes=["dog"], delegate=True, backbone="tiny", device="cpu", options=SEG_OPTIONS,
                masks="database")
    svc = DelegatedOperationService()
    svc.execute_queued_operations(operator=AUTO, dataset_name=ds.name)
    doc = svc.get(queued.result["id"])
    assert doc.run_state == ExecutionRunState.FAILED
    assert "“Overwrite existing labels”" in doc.result.error


# ------------------------------------------------------------------------------------------------
# weights: fail fast, with the form's checkpoint fields
# ------------------------------------------------------------------------------------------------
def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_weights_fail_fast_with_the_forms_fields(fo_dataset, images, monkeypatch, tmp_path):
    # no offline flag: the hub "exists" but cannot be reached (as on a machine without internet)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                "FIFTYONE_CASS_CLIP_CHECKPOINT", "FIFTYONE_CASS_DINO_CHECKPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    ds = add_samples(fo_dataset("offline"), images[:1])
    t0 = time.monotonic()
    result, messages = _app_run(ds, AUTO, dict(FORM, backbone="openai", options=None))
    elapsed = time.monotonic() - t0
    assert elapsed < 20, elapsed  # not ~50 s of hub retries
    (msg,) = _errors(messages)
    assert "weights of the 'openai' backbone are missing" in msg
    assert "cannot be reached" in msg
    assert "“CLIP checkpoint file”" in msg and "“DINO checkpoint file”" in msg
    assert "clip_checkpoint" not in msg and "Traceback" not in msg and "ConnectError" not in msg
    assert not ds.has_sample_field("cass")


def test_missing_checkpoint_file_names_the_field(fo_dataset, images, tmp_path):
    ds = add_samples(fo_dataset("ckpt"), images[:1])
    _, messages = _app_run(ds, AUTO, dict(FORM, backbone="openai", clip_checkpoint=str(tmp_path / "nope.safetensors")))
    (msg,) = _errors(messages)
    assert "CLIP checkpoint file not found" in msg and "“CLIP checkpoint file”" in msg


def test_form_message_maps_keywords_to_labels():
    from fiftyone_cass.errors import InvalidInputError, kw, use

    err = InvalidInputError(f"{use('resize', 'nearest')} to resize; or {use('skip_missing', True)}; {kw('pred_field')} 'x'")
    m = app_support.form_message(err, app_support.EVALUATE_FIELDS)
    assert m == "tick “Resize mismatched predictions” to resize; or tick “Skip samples without predictions”; “Predictions” 'x'"
    assert str(err) == "pass resize='nearest' to resize; or pass skip_missing=True; pred_field 'x'"  # Python's words
    # text that merely looks like a keyword is never reworded
    m = app_support.form_message(InvalidInputError("pass skip_missing=True"), app_support.EVALUATE_FIELDS)
    assert m == "pass skip_missing=True"
    m = app_support.form_message(KeyError("x"), app_support.AUTO_LABEL_FIELDS)
    assert m.startswith("KeyError: ") and "server log" in m


# ------------------------------------------------------------------------------------------------
# evaluation: all or nothing
# ------------------------------------------------------------------------------------------------
def _png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture
def eval_dataset(fo_dataset, tmp_path):
    ds = fo_dataset("evalfail")
    g = np.array([[0, 1], [1, 2]], np.uint8)
    samples = []
    for i in range(3):
        # the third prediction has the wrong size: a run without resizing fails on it
        p = g if i < 2 else np.zeros((3, 3), np.uint8)
        samples.append(fo.Sample(filepath=_png(tmp_path / f"i{i}.png", np.zeros((2, 2, 3), np.uint8)),
                                 ground_truth=fo.Segmentation(mask=g), predictions=fo.Segmentation(mask=p)))
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": {0: "a", 1: "b", 2: "c"}}
    ds.save()
    return ds


def _eval(ds, **params):
    base = dict(pred_field="predictions", gt_field="ground_truth")
    if isinstance(ds, fo.Dataset):
        ctx = {"dataset": ds, "params": dict(base, target="DATASET", **params)}
    else:
        ctx = {"view": ds, "params": dict(base, target="CURRENT_VIEW", **params)}
    return foo.execute_operator(EVALUATE, ctx=ctx).result


def test_failed_evaluation_leaves_nothing_and_keeps_what_existed(eval_dataset):
    ds = eval_dataset
    from fiftyone_cass.fo.evaluation import evaluate_iou

    good = evaluate_iou(ds.limit(2), "predictions", eval_key="good")
    good_values = ds.values("good_iou")
    fields = set(ds.get_field_schema())

    out = _eval(ds, eval_key="bad")
    assert "prediction mask is 3x3" in out["error"] and "“Resize mismatched predictions”" in out["error"]
    ds.reload()
    assert ds.list_evaluations() == ["good"]
    assert set(ds.get_field_schema()) == fields  # no bad_iou / bad_pixel_acc
    assert ds.values("good_iou") == good_values
    assert ds.load_evaluation_results("good").mean_iou() == pytest.approx(good.mean_iou())

    # a failing overwrite keeps the old evaluation and its fields untouched
    out = _eval(ds, eval_key="good", overwrite=True)
    assert "error" in out
    ds.reload()
    assert ds.list_evaluations() == ["good"] and set(ds.get_field_schema()) == fields
    assert ds.values("good_iou") == good_values
    # an existing key without overwrite: the form's words
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match="tick “Overwrite the existing evaluation”"):  # the form says it
        _eval(ds.limit(2), eval_key="good")

    # a successful overwrite replaces it (resizing now), with readable names and percent units
    out = _eval(ds, eval_key="good", overwrite=True, resize_nearest=True)
    assert "error" not in out and 0 <= out["mIoU"] <= 100
    ds.reload()
    assert ds.list_evaluations() == ["good"] and len(ds.exists("good_iou")) == 3
    assert ds.load_evaluation_results("good").mean_iou() * 100 == pytest.approx(out["mIoU"], abs=0.01)


def test_library_call_is_all_or_nothing_too(eval_dataset):
    from fiftyone_cass.errors import InvalidInputError
    from fiftyone_cass.fo.evaluation import evaluate_iou

    with pytest.raises(InvalidInputError, match="prediction mask is 3x3"):
        evaluate_iou(eval_dataset, "predictions", eval_key="lib")
    assert eval_dataset.list_evaluations() == []
    assert not any(f.startswith("lib_") for f in eval_dataset.get_field_schema())


def test_default_eval_key_gives_readable_field_names(eval_dataset):
    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    ds = eval_dataset
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), target="inputs",
                   params=dict(pred_field="predictions", gt_field="ground_truth"))
    form = asyncio.run(resolve_type(OperatorRegistry(), EVALUATE, request)).to_json()["type"]["properties"]
    key = form["eval_key"]["default"]
    out = _eval(eval_dataset, resize_nearest=True, eval_key=key)
    assert out["eval_key"] == "eval_predictions"
    assert eval_dataset.has_sample_field("eval_predictions_iou")


def test_python_callers_get_the_keyword_names(fo_dataset, images, tmp_path):
    ds = add_samples(fo_dataset("ckpt_py"), images[:1])
    with pytest.raises(Exception, match=r"CLIP checkpoint file not found: .*Fix clip_checkpoint \("):
        foo.get_operator(AUTO)(ds, classes=["dog"], backbone="openai", clip_checkpoint=str(tmp_path / "no.pt"))
    assert not ds.has_sample_field("cass")
