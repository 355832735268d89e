"""``python -m iap``: the same as the ``iap`` command."""

import sys

from iap.cli import main

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports this module
    sys.exit(main())
