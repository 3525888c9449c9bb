"""FiftyOne plugin entry point of fiftyone_cass (FIFTYONE_PLUGINS_DIR -> this repository)."""


def register(p):
    from fiftyone_cass.integrations.eval_plugin import OPERATORS as EVAL_OPERATORS

    for op in EVAL_OPERATORS:
        p.register(op)
