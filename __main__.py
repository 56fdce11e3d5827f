"""``python -m tunevideo ...``: the headless CLI (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
