"""Adding a modality to a trained run against training every modality jointly.

Two data sets, for IMPN and the contrastive heads (on Tibetan also the sequence-aware heads):

* ``digits`` (``bench digits`` data, one held-out speaker as the test split): speech and image
  first, then words;
* ``tibetan`` (a ``bench tibetan`` data folder, e.g. the 20,000-pair one of the ablations, its
  own document split): Tibetan and English first, then speech.

For each, **joint** trains every modality together from the start; **base** the first ones
alone; **extended** is the base run with the new modality added (``vallayz fit --extend``):
only its parts train, every base parameter is frozen. Every run has the same training settings
and number of steps (``bench digits``'s defaults; for Tibetan the ablations' ``--base bench``
settings at ``--steps``). The table gives test R@1 (mean over pools, and the whole split) of the
added modality in both directions and of the first modalities among themselves, for the base
run, the extended one and the joint one; then the training seconds (median over ``--repeats``
runs of each kind) and the trained parameters of each. IMPN is also extended in the ways of
:func:`extensions` (one run each): trained by InfoNCE alone and, for a sequence, with a reader
of its nodes or one that pools them into one node. ``--steps-only N`` times N training steps of
the joint and of every extended IMPN, interleaved step by step.

Usage: ``python benchmarks/extend.py [--dataset digits|tibetan] [--data DIR] [--out OUT]
[--repeats 3] [--speaker S] [--steps N]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings
from vallayz.eval import model_encoder, retrieval_table
from vallayz.learned import build_model
from vallayz_train.config import TrainConfig
from vallayz_train.digits.bench import MODEL_DEFAULTS, TRAIN_DEFAULTS, build_data, fold_data
from vallayz_train.digits.settings import DigitsSettings
from vallayz_train.run_folder import load_model
from vallayz_train.trainer import fit, fit_extension, loss_settings

Pair = tuple[tuple[str, ...], str]


@dataclass
class Setup:
    """One data set's extension benchmark.

    Attributes:
        new: The modality added to the base run.
        pairs: Scored directions: the new modality both ways, then the first ones.
        methods: Method → its model overrides.
        train: The training config of every run.
        pool: Candidates per pool; pools: their number.
        everything: The data folder with every modality; old: the same without ``new``.
        label: What the test split holds, for the table's caption.
        reader: Whether the new modality is a sequence, so that IMPN is also extended with
            the readers of :func:`extensions`.
    """

    new: str
    pairs: list[Pair]
    methods: dict[str, dict[str, Any]]
    train: TrainConfig
    pool: int
    pools: int
    everything: Path
    old: Path
    label: str
    reader: bool = False


def digits_setup(args: argparse.Namespace, out: Path) -> Setup:
    """Speech and image first, then words; one held-out speaker tests."""
    train = TrainConfig(**{**TRAIN_DEFAULTS, "seed": args.seed})
    data, speakers = build_data(out, progress=False)
    speaker = args.speaker or speakers[0]
    everything = fold_data(data, out / "fold" / "data", speaker, train.split_seed)
    pairs: list[Pair] = [
        (("word",), "speech"),
        (("speech",), "word"),
        (("word",), "image"),
        (("image",), "word"),
        (("speech",), "image"),
        (("image",), "speech"),
    ]
    return Setup(
        "word",
        pairs,
        {"impn": MODEL_DEFAULTS, "contrastive-heads": {}},
        train,
        DigitsSettings.pool,
        DigitsSettings.pools,
        everything,
        without(everything, out / "fold" / "old", "word"),
        f"held-out speaker {speaker}",
    )


def tibetan_setup(args: argparse.Namespace, out: Path) -> Setup:
    """Tibetan and English first, then speech, on a ``bench tibetan`` data folder with the
    ablations' training settings (``vallayz ablate --base bench``)."""
    from vallayz_train.bench.ablation import AblationSpec
    from vallayz_train.model_defaults import MODEL_DEFAULTS as CPU_MODEL
    from vallayz_train.tibetan.constants import FRONT_END_DEFAULTS, TOKEN_BUCKETS

    if args.data is None:
        raise SystemExit("--dataset tibetan needs --data DIR (a bench tibetan data folder)")
    spec = AblationSpec(steps=args.steps, seed=args.seed, base=dict(FRONT_END_DEFAULTS))
    train = spec.train_config()
    tokens = {"token_buckets": {"bo": TOKEN_BUCKETS}}
    pairs: list[Pair] = [
        (("speech",), "bo"),
        (("bo",), "speech"),
        (("speech",), "en"),
        (("en",), "speech"),
        (("bo",), "en"),
        (("en",), "bo"),
    ]
    everything = Path(args.data)
    return Setup(
        "speech",
        pairs,
        {"impn": {**CPU_MODEL, **tokens}, "contrastive-heads": tokens, "seq-heads": tokens},
        train,
        1000,
        5,
        everything,
        without(everything, out / "old", "speech"),
        f"{everything} test split (documents held out)",
        reader=True,
    )


