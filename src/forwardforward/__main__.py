"""``python -m forwardforward``: the command line."""

import sys

from forwardforward.cli import main

if __name__ == "__main__":
    sys.exit(main())
