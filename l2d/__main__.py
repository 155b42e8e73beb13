"""``python -m l2d``: the command line."""

import sys

from l2d.cli import main

sys.exit(main())