# The runs of each method, in the table's order.
KINDS = (
    "base",
    "extended",
    "extended-infonce",
    "extended-reader",
    "extended-pooling",
    "extended-pooling-infonce",
    "joint",
    "joint-extended-copy",
)

# The training terms of an extension trained on its isolated embeddings alone: the passes with
# dropped modalities (translation, cycle, denoising) are skipped.
INFONCE_ONLY = {"translation": 0.0, "cycle": 0.0, "denoising": 0.0}


def extensions(setup: Setup) -> dict[str, tuple[dict[str, Any], TrainConfig]]:
    """IMPN's extensions beside the plain one, by kind: the new modality's model fields and
    the training config. ``infonce``: trained by the isolated pass's terms alone (the passes
    with dropped modalities skipped). For a sequence (``setup.reader``) also ``reader``: one
    self-attention block over its nodes; ``pooling``: a reader that pools them into one node,
    the input the base model's frozen bridge was trained on; and ``pooling-infonce``."""
    new, train = [setup.new], setup.train
    infonce = replace(train, loss_weights={**train.loss_weights, **INFONCE_ONLY})
    kinds: dict[str, tuple[dict[str, Any], TrainConfig]] = {"extended-infonce": ({}, infonce)}
    if setup.reader:
        kinds["extended-reader"] = ({"node_readers": new}, train)
        kinds["extended-pooling"] = ({"pooling_readers": new}, train)
        kinds["extended-pooling-infonce"] = ({"pooling_readers": new}, infonce)
    return kinds


SETUPS: dict[str, Callable[[argparse.Namespace, Path], Setup]] = {
    "digits": digits_setup,
    "tibetan": tibetan_setup,
}


