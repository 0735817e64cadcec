"""``python -m cogenesis.data {show,prompt,synth} ...``."""

from cogenesis.data.cli import main

raise SystemExit(main())
