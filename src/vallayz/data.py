"""An on-disk format for paired embeddings that any encoder can produce.

A data directory holds:

* one array per modality: ``<modality>.npy`` (float16/32, ``[N, d]`` pooled or ``[N, T, d]``
  nodes), or one ``embeddings.safetensors`` with a tensor per modality; rows are aligned across
  modalities. float64 arrays are read as float32 (with a notice in :attr:`PairedEmbeddings.notices`
  and ``vallayz check``); a present value beyond float32's range is refused like NaN;
* optionally ``<modality>.present.npy`` (bool ``[N]``, rows where the modality exists) and, for
  node arrays, ``<modality>.padding.npy`` (bool ``[N, T]``, ``True`` = real node);
* optionally ``<modality>.tokens.npy`` (integer ``[N, L]``, ``-1`` = padding): hashed feature
  ids of each row, read by models with a token front end for that modality;
* optionally ``<modality>.node_ids.npy`` (integer ``[N, T]``, ``-1`` = padding): the ids of a
  sequence of units of each row (e.g. a line's syllables, in order), read by models with token
  nodes for that modality;
* ``items.tsv``: a header and one line per row with ``id`` (unique) and optionally ``group``
  (document, speaker: splits never cut a group), ``split`` (``train``/``val``/``test``), ``text``
  or ``label`` (the gold key used by retrieval), and per-modality ``text_<m>`` / ``label_<m>``.

``.npy`` arrays are memory-mapped, not read into memory; every file is validated up front and
each problem is reported as one :class:`~vallayz.errors.VallayzUserError` (a ``ValueError``)
naming the file, the row of the folder where there is one, and the fix. Every row needs at least
one present modality, and a present sequence at least one real node. Rows of an absent modality
and padding nodes may hold anything (NaN included): :meth:`PairedEmbeddings.batch` reads them
as zeros.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.errors import VallayzUserError
from vallayz.types import Batch

ITEMS_NAME = "items.tsv"
SAFETENSORS_NAME = "embeddings.safetensors"
SPLITS = ("train", "val", "test")
_SUFFIXES = (".present", ".padding", ".tokens", ".node_ids")


@dataclass
class ModalitySummary:
    """What ``vallayz check`` prints for one modality."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    present: int


