"""``@fiftyone-cass/cass/review_queue`` and ``concept_heatmap``.

``review_queue``: a view (optionally a saved view) of the N least confident
samples, overall or for one class, optionally tagged ``needs_review``
(:func:`fiftyone_cass.fo.review.review_queue`). From Python::

    op = foo.get_operator("@fiftyone-cass/cass/review_queue")
    op(dataset, n=50, class_name="dog", tag="needs_review", saved_view="review dog")
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators import types

from fiftyone_cass.app.support import AUTO_LABEL_FIELDS, FormError, form_message
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.review import REVIEW_TAG, per_class_field, review_queue

PLUGIN_NAME = "@fiftyone-cass/cass"
REVIEW_URI = f"{PLUGIN_NAME}/review_queue"
#: review_queue's Python keyword -> label of the form
REVIEW_FIELDS = {"confidence_field": "Confidence field", "n": "Number of samples", "class_name": "Class",
                 "tag": "Tag them", "saved_view": "Save as view"}


def confidence_fields(dataset):
    """Float fields with a ``_per_class`` companion: what auto_label wrote."""
    floats = dataset.get_field_schema(ftype=fo.FloatField)
    return sorted(f for f in floats if dataset.has_sample_field(per_class_field(f)))


class ReviewQueue(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="review_queue",
            label="Review queue: least confident labels (CASS)",
            description="Shows (and can tag or save) the N least confident auto-labelled samples, overall or for one class",
            icon="fact_check",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = confidence_fields(ctx.dataset)
        if not fields:
            inputs.view("none", types.Warning(label="No confidence field",
                                              description="Run auto_label first (it writes <field>_confidence)"))
            return types.Property(inputs, view=types.View(label="Review queue"))
        choice = types.DropdownView()
        for f in fields:
            choice.add_choice(f, label=f)
        inputs.enum("confidence_field", choice.values(), default=fields[0], required=True,
                    label=REVIEW_FIELDS["confidence_field"], view=choice)
        cf = ctx.params.get("confidence_field") or fields[0]
        classes = sorted(ctx.dataset.distinct(f"{per_class_field(cf)}.classifications.label")) if cf in fields else []
        cls = types.DropdownView()
        cls.add_choice("", label="(all samples)")
        for c in classes:
            cls.add_choice(c, label=c)
        inputs.enum("class_name", cls.values(), default="", label=REVIEW_FIELDS["class_name"], view=cls,
                    description="Only samples containing this class, by its own confidence")
        inputs.int("n", default=50, min=1, required=True, label=REVIEW_FIELDS["n"])
        inputs.bool("tag", default=False, label=f"Tag them '{REVIEW_TAG}'")
        inputs.str("saved_view", label=REVIEW_FIELDS["saved_view"], description="Name of a saved view (optional)")
        return types.Property(inputs, view=types.View(label="Review queue"))

    def execute(self, ctx):
        p = ctx.params
        try:
            view = review_queue(ctx.view, n=p.get("n", 50), confidence_field=p["confidence_field"],
                                class_name=p.get("class_name") or None, tag=REVIEW_TAG if p.get("tag") else None,
                                saved_view=p.get("saved_view") or None)
        except InvalidInputError as exc:
            raise FormError(form_message(exc, REVIEW_FIELDS)) from exc
        ids = view.values("id")
        if not ctx.delegated:
            if p.get("saved_view"):
                ctx.ops.set_view(name=p["saved_view"])
            else:
                ctx.ops.set_view(view=view)
        return {"samples": len(ids), "ids": ids}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("samples", label="Samples in the queue")
        return types.Property(outputs, view=types.View(label="Review queue"))

    def __call__(self, sample_collection, n=50, confidence_field="cass_confidence", class_name=None, tag=False,
                 saved_view=None):
        params = dict(n=n, confidence_field=confidence_field, class_name=class_name or "", tag=bool(tag),
                      saved_view=saved_view or "")
        ctx = dict(dataset=sample_collection) if isinstance(sample_collection, fo.Dataset) else dict(view=sample_collection)
        return foo.execute_operator(self.uri, ctx, params=params)




CONCEPT_URI = f"{PLUGIN_NAME}/concept_heatmap"
#: concept_heatmap's Python keyword -> label of its form (the Model section's as auto_label's)
CONCEPT_FIELDS = {**AUTO_LABEL_FIELDS, "prompt": "Text", "heatmap_field": "Heatmap field",
                  "label_field": "Vocabulary of field", "overwrite": "Replace heatmaps of another prompt"}


class ConceptHeatmap(foo.Operator):
    """``@fiftyone-cass/cass/concept_heatmap``: a Heatmap of any text for the target samples
    (:func:`fiftyone_cass.fo.concepts.concept_heatmap`)."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="concept_heatmap",
            label="Concept heatmap for any text (CASS)",
            description="Per-pixel probability of a text prompt as a Heatmap over each image",
            icon="local_fire_department",
            dynamic=True,
            execute_as_generator=False,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, name="target", action_description="Compute",
                           dataset_description="The entire dataset", current_view_description="The current view",
                           selected_samples_description="The selected samples", require_flat=True)
        inputs.str("prompt", required=True, label=CONCEPT_FIELDS["prompt"], description="e.g. a red car")
        inputs.str("heatmap_field", default="concept_heatmap", required=True, label=CONCEPT_FIELDS["heatmap_field"])
        segs = sorted(f for f in ctx.dataset.get_field_schema(embedded_doc_type=fo.Segmentation)
                      if ctx.dataset.mask_targets.get(f))
        if segs:
            choice = types.DropdownView()
            choice.add_choice("", label="(none: against background words)")
            for f in segs:
                choice.add_choice(f, label=f)
            inputs.enum("label_field", choice.values(), default="", label=CONCEPT_FIELDS["label_field"], view=choice,
                        description="The prompt competes with this field's classes")
        inputs.bool("overwrite", default=False, label=CONCEPT_FIELDS["overwrite"],
                    description="The field may hold heatmaps of another prompt or settings: replace them")
        from fiftyone_cass.app.label_operators import model_inputs

        model_inputs(ctx, inputs)  # the auto_label form's Model section, from the same declarations
        return types.Property(inputs, view=types.View(label="Concept heatmap"))

    def execute(self, ctx):
        from fiftyone_cass.fo.concepts import concept_heatmap

        from fiftyone_cass.app.label_operators import model_kwargs

        p = ctx.params

        def report(pb):
            ctx.set_progress(progress=pb.progress, label=f"{pb.iteration} of {pb.total} samples")

        try:
            kw = dict(model_kwargs(p), **(p.get("settings") or {}))  # the Model inputs, then Python's keywords
            if p.get("overwrite"):
                kw["overwrite"] = True
            summary = concept_heatmap(ctx.target_view(param_name="target", require_flat=True), p["prompt"],
                                      p.get("heatmap_field") or "concept_heatmap",
                                      label_field=p.get("label_field") or None,
                                      progress=fo.report_progress(report, dt=2.0), **kw)
        except InvalidInputError as exc:
            raise FormError(form_message(exc, CONCEPT_FIELDS)) from exc
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        return summary.to_dict()

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_computed", label="Heatmaps computed")
        outputs.int("num_already_done", label="Already done")
        outputs.int("num_failed", label="Failed")
        return types.Property(outputs, view=types.View(label="Concept heatmap"))

    def __call__(self, sample_collection, prompt, heatmap_field="concept_heatmap", label_field=None,
                 delegate=False, **settings):
        """From Python; ``settings``: :func:`~fiftyone_cass.fo.concepts.concept_heatmap`'s keywords
        (backbone, device, batch_size, masks, Segmenter options...)."""
        params = dict(prompt=prompt, heatmap_field=heatmap_field, label_field=label_field or "", settings=settings,
                      target="DATASET" if isinstance(sample_collection, fo.Dataset) else "CURRENT_VIEW")
        ctx = dict(dataset=sample_collection) if isinstance(sample_collection, fo.Dataset) else dict(view=sample_collection)
        return foo.execute_operator(self.uri, ctx, params=params, request_delegation=bool(delegate))


OPERATORS = [ReviewQueue, ConceptHeatmap]

__all__ = ["CONCEPT_URI", "ConceptHeatmap", "OPERATORS", "REVIEW_URI", "ReviewQueue", "confidence_fields"]
