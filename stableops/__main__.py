"""``python -m stableops doctor``: the same command line as the ``stableops`` script."""

import sys

from stableops.cli import main

if __name__ == "__main__":
    sys.exit(main())
