"""Method families are registered by name (fiftyone_cass.methods): the Segmenter has no per-method
branches, so a family registered from outside is a valid method, alone and with +cdam."""

import re

import numpy as np
import pytest

from _label_helpers import OPTS
from fiftyone_cass import METHODS, Segmenter
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.methods import base, get_family, method_names, register_family
from fiftyone_cass.methods.maskclip import MaskCLIP


def test_builtin_registry_and_unknown_methods():
    assert METHODS == ("cass+cdam", "cass", "naclip+cdam", "naclip", "maskclip+cdam", "maskclip")
    assert get_family("cass+cdam").needs_dino and not get_family("naclip").needs_dino
    for bad in ("clip", "cass+crf", "+cdam"):
        with pytest.raises(InvalidInputError, match=re.escape(f"method={bad!r} is not allowed: one of")):
            Segmenter(classes="cat", method=bad, **OPTS)


def test_a_family_registered_from_outside_is_a_method():
    calls = []

    @register_family
    class Scaled(MaskCLIP):  # MaskCLIP features, counted, with its own logit scale
        name = "scaledclip"
        logit_scale = 7.0

        def features(self, seg, x, crops, grid):
            calls.append(x.shape[0])
            return super().features(seg, x, crops, grid)

    try:
        assert "scaledclip+cdam" in method_names() and "scaledclip" in method_names()
        # listed live: the package's METHODS, the settings' choices and the command line's flag
        import argparse

        import fiftyone_cass
        from fiftyone_cass.config.schema import choices_of, coerce_settings
        from fiftyone_cass.config.settings import EngineSettings, LabelSettings, add_settings_arguments

        assert fiftyone_cass.METHODS[-2:] == ("scaledclip+cdam", "scaledclip")
        assert coerce_settings(EngineSettings, {"method": "scaledclip+cdam"}) == {"method": "scaledclip+cdam"}
        parser = argparse.ArgumentParser()
        add_settings_arguments(parser, ["method"], {})
        assert parser.parse_args(["--method", "scaledclip+cdam"]).method == "scaledclip+cdam"
        assert "scaledclip" in choices_of(LabelSettings.__dataclass_fields__["method"].metadata)
        rgb = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
        for method in ("scaledclip", "scaledclip+cdam"):
            seg = Segmenter(classes="dog, cat", method=method, **OPTS)
            assert seg.options.logit_scale == 7.0 and seg.dino is None
            ref = Segmenter(classes="dog, cat", method=method.replace("scaledclip", "maskclip"), logit_scale=7.0,
                            **OPTS)
            got, want = seg.segment_arrays([rgb])[0], ref.segment_arrays([rgb])[0]
            np.testing.assert_array_equal(got.label_map, want.label_map)
        assert len(calls) == 2
    finally:
        base._FAMILIES.pop("scaledclip", None)
    assert "scaledclip" not in method_names() and "scaledclip" not in fiftyone_cass.METHODS
