"""Moved to ``fiftyone_cass.fo.claims``; this old path stays for one release (README, "Old import paths")."""
import sys as _sys

import fiftyone_cass.fo.claims as _module

_sys.modules[__name__] = _module
