"""`python -m cogenesis.cli ...` = the `cogenesis` command."""

import sys

from cogenesis.cli import main

sys.exit(main())
