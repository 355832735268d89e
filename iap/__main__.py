"""``python -m iap``: the same as the ``iap`` command."""

import sys

from iap.cli import main

sys.exit(main())
