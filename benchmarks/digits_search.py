"""FuseMix's and the sequence-aware heads' settings searched on spoken digits, by speaker.

``vallayz bench digits`` runs every learned method at its configuration's defaults. This script
gives the two baselines that have settings to search (FuseMix-style adapters: depth and dropout
with the temperature fixed and mixup, as on Tibetan, stitch and emoji; the sequence-aware heads:
pooling alone, one or two self-attention layers) the same validation search as elsewhere,
without touching a test speaker:

* **search**: in each fold of a finished ``bench digits`` folder (one held-out test speaker),
  the next training speaker in sorted order validates, and the other training speakers' rows
  train (the test speaker's rows are not read). Every variant is trained by the ablation
  harness at the benchmark's budget and scored on the validation speaker's whole set
  (class-level hits). A variant's score is its mean R@1 over the benchmark's seven directions
  and the folds; each family's best is chosen.
* **test** (``--test``): the chosen variants and each family's reference (its configuration's
  defaults, the rows of ``bench digits``) are trained on the fold's own split (every training
  speaker; the bench's seeded validation rows for early stopping) and scored on the held-out
  speaker's whole set: mean ± sd over the folds.

Usage: ``python benchmarks/digits_search.py --bench runs/digits-all --out runs/digits-search
[--test]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from vallayz_train.bench.ablation import AblationSpec, run_ablation
from vallayz_train.digits.bench import MODEL_DEFAULTS, PAIRS, TRAIN_DEFAULTS
from vallayz_train.split_folder import read_items, write_split_folder
from vallayz_train.tibetan.ablations import VARIANTS

DIRECTIONS = [f"{'+'.join(s)}->{t}" for s, t in PAIRS]
FUSEMIX_REFERENCE = "ladder 3: + latent mixup (FuseMix as published)"
SEQ_REFERENCE = "sequence-aware heads (reference)"
FAMILIES = {
    "fusemix": [
        FUSEMIX_REFERENCE,
        "ladder 1a: + input LayerNorm only (FuseMix, no blocks, temperature fixed at 0.07)",
        *(f"fusemix search: depth {d}, dropout {p}" for d in (1, 2, 4) for p in (0.1, 0.6)),
    ],
    "seq-heads": [
        SEQ_REFERENCE,
        "sequence-aware heads, pooling only",
        "sequence-aware heads, two layers",
    ],
}


def spec(split: str) -> AblationSpec:
    """The benchmark's budget and validation schedule, scored on a speaker's whole set."""
    base = {k: v for k, v in TRAIN_DEFAULTS.items() if k not in ("max_steps", "batch_size")}
    return AblationSpec(
        steps=TRAIN_DEFAULTS["max_steps"],
        batch_size=TRAIN_DEFAULTS["batch_size"],
        base=base,
        pairs=list(PAIRS),
        pool=1000,  # more than a speaker's 500 recordings: every query against the whole set
        modes=("soil",),
        split=split,
    )


def search_folder(fold: Path, out: Path) -> Path:
    """A copy of ``fold``'s split (arrays linked) where the next training speaker after the
    test speaker validates, the other training speakers train and the test rows are left out
    of both."""
    items = read_items(fold)
    rows = items.rows
    test = {r["group"] for r in rows if r["split"] == "test"}
    training = sorted({r["group"] for r in rows} - test)
    after = [s for s in training if s > min(test)]
    val = (after or training)[0]
    splits = [
        "test" if r["group"] in test else "val" if r["group"] == val else "train" for r in rows
    ]
    write_split_folder(fold, out, items, splits)
    (out / "validation-speaker.txt").write_text(val + "\n", encoding="utf-8")
    return out


def summary(tables: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """Variant → direction → R@1 of each fold, from the harness's tables by fold."""
    out: dict[str, dict[str, list[float]]] = {}
    for table in tables.values():
        for row in table:
            metric = next((k for k in row if k.endswith(" R@1")), None)
            if row.get("mode") != "soil" or metric is None or row["pair"] not in DIRECTIONS:
                continue
            by_pair = out.setdefault(str(row["variant"]), {})
            by_pair.setdefault(str(row["pair"]), []).append(float(row[metric]))
    return out


def print_summary(scores: dict[str, dict[str, list[float]]]) -> None:
    """Mean ± sd over the folds of each direction, and the mean over directions."""
    print("| variant | " + " | ".join(DIRECTIONS) + " | mean |")
    print("|---" * (len(DIRECTIONS) + 2) + "|")
    for name, by_direction in scores.items():
        cells = []
        for d in DIRECTIONS:
            values = by_direction.get(d, [])
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "—")
        print(f"| {name} | " + " | ".join(cells) + f" | {mean_score(by_direction):.3f} |")


def mean_score(by_direction: dict[str, list[float]]) -> float:
    """Mean R@1 over the directions and folds (the search's criterion)."""
    return statistics.mean(statistics.mean(v) for v in by_direction.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a finished bench digits folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--test", action="store_true", help="score the chosen variants on test")
    args = parser.parse_args()
    folds = sorted(args.bench.glob("fold-*/data"))
    if not folds:
        raise SystemExit(f"no fold-*/data in {args.bench}; run vallayz bench digits --out there")
    names = [n for family in FAMILIES.values() for n in family]
    tables: dict[str, list[dict[str, Any]]] = {}
    for fold in folds:
        speaker = fold.parent.name.removeprefix("fold-")
        data = search_folder(fold, args.out / f"search-{speaker}" / "data")
        tables[speaker] = run_ablation(
            data, data.parent, spec("val"), VARIANTS, names, dict(MODEL_DEFAULTS), False, print
        )
    scores = summary(tables)
    print("\nvalidation (a held-out training speaker per fold), R@1 mean ± sd over the folds:")
    print_summary(scores)
    chosen = {f: max(ns, key=lambda n: mean_score(scores[n])) for f, ns in FAMILIES.items()}
    print(f"\nchosen: {json.dumps(chosen, indent=1)}")
    if not args.test:
        return
    names = list(dict.fromkeys([FUSEMIX_REFERENCE, SEQ_REFERENCE, *chosen.values()]))
    tables = {}
    for fold in folds:
        speaker = fold.parent.name.removeprefix("fold-")
        run = args.out / f"test-{speaker}"
        for split in ("val", "test"):  # the first trains (early stopping on val rows)
            tables[speaker] = run_ablation(
                fold, run, spec(split), VARIANTS, names, dict(MODEL_DEFAULTS), False, print
            )
    print("\ntest (the held-out speaker), R@1 mean ± sd over the folds:")
    print_summary(summary(tables))


if __name__ == "__main__":
    main()
