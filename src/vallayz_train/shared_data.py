"""Where the benchmarks find their data sets: a path the user gives, an environment variable,
or ``shared/data/<name>`` beside or above the project (the layout ``shared/data/README.md``
describes). The data are read in place, never copied into the project."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def find_data(name: str, env: str, given: str | Path | None = None) -> Path:
    """The folder of data set ``name``: ``given``, else ``$env``, else the first
    ``shared/data/<name>`` found from the working directory or this package upwards.

    Returns the path even when it does not exist; callers report a missing folder with the
    source to fetch it from.
    """
    if given:
        return Path(given)
    if os.environ.get(env):
        return Path(os.environ[env])
    relative = Path("shared") / "data" / name
    here = Path(__file__).resolve()
    for base in [Path.cwd(), *Path.cwd().parents, *here.parents]:
        candidate = base / relative
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / relative


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), the cache key of encodings of files."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
