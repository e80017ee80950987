"""``python -m vallayz``: hands over to the command line, ``python -m vallayz_train``.

The command line lives in the ``vallayz_train`` package, which sits on top of the library; no
module of the library imports it. This alias finds it by name when it is run as a program, so
``python -m vallayz fit ...`` and the ``vallayz`` console script are the same program.
"""

import importlib.util
import runpy
import sys

if __name__ == "__main__":
    if importlib.util.find_spec("vallayz_train") is None:
        sys.exit(
            "the vallayz command line (package vallayz_train) is not installed; "
            "reinstall vallayz with pip"
        )
    runpy.run_module("vallayz_train", run_name="__main__", alter_sys=True)