def without(data: Path, folder: Path, name: str) -> Path:
    """A data folder linking ``data``'s arrays and items, without modality ``name``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in data.iterdir():
        if not path.name.startswith(f"{name}."):
            (folder / path.name).symlink_to(path.resolve())
    return folder


def with_copy(data: Path, folder: Path, name: str, copy: str) -> Path:
    """A data folder linking ``data``'s arrays and items, and modality ``name``'s files once
    more under the name ``copy``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in data.iterdir():
        (folder / path.name).symlink_to(path.resolve())
        if path.name.startswith(f"{name}."):
            (folder / f"{copy}{path.name[len(name) :]}").symlink_to(path.resolve())
    return folder


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Seconds of ``call(*args, **kwargs)``."""
    start = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - start


def trained_parameters(run: Path) -> int:
    return sum(p.numel() for p in load_model(run).parameters() if p.requires_grad)


def scores(
    run: Path, setup: Setup, data: PairedEmbeddings, rows: Any
) -> dict[str, tuple[float | None, float | None]]:
    """``source->target`` → (R@1 over pools, R@1 over the whole split); None where the split
    has too few candidates for a pool."""
    model = load_model(run)
    pairs = [(s, t) for s, t in setup.pairs if {*s, t} <= set(model.names)]
    encoder = model_encoder(model, data)
    table = retrieval_table(data, rows, encoder, pairs, setup.pool, setup.pools)
    out: dict[str, list[float | None]] = {}
    for row in table:
        pool = 0 if row["pool"] != "all" else 1
        out.setdefault(f"{row['source']}->{row['target']}", [None, None])[pool] = float(
            row["R@1"]  # type: ignore[arg-type]
        )
    return {k: (v[0], v[1]) for k, v in out.items()}


def step_seconds(setup: Setup, data: PairedEmbeddings, rows: Any, steps: int) -> dict[str, float]:
    """Median seconds of one IMPN training step (loss, backward, AdamW on the trainable
    parameters) of the joint model and of each extended one, on the same batches, all
    interleaved step by step so that they see the same load."""
    train, model, new = setup.train, setup.methods["impn"], setup.new
    old = {m: d for m, d in data.modalities.items() if m != new}
    base = build_model("impn", old, model)
    added = {new: data.modalities[new]}
    configs: dict[str, tuple[dict[str, Any], TrainConfig]] = {
        "joint": ({}, train),
        "extended": ({}, train),
    }
    configs.update(extensions(setup))
    parts = {}
    for kind, (fields, config) in configs.items():
        built = (
            build_model("impn", data.modalities, model)
            if kind == "joint"
            else base.extend(added, **fields)  # type: ignore[operator]
        )
        trained = [p for p in built.parameters() if p.requires_grad]
        # fit_extension turns the planner off (and with it the terms only a planner reads).
        settings = loss_settings(config if kind == "joint" else replace(config, planner=False))
        parts[kind] = (
            built.objective(settings),
            torch.optim.AdamW(trained, lr=train.lr),
        )
    times: dict[str, list[float]] = {kind: [] for kind in parts}
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
    parser.add_argument("--dataset", choices=list(SETUPS), default="digits")
    parser.add_argument("--data", help="tibetan: the bench tibetan data folder")
    parser.add_argument("--out", help="default: runs/extend-DATASET")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speaker", help="digits: held-out speaker (default: the first)")
    parser.add_argument("--steps", type=int, default=250, help="tibetan: steps of every run")
    parser.add_argument("--methods", default="impn,contrastive-heads")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed of every run (initialisation, batch order); the split stays",
    )
    parser.add_argument(
        "--steps-only",
        type=int,
        metavar="N",
        help="only time N training steps of the joint and the extended IMPN, interleaved",
    )
    args = parser.parse_args()
    out = Path(args.out or f"runs/extend-{args.dataset}")
    setup = SETUPS[args.dataset](args, out)
    train, everything, old = setup.train, setup.everything, setup.old
    fold = PairedEmbeddings(everything)
    test = fold.split_indices(train.split_seed)["test"]
    if args.steps_only:
        rows = fold.split_indices(train.split_seed)["train"]
        median = step_seconds(setup, fold, rows, args.steps_only)
        ratios = {k: round(v / median["joint"], 2) for k, v in median.items() if k != "joint"}
        rounded = {k: round(v, 3) for k, v in median.items()}
        print(f"IMPN step, median of {args.steps_only}: {rounded}; / joint: {ratios}")
        return
    results: dict[str, Any] = {
        "label": setup.label,
        "steps": train.max_steps,
        "pool": setup.pool,
        "pairs": [[list(s), t] for s, t in setup.pairs],
        "methods": {},
    }
    for method in args.methods.split(","):
        model = setup.methods[method]
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
                    [setup.new],
                    progress=False,
                )
            )
            record.write_text(json.dumps(seconds) + "\n")
            print(method, repeat, {k: round(v[-1], 1) for k, v in seconds.items()}, flush=True)
        if method == "impn":
            for kind, (fields, config) in extensions(setup).items():
                if kind not in seconds:
                    seconds[kind] = [extend_as(setup, out / method, kind, fields, config)]
                    record.write_text(json.dumps(seconds) + "\n")
                    print(method, kind, round(seconds[kind][0], 1), flush=True)
            if setup.reader and "joint-extended-copy" not in seconds:
                seconds["joint-extended-copy"] = [extend_joint_with_copy(setup, out / method)]
                record.write_text(json.dumps(seconds) + "\n")
        first = {kind: out / method / f"{kind}-0" for kind in seconds}
        results["methods"][method] = {
            "seconds": seconds,
            "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "trained_parameters": {k: trained_parameters(r) for k, r in first.items()},
            "R@1": {
                k: copy_scores(r, setup, out / method, test)
                if k == "joint-extended-copy"
                else scores(r, setup, fold, test)
                for k, r in first.items()
            },
        }
        (out / "extend.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def extend_joint_with_copy(setup: Setup, folder: Path) -> float:
    """Seconds of the diagnostic run ``folder/joint-extended-copy-0``: the joint run, whose
    first modalities were trained beside the new one, extended with a copy of the new
    modality under another name (a pooling reader, InfoNCE alone). Against the extension of
    the base run it separates what the frozen space of the first modalities keeps from what
    the extension can learn."""
    copy = f"{setup.new}2"
    data = with_copy(setup.everything, folder / "copy-data", setup.new, copy)
    _, train = extensions(setup)["extended-pooling-infonce"]
    fields = {"pooling_readers": [copy]}
    run = folder / "joint-extended-copy-0"
    shutil.rmtree(run, ignore_errors=True)
    joint = folder / "joint-0"
    return timed(fit_extension, data, joint, run, train, [copy], fields, progress=False)


def copy_scores(
    run: Path, setup: Setup, folder: Path, rows: Any
) -> dict[str, tuple[float | None, float | None]]:
    """:func:`scores` of :func:`extend_joint_with_copy`'s run, the copy's pairs keyed by the
    new modality's name."""
    copy = f"{setup.new}2"
    data = PairedEmbeddings(folder / "copy-data")

    def renamed(m: str) -> str:
        return copy if m == setup.new else m

    pairs: list[Pair] = [(tuple(map(renamed, s)), renamed(t)) for s, t in setup.pairs]
    got = scores(run, replace(setup, pairs=pairs), data, rows)
    return {key.replace(copy, setup.new): value for key, value in got.items()}


