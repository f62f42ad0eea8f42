"""`python -m tlkit lessons ...`: the lesson runner's command line."""
import sys

from .lessons import main

sys.exit(main())
