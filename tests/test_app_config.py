"""How labelled fields look in the App (colour scheme, ticked field, class names), the forms'
choices and defaults, and metadata on import: checked on the stored App config, without a browser."""

import asyncio

import fiftyone as fo
from fiftyone.operators.executor import resolve_type
from fiftyone.operators.registry import OperatorRegistry

from _label_helpers import CLASSES, OPTS, add_samples, make_images
from fiftyone_cass.fo.folders import import_directory
from fiftyone_cass.app.support import PALETTE, show_labels_in_app
from fiftyone_cass.fo.apply import apply

AUTO = "@fiftyone-cass/cass/auto_label"


def _form(ds, params):
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params, target="inputs")
    return asyncio.run(resolve_type(OperatorRegistry(), AUTO, request)).to_json()["type"]["properties"]


def _field_scheme(ds, path):
    return next(f for f in ds.app_config.color_scheme.fields if f["path"] == path)


def test_labelled_field_has_one_colour_per_class_and_is_ticked(fo_dataset, tmp_path):
    ds = add_samples(fo_dataset("colors"), make_images(tmp_path, 2))
    ds.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    apply(ds, CLASSES, masks="database", batch_size=2, **OPTS)
    ds.reload()
    scheme = ds.app_config.color_scheme
    assert scheme.color_by == "value"
    colors = _field_scheme(ds, "cass")["maskTargetsColors"]
    assert [c["intTarget"] for c in colors] == [1, 2, 3]  # every class but background (never drawn)
    assert len({c["color"] for c in colors}) == 3 and colors[0]["color"] == PALETTE[0]
    active = ds.app_config.active_fields
    assert not active.exclude and "cass" in active.paths and "ground_truth" in active.paths
    assert ds.get_field("cass").description == "Classes: 0 background, 1 dog, 2 frisbee, 3 cat"

    # a user's own colours for the same classes survive a rerun; other fields' entries are kept
    ds.app_config.color_scheme.fields = [
        {"path": "cass", "maskTargetsColors": [{"intTarget": i, "color": "#000000"} for i in (1, 2, 3)]},
        {"path": "ground_truth", "fieldColor": "#ff00ff"},
    ]
    ds.save()
    show_labels_in_app(ds, "cass")
    ds.reload()
    assert {c["color"] for c in _field_scheme(ds, "cass")["maskTargetsColors"]} == {"#000000"}
    assert _field_scheme(ds, "ground_truth")["fieldColor"] == "#ff00ff"
    # ... but new classes get new colours, and an unticked-by-exclusion field is ticked again
    ds.app_config.active_fields = fo.ActiveFields(exclude=True, paths=["cass"])
    ds.save()
    apply(ds, ["dog", "sky"], label_field="cass", overwrite=True, masks="database", batch_size=2, **OPTS)
    ds.reload()
    assert [c["intTarget"] for c in _field_scheme(ds, "cass")["maskTargetsColors"]] == [1, 2]
    assert "cass" not in ds.app_config.active_fields.paths


def test_form_hides_test_backbones_and_preselects_a_ground_truth(fo_dataset, tmp_path):
    ds = add_samples(fo_dataset("formdefaults"), make_images(tmp_path, 2))
    apply(ds, CLASSES, masks="database", batch_size=2, label_field="cass", **OPTS)
    ds.add_sample_field("annotations", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    ds.mask_targets = dict(ds.mask_targets, annotations={0: "background", 1: "cat"})
    ds.save()

    form = _form(ds, {})
    # the published records of the one registry, default first; no random-weight test backbone
    assert [c["value"] for c in form["backbone"]["view"]["choices"]] == [
        "openai", "openai-l14-prior", "openai-dinov2", "openai-dinov3"]
    assert form["device"]["default"] == "auto" and "cpu" in [c["value"] for c in form["device"]["view"]["choices"]]
    # a Python caller's test backbone is still accepted
    assert "tiny" in [c["value"] for c in _form(ds, {"backbone": "tiny"})["backbone"]["view"]["choices"]]
    gt = _form(ds, {"class_source": "gt_field"})["gt_field"]
    assert {c["value"] for c in gt["view"]["choices"]} == {"annotations", "cass"}
    assert gt["default"] == "annotations"  # not the prediction field "cass" (written by auto_label)


def test_directory_import_computes_metadata(tmp_path):
    name = "meta-import-test"
    try:
        make_images(tmp_path / "imgs", 3)
        report = import_directory(str(tmp_path / "imgs"), name)
        ds = report.dataset
        assert report.added == report.found == 3
        assert sorted(ds.values("metadata.width")) == sorted([56, 59, 62])
        assert None not in ds.values("metadata.height")
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
