"""`python -m fastconv`: the same as the `fastconv` command (see fastconv/cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
