"""``python -m mnistnet``: the mnistnet command line (see :mod:`mnistnet.cli`)."""

import sys

from mnistnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
