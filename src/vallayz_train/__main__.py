"""``python -m vallayz_train``: the ``vallayz`` command line."""

import sys

from vallayz_train.cli import main

sys.exit(main())
