"""An on-disk format for paired embeddings that any encoder can produce.

A data directory holds:

* one array per modality: ``<modality>.npy`` (float16/32, ``[N, d]`` pooled or ``[N, T, d]``
  nodes), or one ``embeddings.safetensors`` with a tensor per modality; rows are aligned across
  modalities;
* optionally ``<modality>.present.npy`` (bool ``[N]``, rows where the modality exists) and, for
  node arrays, ``<modality>.padding.npy`` (bool ``[N, T]``, ``True`` = real node);
* optionally ``<modality>.tokens.npy`` (integer ``[N, L]``, ``-1`` = padding): hashed feature
  ids of each row, read by models with a token front end for that modality;
* ``items.tsv``: a header and one line per row with ``id`` (unique) and optionally ``group``
  (document, speaker: splits never cut a group), ``split`` (``train``/``val``/``test``), ``text``
  or ``label`` (the gold key used by retrieval), and per-modality ``text_<m>`` / ``label_<m>``.

``.npy`` arrays are memory-mapped, not read into memory; every file is validated up front and
each problem is reported as one ``ValueError`` naming the file and the fix.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.types import Batch

ITEMS_NAME = "items.tsv"
SAFETENSORS_NAME = "embeddings.safetensors"
SPLITS = ("train", "val", "test")
_SUFFIXES = (".present", ".padding", ".tokens")


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

    Raises:
        ValueError: one line naming the file and the fix, for an empty or missing directory,
            an unreadable file, arrays whose row counts differ, masks of the wrong shape,
            NaN/Inf in a present row, a malformed items table or duplicate ids.
    """

    def __init__(self, directory: str | Path, check_values: bool = True) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(
                f"{self.directory} is not a directory; pass a folder holding <modality>.npy "
                f"files (or {SAFETENSORS_NAME}) and {ITEMS_NAME}"
            )
        self.arrays: dict[str, Any] = self._load_arrays()
        rows = {name: int(a.shape[0]) for name, a in self.arrays.items()}
        if len(set(rows.values())) > 1:
            raise ValueError(
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
        for name in self.arrays:
            ids = self._tokens(name)
            if ids is not None:
                self.tokens[name] = ids
        self.items = self._load_items()
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
                raise ValueError(
                    f"{st} is not a readable safetensors file ({err}); rewrite it"
                ) from err
        for path in sorted(self.directory.glob("*.npy")):
            name = path.name[: -len(".npy")]
            if name.endswith(_SUFFIXES):
                continue
            if name in arrays:
                raise ValueError(
                    f"modality {name!r} is both in {SAFETENSORS_NAME} and {path.name}; keep one"
                )
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"{path} is not a readable .npy array ({err}); write it with numpy.save"
                ) from err
        if not arrays:
            raise ValueError(
                f"{self.directory} holds no embeddings; add one <modality>.npy per modality or "
                f"an {SAFETENSORS_NAME} with one tensor per modality"
            )
        for name, a in arrays.items():
            if a.dtype not in (np.float16, np.float32, np.float64):
                raise ValueError(
                    f"{name}: embeddings have dtype {a.dtype}; save them as float16 or float32"
                )
            if a.ndim not in (2, 3) or a.shape[0] == 0 or a.shape[-1] == 0:
                raise ValueError(
                    f"{name}: embeddings have shape {a.shape}; expected [rows, dim] or "
                    "[rows, nodes, dim] with at least one row"
                )
        return arrays

    def _mask(self, name: str, suffix: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.directory / f"{name}{suffix}.npy"
        if not path.exists():
            return np.ones(shape, dtype=bool)
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{path} is not a readable .npy array ({err}); write it with numpy.save"
            ) from err
        if mask.shape != shape:
            raise ValueError(f"{path} has shape {mask.shape}; expected {shape}")
        if mask.dtype != bool:
            raise ValueError(
                f"{path} has dtype {mask.dtype}; save a bool array (True = present/real)"
            )
        return mask

    def _tokens(self, name: str) -> np.ndarray | None:
        path = self.directory / f"{name}.tokens.npy"
        if not path.exists():
            return None
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{path} is not a readable .npy array ({err}); write it with numpy.save"
            ) from err
        if ids.dtype.kind not in "iu" or ids.ndim != 2 or ids.shape[0] != self.size:
            raise ValueError(
                f"{path} has dtype {ids.dtype} and shape {ids.shape}; expected integer ids of "
                f"shape [{self.size}, length] with -1 as padding"
            )
        return ids

    def _load_items(self) -> list[dict[str, str]]:
        path = self.directory / ITEMS_NAME
        if not path.exists():
            raise ValueError(
                f"{path} is missing; write a TSV with a header and at least an 'id' column, one "
                "line per row of the arrays"
            )
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
                items = list(reader)
                header = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{path} is not a readable UTF-8 TSV ({err})") from err
        if "id" not in header:
            raise ValueError(f"{path} has no 'id' column (header: {header}); add one")
        if len(items) != self.size:
            raise ValueError(
                f"{path} has {len(items)} rows but the arrays have {self.size}; one line per row"
            )
        seen: dict[str, int] = {}
        for line, item in enumerate(items, start=2):
            if None in item or any(v is None for v in item.values()):
                raise ValueError(
                    f"{path} line {line} has a different number of fields than the header"
                )
            if item["id"] in seen:
                raise ValueError(
                    f"{path}: id {item['id']!r} appears on lines {seen[item['id']]} and {line}; "
                    "ids "
                    "must be unique"
                )
            seen[item["id"]] = line
            split = item.get("split")
            if split is not None and split not in SPLITS:
                raise ValueError(f"{path} line {line}: split {split!r} is not one of {SPLITS}")
        return items

    def _check_values(self, chunk: int = 65536) -> None:
        for name, a in self.arrays.items():
            for start in range(0, self.size, chunk):
                block = np.asarray(a[start : start + chunk])
                bad = ~np.isfinite(block)
                bad = bad.any(axis=-1)
                if block.ndim == 3:
                    bad = (bad & self.padding[name][start : start + chunk]).any(axis=1)
                bad &= self.present[name][start : start + chunk]
                if bad.any():
                    row = start + int(np.flatnonzero(bad)[0])
                    raise ValueError(
                        f"{name}: row {row} (id {self.items[row]['id']!r}) holds NaN or Inf; "
                        "repair "
                        f"it or mark it absent in {name}.present.npy"
                    )

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
        """Reads ``rows`` into a :class:`~vallayz.types.Batch` (float32 tensors, int64 tokens)."""
        rows = np.asarray(rows, dtype=np.int64)
        names = list(modalities) if modalities is not None else list(self.arrays)
        embeddings, present, padding, tokens = {}, {}, {}, {}
        for name in names:
            if name not in self.arrays:
                raise ValueError(f"unknown modality {name!r}; this data has {sorted(self.arrays)}")
            embeddings[name] = torch.from_numpy(
                np.asarray(self.arrays[name][rows], dtype=np.float32)
            )
            present[name] = torch.from_numpy(self.present[name][rows].copy())
            if name in self.padding:
                padding[name] = torch.from_numpy(self.padding[name][rows].copy())
            if name in self.tokens:
                tokens[name] = torch.from_numpy(np.asarray(self.tokens[name][rows], np.int64))
        return Batch.of(embeddings, present, padding, tokens)

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
) -> Path:
    """Writes a data directory in the format :class:`PairedEmbeddings` reads.

    Args:
        directory: Target folder (created).
        embeddings: Modality → ``[N, d]`` or ``[N, T, d]`` float arrays.
        items: One dict per row with at least ``id``; every dict has the same keys.
        present: Optional modality → ``[N]`` bool.
        padding: Optional modality → ``[N, T]`` bool.
        tokens: Optional modality → ``[N, L]`` integer feature ids, ``-1`` = padding.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in embeddings.items():
        np.save(directory / f"{name}.npy", np.asarray(array))
    for suffix, masks in ((".present", present or {}), (".padding", padding or {})):
        for name, mask in masks.items():
            np.save(directory / f"{name}{suffix}.npy", np.asarray(mask, dtype=bool))
    for name, ids in (tokens or {}).items():
        np.save(directory / f"{name}.tokens.npy", np.asarray(ids, dtype=np.int32))
    if not items:
        raise ValueError("items must hold one dict per row")
    header = list(items[0])
    with (directory / ITEMS_NAME).open("w", encoding="utf-8", newline="") as handle:
        handle.write("\t".join(header) + "\n")
        for item in items:
            values = [str(item[c]) for c in header]
            if any("\t" in v or "\n" in v for v in values):
                raise ValueError(
                    f"item {item.get('id')!r} has a tab or newline in a field; remove it"
                )
            handle.write("\t".join(values) + "\n")
    return directory
