"""Moved to ``fiftyone_cass.app.iou_panel``; this old path stays for one release (README, "Old import paths")."""
import sys as _sys

import fiftyone_cass.app.iou_panel as _module

_sys.modules[__name__] = _module
