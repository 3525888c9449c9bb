"""One settings schema (fiftyone_cass/config/settings.py): the command line's flags, the ``auto_label``
form's inputs and the keywords of ``Segmenter``/``CassModel``/``apply`` are generated from one
declaration per setting, and one checker turns a bad value into an error naming the setting, the
value and what is allowed -- exit status 2 on the command line, an invalid input in the App's form,
``InvalidInputError`` in Python -- before anything is written. Real MongoDB, tiny backbone."""

from __future__ import annotations

import asyncio

import pytest

import fiftyone as fo

from _label_helpers import BATCH, CLASSES, OPTS, add_samples, make_images
from fiftyone_cass import CassModel, Segmenter, cli
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.apply import apply
from fiftyone_cass.config.schema import setting_fields
from fiftyone_cass.config.settings import EngineSettings, LabelSettings, ModelSettings, label_setting_names
from test_cli import run_cli

AUTO = "@fiftyone-cass/cass/auto_label"
FIELDS = setting_fields(LabelSettings)
TINY_CLI = ["--backbone", "tiny", "--device", "cpu", "-o", "mode=whole", "-o", "short_side=64",
            "-o", "long_side=128", "-o", "bg_rule=none"]

#: (setting, a bad value as typed, what the message must say is allowed)
BAD = [
    ("batch_size", "0", "an integer from 1 to 4096"),
    ("presence_threshold", "2", "a finite number from 0 to 1"),
    ("precision", "fp8", "one of 'fp32', 'fp16', 'bf16'"),
    ("masks", "s3", "auto, disk or database"),
    ("device", "gpu7", "auto, cpu, cuda or cuda:N"),
    ("label_field", "a b", "a plain field name, not a reserved one"),
    ("method", "clip", "one of 'cass+cdam', 'cass'"),
    ("shard", "3/2", "i/N with 0 <= i < N"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 2)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_each_layer_adds_its_own_settings_once():
    engine, model, label = (set(setting_fields(c)) for c in (EngineSettings, ModelSettings, LabelSettings))
    assert engine < model < label and model - engine == {"presence_threshold", "regions_field", "region_vote", "region_min_area"}
    assert set(label_setting_names()) == label
    # every declaration carries what the three entry points show: a help text and a form label
    assert all(f.metadata.get("help") and f.metadata.get("label") for f in FIELDS.values())


def _label_parser():
    import argparse

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["label"]


def test_command_line_flags_are_generated_from_the_declarations():
    label = _label_parser()
    flags = label._option_string_actions
    for name, f in FIELDS.items():
        if f.metadata.get("flag") is False:
            continue
        action = flags[_flag(name)]
        assert action.dest == name and action.default == f.default, name
        if f.metadata.get("off_flag"):  # --no-tags and friends set the same setting to None
            off = flags[f.metadata["off_flag"]]
            assert off.dest == name and off.const is None
    text = label.format_help()
    assert FIELDS["batch_size"].metadata["help"] in " ".join(text.split())


@pytest.mark.parametrize("name,value,allowed", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_refused_alike_by_the_cli_python_and_the_form(name, value, allowed, fo_dataset, images,
                                                                      tmp_path, capsys):
    # the command line: a usage error (exit 2) naming the flag, the value and what is allowed
    rc, out = run_cli("label", images[0].rsplit("/", 1)[0], "--dataset", f"never-{name}", "--classes", "cat",
                      *TINY_CLI, _flag(name), value, capsys=capsys)
    assert rc == 2, out.err
    assert f"argument {_flag(name)}: {value!r} is not allowed: {allowed}" in out.err, out.err
    assert "Traceback" not in out.err and not fo.dataset_exists(f"never-{name}")

    # Python: InvalidInputError naming the keyword, before anything is written
    ds = add_samples(fo_dataset(f"bad-{name}"), images)
    with pytest.raises(InvalidInputError) as err:
        apply(ds, CLASSES, **{**OPTS, "batch_size": BATCH, name: value})
    assert f"option {name}={value!r} is not allowed: {allowed}" in str(err.value)
    assert ds.list_runs() == [] and "cass" not in ds.get_field_schema()
    if name in setting_fields(EngineSettings):
        with pytest.raises(InvalidInputError, match=f"option {name}="):
            Segmenter(classes="cat", **{**OPTS, name: value})
    if name in setting_fields(ModelSettings):
        with pytest.raises(InvalidInputError, match=f"option {name}="):
            CassModel(["cat"], **{**OPTS, name: value})

    # the App: the form's input is marked invalid with the message in the form's words
    if FIELDS[name].metadata.get("form") is False:
        return
    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    params = dict(target="DATASET", class_source="classes", classes="dog, cat", backbone="tiny",
                  **{name: value})
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params, target="inputs")
    form = asyncio.run(resolve_type(OperatorRegistry(), AUTO, request)).to_json()["type"]["properties"]
    view = form[name]["view"]
    label = FIELDS[name].metadata["label"]
    assert form[name].get("invalid") is True, form[name]
    message = form[name]["error_message"]
    assert f"“{label}” {value!r} is not allowed: {allowed}" in message
    assert not message.endswith(f"({FIELDS[name].metadata['help']})")  # the input shows its help already
    assert view.get("label") == label


def test_good_values_are_typed_by_the_declaration(fo_dataset, images, capsys):
    """Strings from the command line or the form become the declared types, once."""
    parser = cli.build_parser()
    args = parser.parse_args(["label", "some_dataset", "--batch-size", "2", "--presence-threshold", "0.5",
                              "--masks", "db", "--shard", "1/3", "--background", "sky, wall", "--no-tags",
                              "--device", "auto"])
    assert args.batch_size == 2 and args.presence_threshold == 0.5 and args.masks == "database"
    assert args.shard == (1, 3) and args.background == ["sky", "wall"] and args.tag_prefix is None
    assert args.device is None  # auto: the first GPU if there is one
    ds = add_samples(fo_dataset("typed"), images)
    summary = apply(ds, CLASSES, **dict(OPTS, batch_size="2", presence_threshold="0.5", masks="db"))
    assert summary.num_labeled == len(images) and ds.count("cass.mask") == len(images)


def test_a_cuda_device_without_cuda_is_a_clear_error_everywhere(fo_dataset, images, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match="device='cuda': CUDA is not available on this machine"):
        Segmenter(classes="cat", **{**OPTS, "device": "cuda"})
    ds = add_samples(fo_dataset("nocuda"), images)
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        apply(ds, CLASSES, **{**OPTS, "batch_size": BATCH, "device": "cuda:1"})
    assert "cass" not in ds.get_field_schema()
    rc, out = run_cli("label", ds.name, "--classes", "cat", *TINY_CLI[:2], "--device", "cuda", capsys=capsys)
    assert rc == 2 and "CUDA is not available" in out.err and "--device" in out.err, out.err
    assert Segmenter(classes="cat", **{**OPTS, "device": "auto"}).device.type == "cpu"


def test_a_selection_of_no_sample_is_said(fo_dataset, images, capsys):
    ds = add_samples(fo_dataset("nothing"), images)
    rc, out = run_cli("label", ds.name, "--classes", "cat", *TINY_CLI, "--tags", "no-such-tag", capsys=capsys)
    assert rc == 0 and "no sample of dataset" in out.err and "nothing to label" in out.err, out.err
    # the summary says where this run put masks, and not where a rerun that wrote none would have
    rc, out = run_cli("label", ds.name, "--classes", "cat", *TINY_CLI, "--masks", "database", capsys=capsys)
    assert rc == 0 and f"{len(images)} labelled now" in out.out and "new masks in the database" in out.out
    rc, out = run_cli("label", ds.name, "--classes", "cat", *TINY_CLI, "--masks", "disk", capsys=capsys)
    assert rc == 0 and "0 labelled now" in out.out and "no mask written" in out.out and "PNG" not in out.out
    rc, out = run_cli("label", ds.name, "--classes", "cat", *TINY_CLI, "--skip-existing", "--overwrite", capsys=capsys)
    assert rc == 2 and "--skip-existing and --overwrite exclude each other" in out.err, out.err
