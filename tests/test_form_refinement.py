"""The auto_label form's "Refinement" section (issue 20): PAMR's Segmenter options and region voting
as inputs generated from their declarations, checked with the settings' checker in the form's
words, merged with "Advanced options (JSON)" on one path (an option given in both with different
values is refused), and a run from the form gives the labels of the command line's run with the
same refinements."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionError, execute_or_delegate_operator

from _label_helpers import CLASSES, add_samples, make_images, read_mask
from fiftyone_cass.app.label_operators import auto_label_kwargs, form_options
from fiftyone_cass.config.settings import LabelSettings, build_settings
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.apply import CONFIG_ATTR
from test_cli import run_cli
from test_plugin import AUTO, SEG_OPTIONS, _form
from test_refinement_cli import _label_plain, _sam_like
from test_reliability import dataset_name  # noqa: F401 - the fixture

FORM = dict(class_source="classes", classes="dog, frisbee, cat", label_field="cass", backbone="tiny",
            device="cpu", batch_size=2, masks="database", options=json.dumps(SEG_OPTIONS))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 2)


def _with_region_fields(ds):
    """'sam' (Detections with instance masks), 'ids' (a Segmentation of region ids), 'kind' (a
    Classification: not a regions field)."""
    for s in ds:
        s["sam"] = _sam_like(40, 56, [(0, 0, 20, 28)])
        s["ids"] = fo.Segmentation(mask=np.ones((40, 56), np.uint8))
        s["kind"] = fo.Classification(label="x")
        s.save()
    return ds


def _choices(prop):
    return [c["value"] for c in prop["view"]["choices"]]


def test_refinement_section_is_generated_from_the_declarations(fo_dataset, images):
    ds = add_samples(fo_dataset("refform"), images)
    empty = _form(ds, AUTO, {})
    assert "section_refinement" in empty
    assert empty["pamr_steps"]["default"] == 0 and empty["pamr_steps"]["view"]["label"] == "PAMR steps"
    assert "10: the seeds' --pamr on" in empty["pamr_steps"]["view"]["description"]
    # PAMR's other options and the voting settings only while PAMR / a regions field is on
    for hidden in ("pamr_dilations", "pamr_guide", "region_vote", "region_min_area"):
        assert hidden not in empty, hidden
    assert _choices(empty["regions_field"]) == [""]  # no field to vote in yet: none only, and a notice
    assert "no_regions" in empty
    on = _form(ds, AUTO, {"pamr_steps": 10})
    assert on["pamr_dilations"]["default"] == "8, 16"
    assert _choices(on["pamr_guide"]) == ["processed", "original"] and on["pamr_guide"]["default"] == "processed"

    _with_region_fields(ds)
    ds.add_sample_field("cass", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    form = _form(ds, AUTO, {"label_field": "cass"})
    # Detections and Segmentation fields, not other labels, not the field being written
    assert _choices(form["regions_field"]) == ["", "ids", "sam"] and "no_regions" not in form
    assert "cass" in _choices(_form(ds, AUTO, {"label_field": "other"})["regions_field"])
    voting = _form(ds, AUTO, {"regions_field": "sam"})
    assert _choices(voting["region_vote"]) == ["majority", "mean"] and voting["region_min_area"]["default"] == 0


def test_refinement_inputs_are_checked_in_the_forms_words(fo_dataset, images):
    ds = _with_region_fields(add_samples(fo_dataset("refcheck"), images))

    def error(params, name):
        prop = _form(ds, AUTO, params)[name]
        assert prop.get("invalid") is True, (name, params)
        return prop["error_message"]

    assert "“PAMR steps” -1 is not allowed: an integer from 0 to 1000" in error({"pamr_steps": -1}, "pamr_steps")
    assert "“PAMR dilations” '0, 8' is not allowed: a non-empty list of integers from 1 to 512" in error(
        {"pamr_steps": 10, "pamr_dilations": "0, 8"}, "pamr_dilations")
    assert "“PAMR guide image” 'edges' is not allowed" in error({"pamr_steps": 10, "pamr_guide": "edges"}, "pamr_guide")
    # typed in the JSON input: named as typed there
    assert "“Advanced options (JSON)”: pamr_steps=-1 is not allowed" in error(
        {"options": json.dumps({"pamr_steps": -1})}, "options")
    assert "“Smallest region (pixels)” -1 is not allowed" in error(
        {"regions_field": "sam", "region_min_area": -1}, "region_min_area")
    assert "“Regions field” 'nope' is not a field of dataset" in error({"regions_field": "nope"}, "regions_field")
    assert "“Regions field” 'kind' holds Classification" in error({"regions_field": "kind"}, "regions_field")
    assert "“Regions field” 'sam' is the label field this run writes" in error(
        {"regions_field": "sam", "label_field": "sam"}, "regions_field")

    # the same option in its input and in the JSON: refused unless the values agree
    twice = {"pamr_steps": 10, "options": json.dumps({"pamr_steps": 5})}
    assert error(twice, "pamr_steps") == ("“PAMR steps” is given twice: 10 in its input and 5 in “Advanced options "
                                          "(JSON)”; give it in one place")
    with pytest.raises(InvalidInputError, match="pamr_steps is given twice: 10 in its input and 5 in options"):
        form_options(twice)
    assert not _form(ds, AUTO, {"pamr_steps": 10, "options": json.dumps({"pamr_steps": 10})})["pamr_steps"].get("invalid")
    # an input left at its default (the App sends it) leaves the JSON's value in force
    at_default = {"pamr_steps": 0, "options": json.dumps({"pamr_steps": 10})}
    assert not _form(ds, AUTO, at_default)["pamr_steps"].get("invalid")
    assert form_options(at_default) == {}
    assert build_settings(LabelSettings, auto_label_kwargs(dict(FORM, **at_default))).options["pamr_steps"] == 10
    dil = {"pamr_steps": 3, "pamr_dilations": "8, 24", "options": json.dumps({"pamr_dilations": [4]})}
    assert "“PAMR dilations” is given twice: 8, 24 in its input and 4 in" in error(dil, "pamr_dilations")
    dil_default = dict(dil, pamr_dilations="8, 16")  # the input's default: the JSON's [4] is used
    assert not _form(ds, AUTO, dil_default)["pamr_dilations"].get("invalid")
    assert form_options(dil_default) == {"pamr_steps": 3}
    # ... and FiftyOne's validation stops such a run before it starts, with that message
    with pytest.raises(ExecutionError) as err:
        asyncio.run(execute_or_delegate_operator(AUTO, dict(dataset_name=ds.name, view=ds.view()._serialize(),
                                                            params=dict(FORM, pamr_steps=2, options=json.dumps(
                                                                dict(SEG_OPTIONS, pamr_steps=3))))))
    assert "Path: pamr_steps" in str(err.value) and "is given twice" in str(err.value)
    assert not ds.has_sample_field("cass")


def test_form_values_end_up_in_the_segmenter_options_of_the_json():
    """One path: the inputs' options are merged into the JSON's; a hidden input is not used."""
    params = dict(FORM, pamr_steps=10, pamr_dilations="4, 8", pamr_guide="original", regions_field="sam",
                  region_vote="mean", region_min_area=16)
    s = build_settings(LabelSettings, auto_label_kwargs(params))
    assert s.options["pamr_steps"] == 10 and s.options["pamr_dilations"] == (4, 8)
    assert s.options["pamr_guide"] == "original" and s.options["mode"] == "whole"  # the JSON's kept
    assert (s.regions_field, s.region_vote, s.region_min_area) == ("sam", "mean", 16)
    off = build_settings(LabelSettings, auto_label_kwargs(dict(params, pamr_steps=0, regions_field="")))
    assert "pamr_dilations" not in off.options and "pamr_guide" not in off.options  # shown only with PAMR on
    assert off.regions_field is None and off.region_vote == "majority" and off.region_min_area == 0
    # the JSON alone (Python callers: options={...}) still works
    js = build_settings(LabelSettings, auto_label_kwargs(dict(FORM, options=json.dumps({"pamr_steps": 7}))))
    assert js.options["pamr_steps"] == 7


def test_a_run_from_the_form_with_pamr_and_regions_gives_the_command_lines_labels(tmp_path, capsys, dataset_name):
    base = _label_plain(tmp_path, capsys, dataset_name)  # field "plain": no refinement
    ds = fo.load_dataset(dataset_name)
    for s in ds:
        h, w = read_mask(s.plain).shape
        s["sam"] = _sam_like(h, w, [(0, 0, h, w // 2 + 3), (h // 4, w // 4, h - 2, w - 1)])
        s.save()
    rc, out = run_cli(*base, "--label-field", "cli", "--regions-field", "sam", "-o", "pamr_steps=10", capsys=capsys)
    assert rc == 0, out.err
    params = dict(FORM, classes=", ".join(CLASSES), label_field="form", batch_size=3, pamr_steps=10,
                  pamr_dilations="8, 16", pamr_guide="processed", regions_field="sam", region_vote="majority",
                  region_min_area=0)
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params)
    result = asyncio.run(execute_or_delegate_operator(AUTO, request))
    assert result.error is None
    messages = [m.body.to_json() for m in result.result]
    assert [m for m in messages if m["operator_uri"] == "show_output"][0]["params"]["results"]["num_labeled"] == 4
    # the operator from Python: a Segmenter option as a keyword (into the JSON), the regions field
    py = foo.get_operator(AUTO)(ds, classes=CLASSES, label_field="py", backbone="tiny", device="cpu",
                                masks="database", options=SEG_OPTIONS, pamr_steps=10, regions_field="sam").result
    assert py["num_labeled"] == 4 and py["regions_field"] == "sam"
    ds.reload()
    changed = False
    for s in ds:
        form, cli_, plain = read_mask(s.form), read_mask(s.cli), read_mask(s.plain)
        np.testing.assert_array_equal(form, cli_)  # the form's run = the command line's
        np.testing.assert_array_equal(read_mask(s.py), cli_)
        changed |= bool((form != plain).any())
        h, w = form.shape
        y0, x0, y1, x1 = h // 4, w // 4, h - 2, w - 1
        assert len(np.unique(form[y0:y1, x0:x1])) == 1  # a region, one label
    assert changed
    assert {s.form[CONFIG_ATTR] for s in ds} == {s.cli[CONFIG_ATTR] for s in ds} != {s.plain[CONFIG_ATTR] for s in ds}
