"""``python -m tunevideo ...``: the headless CLI (see modules/cli.py)."""

import sys

from .modules.cli import main

sys.exit(main())
