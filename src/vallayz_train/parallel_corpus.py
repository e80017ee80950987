"""The Tibetan–English parallel corpus that ``bench tibetan`` and ``bench stitch`` read:
reading it, deduplicating it and splitting it by document."""

from __future__ import annotations

import csv
import hashlib
import lzma
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError

ENV_CORPUS = "VALLAYZ_TIBETAN_CORPUS"
DEFAULT_NAME = Path("shared") / "data" / "tibetan" / "openpecha-bo-en.tsv.xz"
SOURCE_HINT = (
    "the OpenPecha parallel corpus (GitHub OpenPecha-Data/C0A2DD042, folder text-pairs/, CC0); "
    "pass --corpus PATH (a doc<TAB>bo<TAB>en TSV, .xz or plain, or the text-pairs folder) "
    f"or set {ENV_CORPUS}"
)
_SPACE = re.compile(r"\s+")


@dataclass
class Corpus:
    """Deduplicated aligned segments with their document and split.

    Attributes:
        docs, bo, en: One entry per segment.
        split: ``train``/``val``/``test`` per segment (whole documents per split).
        novel: Test segments whose Tibetan line never occurs in the training split.
    """

    docs: list[str]
    bo: list[str]
    en: list[str]
    split: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bo)

    def indices(self, name: str) -> np.ndarray:
        """Row indices of one split."""
        return np.flatnonzero(np.array(self.split) == name)

    def items(self, texts: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The items table of a data folder holding one row per segment: its id, document
        (the group) and split, then per key of ``texts`` (such as ``text_en``) that row's line,
        which names the gold key of that modality (equal lines are each other's hits)."""
        return [
            {
                "id": f"s{i:06d}",
                "group": self.docs[i],
                "split": self.split[i],
                **{key: lines[i] for key, lines in texts.items()},
            }
            for i in range(len(self))
        ]

    def novel(self) -> np.ndarray:
        """Test rows whose Tibetan line is absent from the training split."""
        seen = {self.bo[i] for i in self.indices("train")}
        return np.array([i for i in self.indices("test") if self.bo[i] not in seen], dtype=np.int64)


def default_corpus_path() -> Path:
    """``$VALLAYZ_TIBETAN_CORPUS``, else ``shared/data/tibetan/...`` beside or above the project."""
    if os.environ.get(ENV_CORPUS):
        return Path(os.environ[ENV_CORPUS])
    here = Path(__file__).resolve()
    for base in [Path.cwd(), Path.cwd().parent, *here.parents]:
        candidate = base / DEFAULT_NAME
        if candidate.exists():
            return candidate
        candidate = base.parent / DEFAULT_NAME
        if candidate.exists():
            return candidate
    return Path.cwd().parent / DEFAULT_NAME


def clean(text: str) -> str:
    """Collapses whitespace (including no-break spaces) and strips."""
    return _SPACE.sub(" ", text.replace("\xa0", " ")).strip()


def read_segments(path: str | Path | None = None) -> list[tuple[str, str, str]]:
    """Reads ``(doc, bo, en)`` segments from a TSV (``.xz`` or plain) or a ``text-pairs`` folder.

    Raises:
        ValueError: if the path is missing or not in one of the two layouts.
    """
    path = Path(path) if path is not None else default_corpus_path()
    if not path.exists():
        raise VallayzUserError(f"no Tibetan corpus at {path}; get {SOURCE_HINT}")
    if path.is_dir():
        folder = path / "text-pairs" if (path / "text-pairs").is_dir() else path
        segments = []
        for bo_file in sorted(folder.glob("*-bo.txt")):
            doc = bo_file.name[: -len("-bo.txt")]
            en_file = next(
                (f for f in (folder / f"{doc}-en.txt", folder / f"{doc}-en-us.txt") if f.exists()),
                None,
            )
            if en_file is None:
                continue
            bo_lines = bo_file.read_text(encoding="utf-8").splitlines()
            en_lines = en_file.read_text(encoding="utf-8").splitlines()
            segments += [(doc, b, e) for b, e in zip(bo_lines, en_lines, strict=False)]
        if not segments:
            raise VallayzUserError(
                f"{folder} holds no <ID>-bo.txt / <ID>-en.txt pairs; get {SOURCE_HINT}"
            )
        return segments
    opener = lzma.open if path.suffix == ".xz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:3]] != ["doc", "bo", "en"]:
                raise VallayzUserError(
                    f"{path} must start with the header doc<TAB>bo<TAB>en, got {header}"
                )
            return [(row[0], row[1], row[2]) for row in reader if len(row) >= 3]
    except (OSError, lzma.LZMAError, UnicodeDecodeError) as err:
        raise VallayzUserError(f"cannot read {path} ({err}); get {SOURCE_HINT}") from err


def build_corpus(
    segments: list[tuple[str, str, str]],
    seed: int = 0,
    fractions: tuple[float, float] = (0.1, 0.1),
    max_pairs: int | None = None,
) -> Corpus:
    """Cleans and deduplicates segments, optionally subsamples them, and splits by document.

    Documents are shuffled with ``seed`` and assigned to test, then validation, until each holds
    at least its fraction of the segments; the rest is training.
    """
    seen: set[tuple[str, str]] = set()
    docs, bo, en = [], [], []
    for doc, b, e in segments:
        b, e = clean(b), clean(e)
        if not b or not e or (b, e) in seen:
            continue
        seen.add((b, e))
        docs.append(doc)
        bo.append(b)
        en.append(e)
    rng = np.random.default_rng(seed)
    if max_pairs is not None and max_pairs < len(bo):
        keep = np.sort(rng.choice(len(bo), size=max_pairs, replace=False))
        docs, bo, en = [docs[i] for i in keep], [bo[i] for i in keep], [en[i] for i in keep]
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc] = counts.get(doc, 0) + 1
    order = sorted(counts, key=lambda d: hashlib.sha256(f"{seed}:{d}".encode()).hexdigest())
    assignment, filled = {}, {"test": 0, "val": 0}
    targets = {"test": fractions[1] * len(bo), "val": fractions[0] * len(bo)}
    for doc in order:
        name = next((s for s in ("test", "val") if filled[s] < targets[s]), "train")
        assignment[doc] = name
        if name != "train":
            filled[name] += counts[doc]
    return Corpus(docs, bo, en, [assignment[d] for d in docs])
