"""Adding a modality to a trained run against training every modality jointly (issue #32).

On the spoken digits (``bench digits`` data, one held-out speaker as the test split), for IMPN
and the contrastive heads:

* **joint**: speech, image and word trained together from the start;
* **base**: speech and image alone;
* **extended**: the base run with words added (``vallayz fit --extend``): only the word
  modality's parts train, every base parameter is frozen.

Every run has the same training settings and number of steps (``bench digits``'s defaults).
The table gives test R@1 (mean over pools of 100, and the whole split) of the added modality in
both directions (word↔speech, word↔image), and of the first modalities (speech↔image) for the
base run, the extended one and the joint one; then the training seconds (median over
``--repeats`` runs of each kind, interleaved so that both see the same load) and the trained
parameters of each.

Usage: ``python benchmarks/extend.py [--out runs/extend-digits] [--repeats 3] [--speaker S]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings
from vallayz.eval import model_encoder, retrieval_table
from vallayz.learned import build_model
from vallayz_train.config import TrainConfig
from vallayz_train.digits.bench import (
    MODEL_DEFAULTS,
    POOL,
    POOLS,
    TRAIN_DEFAULTS,
    build_data,
    fold_data,
)
from vallayz_train.run_folder import load_model
from vallayz_train.trainer import fit, fit_extension, loss_settings

NEW = "word"
PAIRS = [
    (("word",), "speech"),
    (("speech",), "word"),
    (("word",), "image"),
    (("image",), "word"),
    (("speech",), "image"),
    (("image",), "speech"),
]
METHODS = {"impn": MODEL_DEFAULTS, "contrastive-heads": {}}


def without(data: Path, folder: Path, name: str) -> Path:
    """A data folder linking ``data``'s arrays and items, without modality ``name``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in data.iterdir():
        if not path.name.startswith(f"{name}."):
            (folder / path.name).symlink_to(path.resolve())
    return folder


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Seconds of ``call(*args, **kwargs)``."""
    start = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - start


def trained_parameters(run: Path) -> int:
    return sum(p.numel() for p in load_model(run).parameters() if p.requires_grad)


def scores(run: Path, data: PairedEmbeddings, rows: Any) -> dict[str, tuple[float, float]]:
    """``source->target`` → (R@1 over pools of ``POOL``, R@1 over the whole split)."""
    model = load_model(run)
    pairs = [(s, t) for s, t in PAIRS if {*s, t} <= set(model.names)]
    table = retrieval_table(data, rows, model_encoder(model, data), pairs, POOL, POOLS)
    out: dict[str, list[float]] = {}
    for row in table:
        pool = 0 if row["pool"] != "all" else 1
        out.setdefault(f"{row['source']}->{row['target']}", [0.0, 0.0])[pool] = float(
            row["R@1"]  # type: ignore[arg-type]
        )
    return {k: (v[0], v[1]) for k, v in out.items()}


def step_seconds(
    data: PairedEmbeddings, rows: Any, train: TrainConfig, steps: int
) -> dict[str, float]:
    """Median seconds of one IMPN training step (loss, backward, AdamW on the trainable
    parameters) of the joint model and of the extended one, on the same batches, the two
    interleaved step by step so that both see the same load."""
    old = {m: d for m, d in data.modalities.items() if m != NEW}
    models = {
        "joint": build_model("impn", data.modalities, MODEL_DEFAULTS),
        "extended": build_model("impn", old, MODEL_DEFAULTS).extend({NEW: data.modalities[NEW]}),  # type: ignore[operator]
    }
    settings = loss_settings(train)
    parts = {
        kind: (
            model.objective(settings),
            torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train.lr),
        )
        for kind, model in models.items()
    }
    times: dict[str, list[float]] = {kind: [] for kind in models}
    rng = np.random.default_rng(0)
    for step in range(steps):
        batch = data.batch(rng.choice(rows, train.batch_size, replace=False))
        for kind, (objective, optimizer) in parts.items():
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            objective(batch, torch.Generator().manual_seed(step)).total.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t[2:]) for kind, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/extend-digits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speaker", help="held-out speaker (default: the first)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--steps-only",
        type=int,
        metavar="N",
        help="only time N training steps of the joint and the extended IMPN, interleaved",
    )
    args = parser.parse_args()
    out = Path(args.out)
    train = TrainConfig(**TRAIN_DEFAULTS)
    data, speakers = build_data(out, progress=False)
    speaker = args.speaker or speakers[0]
    everything = fold_data(data, out / "fold" / "data", speaker, train.split_seed)
    old = without(everything, out / "fold" / "old", NEW)
    test = PairedEmbeddings(everything).split_indices(train.split_seed)["test"]
    fold = PairedEmbeddings(everything)
    if args.steps_only:
        median = step_seconds(
            fold, fold.split_indices(train.split_seed)["train"], train, args.steps_only
        )
        ratio = median["extended"] / median["joint"]
        print(f"IMPN step, median of {args.steps_only}: {median}; extended / joint {ratio:.2f}")
        return
    results: dict[str, Any] = {"speaker": speaker, "steps": train.max_steps, "methods": {}}
    for method in args.methods.split(","):
        model = METHODS[method]
        # Seconds of the finished runs, so that an interrupted benchmark goes on where it was.
        record = out / method / "seconds.json"
        seconds: dict[str, list[float]] = (
            json.loads(record.read_text())
            if record.is_file()
            else {"joint": [], "base": [], "extended": []}
        )
        for repeat in range(len(seconds["extended"]), args.repeats):
            runs = {kind: out / method / f"{kind}-{repeat}" for kind in seconds}
            for run in runs.values():
                shutil.rmtree(run, ignore_errors=True)
            seconds["joint"].append(
                timed(fit, everything, runs["joint"], model, train, progress=False, method=method)
            )
            seconds["base"].append(
                timed(fit, old, runs["base"], model, train, progress=False, method=method)
            )
            seconds["extended"].append(
                timed(
                    fit_extension,
                    everything,
                    runs["base"],
                    runs["extended"],
                    train,
                    [NEW],
                    progress=False,
                )
            )
            record.write_text(json.dumps(seconds) + "\n")
            print(method, repeat, {k: round(v[-1], 1) for k, v in seconds.items()}, flush=True)
        first = {kind: out / method / f"{kind}-0" for kind in seconds}
        results["methods"][method] = {
            "seconds": seconds,
            "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "trained_parameters": {k: trained_parameters(r) for k, r in first.items()},
            "R@1": {k: scores(r, fold, test) for k, r in first.items()},
        }
        (out / "extend.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict[str, Any]) -> str:
    """The Markdown table of ``results``."""
    lines = [
        f"Held-out speaker {results['speaker']}, {results['steps']} steps per run; R@1 over "
        f"pools of {POOL} (whole test split in brackets).",
        "",
        "| method | run | "
        + " | ".join(f"{s[0]}→{t}" for s, t in PAIRS)
        + " | trained parameters | train s (median) |",
        "|---|---|" + "---:|" * (len(PAIRS) + 2),
    ]
    for method, result in results["methods"].items():
        for kind in ("base", "extended", "joint"):
            r1 = result["R@1"][kind]
            cells = [
                f"{r1[f'{s[0]}->{t}'][0]:.3f} ({r1[f'{s[0]}->{t}'][1]:.3f})"
                if f"{s[0]}->{t}" in r1
                else "—"
                for s, t in PAIRS
            ]
            seconds = result["median_seconds"][kind]
            params = result["trained_parameters"][kind]
            lines.append(
                f"| {method} | {kind} | " + " | ".join(cells) + f" | {params:,} | {seconds:.1f} |"
            )
        ratio = result["median_seconds"]["extended"] / result["median_seconds"]["joint"]
        lines.append(
            f"| {method} | extended / joint time | " + " | " * len(PAIRS) + f" | {ratio:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
