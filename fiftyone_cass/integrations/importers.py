"""Moved to ``fiftyone_cass.protocols.importers``; this old path stays for one release (README, "Old import paths")."""
import sys as _sys

import fiftyone_cass.protocols.importers as _module

_sys.modules[__name__] = _module
