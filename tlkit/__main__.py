"""`python -m tlkit lessons ...`: the lesson runner's command line."""
import sys

from .cli import main

sys.exit(main())
