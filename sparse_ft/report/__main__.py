"""`python -m sparse_ft.report ...`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
