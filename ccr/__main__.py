"""`python -m ccr` runs the command-line tool (same as the `ccr` console script)."""
import sys

from ccr.cli import main

sys.exit(main())
