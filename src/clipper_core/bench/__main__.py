"""``python -m clipper_core.bench``: the same as the ``clipper-bench`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
