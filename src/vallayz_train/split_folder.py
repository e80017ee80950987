"""A data folder whose rows are split anew: every file of the original linked, ``items.tsv``
rewritten with one new ``split`` label per row.

The benchmarks make such folders to train the unchanged trainer on another split of the same
arrays: one fold per held-out speaker (``bench digits``), folds of the training rows for
cross-fitting a re-ranker, and a validation speaker chosen inside a fold (the digits search).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from vallayz.data import ITEMS_NAME

SPLITS = ("train", "val", "test")


class Items(NamedTuple):
    """A data folder's ``items.tsv``: its header and its rows (strings as written)."""

    header: list[str]
    rows: list[dict[str, str]]


def read_items(data_dir: Path) -> Items:
    """``data_dir``'s ``items.tsv``."""
    with (data_dir / ITEMS_NAME).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
        return Items(list(reader.fieldnames or []), rows)


def write_split_folder(data_dir: Path, out: Path, items: Items, splits: Sequence[str]) -> Path:
    """Makes ``out`` a data folder with ``data_dir``'s files linked, ``items`` (what
    :func:`read_items` read of ``data_dir``, which the caller drew the splits from) as its rows
    and ``splits[i]`` as row ``i``'s split (a ``split`` column is added when there is none).

    The folder is built beside ``out`` and moved into place, so an interruption never leaves a
    half-written one; an existing ``out`` is replaced.

    Raises:
        ValueError: if ``splits`` has not one label per row, or a label other than
            ``train``, ``val`` or ``test``.
    """
    header, rows = items
    if len(splits) != len(rows):
        raise ValueError(f"{len(splits)} split labels for the {len(rows)} rows of {data_dir}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split labels {unknown}; use {', '.join(SPLITS)}")
    columns = header if "split" in header else [*header, "split"]
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in data_dir.iterdir():
        if path.name != ITEMS_NAME:
            (staging / path.name).symlink_to(path.resolve())
    with (staging / ITEMS_NAME).open("w", encoding="utf-8", newline="") as handle:
        handle.write("\t".join(columns) + "\n")
        for row, split in zip(rows, splits, strict=True):
            handle.write("\t".join({**row, "split": split}[c] for c in columns) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    return out
