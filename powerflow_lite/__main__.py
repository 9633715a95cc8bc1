"""`python -m powerflow_lite ...` runs the `powerflow` command."""

import sys

from .cli import main

sys.exit(main())