class PairedEmbeddings:
    """A validated data directory of paired embeddings (see the module docstring).

    Args:
        directory: The data directory.
        check_values: Scan every present row for NaN/Inf (in chunks; the arrays stay mapped).

    Attributes:
        notices: Conversions made while reading (float64 arrays are read as float32).
        largest: Modality → the largest magnitude among its present values (with
            ``check_values``).

    Raises:
        VallayzUserError: one line naming the file and the fix, for an empty or missing
            directory, an unreadable, empty or truncated file, arrays whose row counts differ or
            with no columns, masks of the wrong shape, a row absent in every modality, a present
            sequence without a real node, NaN/Inf (or a value beyond float32) in a present row, a
            malformed items table or duplicate ids.
    """

    def __init__(self, directory: str | Path, check_values: bool = True) -> None:
        self.directory = Path(directory)
        self.notices: list[str] = []
        # Modality → largest |value| of its present rows (filled when check_values).
        self.largest: dict[str, float] = {}
        if not self.directory.is_dir():
            old = _aside(self.directory, "old")
            if old.is_dir():
                raise VallayzUserError(
                    f"{self.directory} is missing but {old} holds the folder that an interrupted "
                    f"write replaced; rename it back to {self.directory.name}"
                )
            raise VallayzUserError(
                f"{self.directory} is not a directory; pass a folder holding <modality>.npy "
                f"files (or {SAFETENSORS_NAME}) and {ITEMS_NAME}"
            )
        self.arrays: dict[str, Any] = self._load_arrays()
        rows = {name: int(a.shape[0]) for name, a in self.arrays.items()}
        if len(set(rows.values())) > 1:
            raise VallayzUserError(
                f"{self.directory}: modalities disagree on the number of rows {rows}; rows must be "
                "aligned across modalities (fill missing ones and mark them in "
                "<modality>.present.npy)"
            )
        self.size = next(iter(rows.values()))
        self.present = {name: self._mask(name, ".present", (self.size,)) for name in self.arrays}
        self.padding = {
            name: self._mask(name, ".padding", tuple(a.shape[:2]))
            for name, a in self.arrays.items()
            if a.ndim == 3
        }
        self.tokens: dict[str, np.ndarray] = {}
        self.node_ids: dict[str, np.ndarray] = {}
        for name in self.arrays:
            for suffix, found in ((".tokens", self.tokens), (".node_ids", self.node_ids)):
                ids = self._ids(name, suffix)
                if ids is not None:
                    found[name] = ids
        self.items = self._load_items()
        self._check_masks()
        if check_values:
            self._check_values()

    # ------------------------------------------------------------------ loading
    def _load_arrays(self) -> dict[str, Any]:
        arrays: dict[str, Any] = {}
        st = self.directory / SAFETENSORS_NAME
        if st.exists():
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                arrays.update(load_file(str(st)))
            except (SafetensorError, OSError) as err:
                raise VallayzUserError(
                    f"{st} is not a readable safetensors file ({err}); rewrite it"
                ) from err
        for path in sorted(self.directory.glob("*.npy")):
            name = path.name[: -len(".npy")]
            if name.endswith(_SUFFIXES):
                continue
            if name in arrays:
                raise VallayzUserError(
                    f"modality {name!r} is both in {SAFETENSORS_NAME} and {path.name}; keep one"
                )
            check_modality_name(name, f"{path.name}: the file's")
            arrays[name] = _load_npy(path, mmap=True)
        if not arrays:
            raise VallayzUserError(
                f"{self.directory} holds no embeddings; add one <modality>.npy per modality or "
                f"an {SAFETENSORS_NAME} with one tensor per modality"
            )
        for name, a in arrays.items():
            if a.dtype not in (np.float16, np.float32, np.float64):
                raise VallayzUserError(
                    f"{name}: embeddings have dtype {a.dtype}; save them as float16 or float32"
                )
            if a.ndim not in (2, 3) or 0 in a.shape:
                raise VallayzUserError(
                    f"{name}: embeddings have shape {a.shape}; expected [rows, dim] or "
                    "[rows, nodes, dim] with at least one row, node and dimension"
                )
            if a.dtype == np.float64:
                self.notices.append(
                    f"{name}: float64 embeddings are read as float32 (save them as float32 to "
                    "halve the folder and skip this conversion)"
                )
        return arrays

    def _mask(self, name: str, suffix: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.directory / f"{name}{suffix}.npy"
        if not path.exists():
            return np.ones(shape, dtype=bool)
        mask = _load_npy(path, mmap=False)
        if mask.shape != shape:
            raise VallayzUserError(f"{path} has shape {mask.shape}; expected {shape}")
        if mask.dtype != bool:
            raise VallayzUserError(
                f"{path} has dtype {mask.dtype}; save a bool array (True = present/real)"
            )
        return mask

    def _ids(self, name: str, suffix: str) -> np.ndarray | None:
        path = self.directory / f"{name}{suffix}.npy"
        if not path.exists():
            return None
        ids = _load_npy(path, mmap=True)
        if ids.dtype.kind not in "iu" or ids.ndim != 2 or ids.shape[0] != self.size:
            raise VallayzUserError(
                f"{path} has dtype {ids.dtype} and shape {ids.shape}; expected integer ids of "
                f"shape [{self.size}, length] with -1 as padding"
            )
        if ids.shape[1] == 0:
            raise VallayzUserError(
                f"{path} has shape {ids.shape}: zero ids per row; write at least one column "
                "of ids (-1 = padding) or delete the file"
            )
        return ids

    def _load_items(self) -> list[dict[str, str]]:
        path = self.directory / ITEMS_NAME
        if not path.exists():
            raise VallayzUserError(
                f"{path} is missing; write a TSV with a header and at least an 'id' column, one "
                "line per row of the arrays"
            )
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
                items = list(reader)
                header = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise VallayzUserError(f"{path} is not a readable UTF-8 TSV ({err})") from err
        if "id" not in header:
            raise VallayzUserError(f"{path} has no 'id' column (header: {header}); add one")
        if len(items) != self.size:
            raise VallayzUserError(
                f"{path} has {len(items)} rows but the arrays have {self.size}; one line per row"
            )
        seen: dict[str, int] = {}
        for line, item in enumerate(items, start=2):
            if None in item or any(v is None for v in item.values()):
                raise VallayzUserError(
                    f"{path} line {line} has a different number of fields than the header"
                )
            if item["id"] in seen:
                raise VallayzUserError(
                    f"{path}: id {item['id']!r} appears on lines {seen[item['id']]} and {line}; "
                    "ids "
                    "must be unique"
                )
            seen[item["id"]] = line
            split = item.get("split")
            if split is not None and split not in SPLITS:
                raise VallayzUserError(
                    f"{path} line {line}: split {split!r} is not one of {SPLITS}"
                )
        return items

    def _row(self, row: int) -> str:
        """``row 7 (id 'x')``: how errors cite a row of the folder."""
        return f"row {row} (id {self.items[row]['id']!r})"

    def _check_masks(self) -> None:
        for name, padding in self.padding.items():
            empty = self.present[name] & ~padding.any(axis=1)
            if empty.any():
                raise VallayzUserError(
                    f"{name}: {self._row(int(np.flatnonzero(empty)[0]))} is present but all of "
                    f"its nodes are padding in {name}.padding.npy; give it a real node or mark "
                    f"it absent in {name}.present.npy"
                )
        anywhere = np.zeros(self.size, dtype=bool)
        for mask in self.present.values():
            anywhere |= mask
        if not anywhere.all():
            raise VallayzUserError(
                f"{self.directory}: {self._row(int(np.flatnonzero(~anywhere)[0]))} is absent in "
                f"every modality ({int((~anywhere).sum())} such rows); drop those rows or "
                "provide one of their embeddings"
            )

    def _check_values(self, chunk: int = 65536) -> None:
        for name, a in self.arrays.items():
            for start in range(0, self.size, chunk):
                block = np.asarray(a[start : start + chunk])
                if block.dtype == np.float64:
                    with np.errstate(over="ignore"):
                        block = block.astype(np.float32)
                bad = ~np.isfinite(block)
                bad = bad.any(axis=-1)
                if block.ndim == 3:
                    bad = (bad & self.padding[name][start : start + chunk]).any(axis=1)
                bad &= self.present[name][start : start + chunk]
                if bad.any():
                    row = start + int(np.flatnonzero(bad)[0])
                    raise VallayzUserError(
                        f"{name}: {self._row(row)} holds NaN or Inf (or, in a float64 array, a "
                        f"value beyond float32's range); repair it or mark it absent in "
                        f"{name}.present.npy"
                    )
                keep = self.present[name][start : start + chunk]
                if block.ndim == 3:
                    keep = keep[:, None] & self.padding[name][start : start + chunk]
                kept = np.abs(block[keep])
                if kept.size:
                    self.largest[name] = max(self.largest.get(name, 0.0), float(kept.max()))

    # ------------------------------------------------------------------ access
    @property
    def modalities(self) -> dict[str, int]:
        """Modality name → native dimension."""
        return {name: int(a.shape[-1]) for name, a in self.arrays.items()}

    def keys(self, modality: str | None = None) -> list[str]:
        """Gold key of every row for retrieval into ``modality``: its ``text_<m>`` or ``label_<m>``
        column, else ``text``, else ``label``, else the id."""
        columns = ([f"text_{modality}", f"label_{modality}"] if modality else []) + [
            "text",
            "label",
            "id",
        ]
        header = self.items[0].keys() if self.items else []
        column = next(c for c in columns if c in header)
        return [item[column] for item in self.items]

    def groups(self) -> list[str]:
        """Group of every row (``group`` column, else the id: every row its own group)."""
        return [item.get("group") or item["id"] for item in self.items]

    def split_indices(
        self, seed: int = 0, fractions: tuple[float, float] = (0.1, 0.1)
    ) -> dict[str, np.ndarray]:
        """Row indices of the train / val / test splits.

        Uses the ``split`` column when present; otherwise assigns whole groups by a seeded hash
        so that about ``fractions`` (val, test) of the groups are held out.
        """
        if self.items and "split" in self.items[0]:
            labels = [item["split"] for item in self.items]
        else:
            val, test = fractions
            labels = []
            for group in self.groups():
                digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
                u = int.from_bytes(digest[:8], "big") / 2**64
                labels.append("test" if u < test else "val" if u < test + val else "train")
        array = np.array(labels)
        return {split: np.flatnonzero(array == split) for split in SPLITS}

    def batch(
        self, rows: Sequence[int] | np.ndarray, modalities: Sequence[str] | None = None
    ) -> Batch:
        """Reads ``rows`` into a :class:`~vallayz.types.Batch` (float32 tensors, int64 tokens).

        Rows of an absent modality and padding nodes are read as zeros, whatever the folder
        holds there.
        """
        rows = np.asarray(rows, dtype=np.int64)
        names = list(modalities) if modalities is not None else list(self.arrays)
        embeddings, present, padding = {}, {}, {}
        tokens: dict[str, torch.Tensor] = {}
        node_ids: dict[str, torch.Tensor] = {}
        for name in names:
            if name not in self.arrays:
                raise VallayzUserError(
                    f"unknown modality {name!r}; this data has {sorted(self.arrays)}"
                )
            with np.errstate(over="ignore"):  # float64 beyond float32 only in absent rows
                values = np.array(self.arrays[name][rows], dtype=np.float32)
            present[name] = torch.from_numpy(self.present[name][rows].copy())
            values[~present[name].numpy()] = 0.0
            if name in self.padding:
                padding[name] = torch.from_numpy(self.padding[name][rows].copy())
                values[~padding[name].numpy()] = 0.0
            embeddings[name] = torch.from_numpy(values)
            for found, out in ((self.tokens, tokens), (self.node_ids, node_ids)):
                if name in found:
                    out[name] = torch.from_numpy(np.asarray(found[name][rows], np.int64))
        return Batch.of(embeddings, present, padding, tokens, node_ids)

    def summary(self) -> list[ModalitySummary]:
        """Shape, dtype and number of present rows of every modality."""
        return [
            ModalitySummary(
                name, tuple(int(s) for s in a.shape), str(a.dtype), int(self.present[name].sum())
            )
            for name, a in self.arrays.items()
        ]


def write_paired_embeddings(
    directory: str | Path,
    embeddings: dict[str, np.ndarray],
    items: Sequence[dict[str, str]],
    present: dict[str, np.ndarray] | None = None,
    padding: dict[str, np.ndarray] | None = None,
    tokens: dict[str, np.ndarray] | None = None,
    node_ids: dict[str, np.ndarray] | None = None,
) -> Path:
    """Writes a data directory in the format :class:`PairedEmbeddings` reads.

    The folder is written completely beside ``directory`` and then swapped in, so an error or
    an interruption leaves the old folder (or, between the two renames, its copy
    ``.<name>.old``, which :class:`PairedEmbeddings` names) and never a half-written one. Files
    of an existing folder that are not part of the format (``speech.json``, notes) are moved
    into the new one; its arrays and ``items.tsv`` are replaced.

    Args:
        directory: Target folder (created; an existing one must be a data folder or empty).
        embeddings: Modality → ``[N, d]`` or ``[N, T, d]`` float arrays.
        items: One dict per row with at least ``id``; every dict has the same keys.
        present: Optional modality → ``[N]`` bool.
        padding: Optional modality → ``[N, T]`` bool.
        tokens: Optional modality → ``[N, L]`` integer feature ids, ``-1`` = padding.
        node_ids: Optional modality → ``[N, T]`` integer unit ids in order, ``-1`` = padding.

    Returns:
        The directory.

    Raises:
        VallayzUserError: before anything is written, for a modality name that cannot name a
            file (see :func:`check_modality_name`), arrays of the wrong dtype, masks or ids of
            a modality without embeddings, items without ``id``, with other keys than the first
            or with a tab or line break in a field; and, with the old folder left as it was,
            for a folder :class:`PairedEmbeddings` would refuse (rows that disagree, duplicate
            ids, masks of the wrong shape, a row absent everywhere, NaN in a present row, ...).
    """
    directory = Path(directory)
    lines = _items_lines(items)
    given = _checked_arrays(embeddings, present or {}, padding or {}, tokens or {}, node_ids or {})
    _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = _aside(directory, "partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        for suffix, arrays in given.items():
            for name, array in arrays.items():
                np.save(work / f"{name}{suffix}.npy", array, allow_pickle=False)
        (work / ITEMS_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        _check_written(work, directory)
        _swap_in(work, directory)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return directory


def _checked_arrays(
    embeddings: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
    padding: dict[str, np.ndarray],
    tokens: dict[str, np.ndarray],
    node_ids: dict[str, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """The arrays :func:`write_paired_embeddings` writes, by file suffix (``""`` for the
    embeddings) and modality, each checked and in its stored dtype.

    Raises:
        VallayzUserError: for a name that cannot name a file, a wrong dtype, or masks or ids of
            a modality without embeddings.
    """
    given: dict[str, dict[str, np.ndarray]] = {"": {}}
    for name, array in embeddings.items():
        _check_name(name, "embeddings")
        given[""][name] = _float_array(name, array)
    for suffix, masks in ((".present", present), (".padding", padding)):
        given[suffix] = {}
        for name, mask in masks.items():
            _check_known(name, suffix, embeddings)
            given[suffix][name] = _bool_array(f"{name}{suffix}", mask)
    for suffix, ids_of in ((".tokens", tokens), (".node_ids", node_ids)):
        given[suffix] = {}
        for name, ids in ids_of.items():
            _check_known(name, suffix, embeddings)
            given[suffix][name] = _id_array(f"{name}{suffix}", ids)
    return given


def _check_replaceable(directory: Path) -> None:
    """Raises :class:`VallayzUserError` if ``directory`` exists and is not a data folder.

    Other files of the old folder are carried over, but arrays would be replaced: a folder
    holding arrays and no items table is someone else's, not a data folder to overwrite.
    """
    if directory.exists() and (
        not directory.is_dir()
        or (
            not (directory / ITEMS_NAME).is_file()
            and any(_is_format_file(path) for path in directory.iterdir())
        )
    ):
        raise VallayzUserError(
            f"{directory} exists and is not a data folder (arrays but no {ITEMS_NAME}); choose "
            "a new or empty folder"
        )


def _check_written(work: Path, directory: Path) -> None:
    """Raises :class:`VallayzUserError`, naming ``directory``, unless the loader (and so
    ``vallayz check``) accepts the folder written at ``work``: only then is it swapped in."""
    try:
        PairedEmbeddings(work)
    except VallayzUserError as err:
        raise VallayzUserError(
            f"{directory} was not written: {str(err).replace(str(work), str(directory))}"
        ) from err


def check_modality_name(name: object, what: str = "modality") -> str:
    """Returns ``name`` if it can name a modality (and so a file of a data folder): letters,
    digits, ``_`` or ``-``, starting with a letter or ``_`` -- no path separator, ``..``, dot,
    space or empty name.

    Raises:
        VallayzUserError: naming ``what`` and the rule.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VallayzUserError(
            f"{what} name {name!r} cannot name a modality's files; use letters, digits, '_' or "
            "'-', starting with a letter or '_' (e.g. 'en', 'speech_frames')"
        )
    return name


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _check_name(name: object, argument: str) -> None:
    check_modality_name(name, f"{argument}: modality")


def _check_known(name: object, suffix: str, embeddings: dict[str, np.ndarray]) -> None:
    _check_name(name, suffix.lstrip("."))
    if name not in embeddings:
        raise VallayzUserError(
            f"{suffix.lstrip('.')} names modality {name!r}, which has no embeddings (they have "
            f"{sorted(embeddings)}); drop it or add its embeddings"
        )


def _float_array(name: str, array: object) -> np.ndarray:
    values = np.asarray(array)
    if values.dtype not in (np.float16, np.float32, np.float64):
        raise VallayzUserError(
            f"embeddings {name!r} have dtype {values.dtype}; give float16 or float32 values"
        )
    return values


def _bool_array(name: str, mask: object) -> np.ndarray:
    values = np.asarray(mask)
    if values.dtype != bool and not (values.dtype.kind in "iu" and np.isin(values, (0, 1)).all()):
        raise VallayzUserError(
            f"{name} has dtype {values.dtype}; give a bool mask (True = present/real)"
        )
    return values.astype(bool)


def _id_array(name: str, ids: object) -> np.ndarray:
    values = np.asarray(ids)
    if values.dtype.kind not in "iu":
        raise VallayzUserError(f"{name} has dtype {values.dtype}; give integer ids (-1 = padding)")
    info = np.iinfo(np.int32)
    fits = values.size == 0 or (values.min() >= info.min and values.max() <= info.max)
    return values.astype(np.int32 if fits else np.int64)


def _items_lines(items: Sequence[dict[str, str]]) -> list[str]:
    """The lines of ``items.tsv``, after checking that every item has the same columns, an
    ``id``, and no tab or line break in a field."""
    if not items:
        raise VallayzUserError("items must hold one dict per row")
    header = list(items[0])
    if "id" not in header:
        raise VallayzUserError(f"items have no 'id' key (keys: {header}); give each row an id")
    if any(_BREAKS.search(str(key)) for key in header):
        raise VallayzUserError(f"the item keys {header} hold a tab or newline; remove it")
    lines = ["\t".join(str(key) for key in header)]
    for row, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != set(header):
            keys = list(item) if isinstance(item, dict) else type(item).__name__
            raise VallayzUserError(
                f"item {row} has keys {keys} but item 0 has {header}; give every item the same keys"
            )
        values = [str(item[c]) for c in header]
        if any(_BREAKS.search(v) for v in values):
            raise VallayzUserError(
                f"item {row} (id {item['id']!r}) has a tab or newline in a field; remove it"
            )
        lines.append("\t".join(values))
    return lines


_BREAKS = re.compile(r"[\t\n\r]")


def _aside(directory: Path, kind: str) -> Path:
    """``.<name>.<kind>`` beside ``directory``: where a folder is built or kept during a swap."""
    return directory.with_name(f".{directory.name}.{kind}")


def _is_format_file(path: Path) -> bool:
    return path.name in (ITEMS_NAME, SAFETENSORS_NAME) or path.suffix == ".npy"


def _swap_in(work: Path, directory: Path) -> None:
    """Replaces ``directory`` by the complete folder ``work``, keeping the old one's files that
    are not part of the format."""
    if not directory.exists():
        os.replace(work, directory)
        return
    for path in directory.iterdir():  # copied, not moved: the old folder stays whole
        if not _is_format_file(path) and not (work / path.name).exists():
            if path.is_dir():
                shutil.copytree(path, work / path.name, symlinks=True)
            else:
                shutil.copy2(path, work / path.name, follow_symlinks=False)
    old = _aside(directory, "old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(directory, old)
    os.replace(work, directory)
    shutil.rmtree(old, ignore_errors=True)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    """A ``.npy`` array (memory-mapped if ``mmap``), or one error naming the file and the fix."""
    if path.stat().st_size == 0:
        raise VallayzUserError(f"{path} is empty (0 bytes); write it again with numpy.save")
    try:
        try:
            array: np.ndarray = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError:
            if not mmap or path.stat().st_size > 2**20:
                raise
            array = np.load(path, allow_pickle=False)  # an array without data cannot be mapped
    except (OSError, ValueError, EOFError) as err:
        raise VallayzUserError(
            f"{path} is not a readable .npy array, or is truncated ({err}); write it again "
            "with numpy.save"
        ) from err
    return array
