"""`python -m cogenesis ...` = the `cogenesis` command."""

import sys

from cogenesis.cli import main

sys.exit(main())
