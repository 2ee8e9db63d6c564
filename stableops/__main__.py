"""``python -m stableops doctor``: the same command line as the ``stableops`` script."""

import sys

from stableops.cli import main

sys.exit(main())