def extend_as(
    setup: Setup, folder: Path, kind: str, fields: dict[str, Any], train: TrainConfig
) -> float:
    """Seconds of the base run extended with the new modality, its model ``fields`` and the
    training config ``train``, into ``folder/KIND-0``."""
    run = folder / f"{kind}-0"
    shutil.rmtree(run, ignore_errors=True)
    base, new = folder / "base-0", [setup.new]
    return timed(fit_extension, setup.everything, base, run, train, new, fields, progress=False)


def table(results: dict[str, Any]) -> str:
    """The Markdown table of ``results``."""
    pairs = [(tuple(s), t) for s, t in results["pairs"]]
    lines = [
        f"{results['label']}, {results['steps']} steps per run; R@1 over pools of "
        f"{results['pool']} (whole test split in brackets).",
        "",
        "| method | run | "
        + " | ".join(f"{s[0]}→{t}" for s, t in pairs)
        + " | trained parameters | train s (median) |",
        "|---|---|" + "---:|" * (len(pairs) + 2),
    ]
    for method, result in results["methods"].items():
        for kind in [k for k in KINDS if k in result["R@1"]]:
            r1 = result["R@1"][kind]
            cells = [_cell(r1.get(f"{s[0]}->{t}")) for s, t in pairs]
            seconds = result["median_seconds"][kind]
            params = result["trained_parameters"][kind]
            lines.append(
                f"| {method} | {kind} | " + " | ".join(cells) + f" | {params:,} | {seconds:.1f} |"
            )
        ratio = result["median_seconds"]["extended"] / result["median_seconds"]["joint"]
        lines.append(
            f"| {method} | extended / joint time | " + " | " * len(pairs) + f" | {ratio:.2f} |"
        )
    return "\n".join(lines)


def _cell(r1: list[float | None] | None) -> str:
    """``pools (whole split)``; a dash for a pair the run does not serve or a split too small
    for a pool."""
    if r1 is None:
        return "—"
    pools, whole = (f"{v:.3f}" if v is not None else "—" for v in r1)
    return f"{pools} ({whole})"


if __name__ == "__main__":
    main()
