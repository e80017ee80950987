"""``python -m vallayz``: the command line (it lives in the ``vallayz_train`` package)."""

import sys

from vallayz_train.cli import main

sys.exit(main())
