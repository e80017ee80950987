"""IMPN ablations at one budget: ``vallayz ablate`` (this script passes its arguments on).

python scripts/ablate_impn.py runs/tibetan-full/data --out runs/ablate --steps 400
vallayz ablate --list
"""

from __future__ import annotations

import sys

from vallayz_train.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
