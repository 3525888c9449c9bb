"""``python -m fiftyone_cass ...`` = the ``fiftyone-cass`` command (see :mod:`fiftyone_cass.cli`)."""

import sys

from fiftyone_cass.cli import main

if __name__ == "__main__":
    sys.exit(main())
