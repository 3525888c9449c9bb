"""Moved to ``fiftyone_cass.app.eval_operators``; this old path stays for one release (README, "Old import paths")."""
import sys as _sys

import fiftyone_cass.app.eval_operators as _module

_sys.modules[__name__] = _module
