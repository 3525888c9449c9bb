"""Moved to ``fiftyone_cass.fo.delegation``; this old path stays for one release (README, "Old import paths")."""
import sys as _sys

import fiftyone_cass.fo.delegation as _module

_sys.modules[__name__] = _module
