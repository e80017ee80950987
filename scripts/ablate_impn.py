"""IMPN ablations at one budget: micro-variants K, noise sigma, top-k, GRU vs residual update,
the speech modality on or off, speech as frame nodes or one pooled node, the speech features
(MFCC or speech_embedding frames, picked or segment-averaged, 8 to 32 nodes), loss terms, pair
weighting (rows vs equal) and bridge layers starting at the identity or at random.

Each variant is one ``vallayz fit`` (planner off, so that nothing changes K, sigma or top-k
during training) on the same data and steps; each is scored on the *validation* split (the
test split stays untouched) with pools of ``--pool`` candidates, for bo->en and bo+speech->en
by default. Finished variants are reused, so an interrupted ablation continues. ``--base bench``
starts every variant from the ``bench tibetan`` training defaults (fast n-gram tables, the
n-grams of a share of rows withheld) instead of lr 1e-3 everywhere.

    python scripts/ablate_impn.py runs/tibetan-full/data --out runs/ablate --steps 400
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.data import PairedEmbeddings
from vallayz.eval import (
    PerturbedView,
    format_table,
    model_encoder,
    rerank_table,
    retrieval_table,
)
from vallayz.eval.perturb import drop_sources
from vallayz.learned import load_pretrained
from vallayz_train.cli import parse_pair
from vallayz_train.config import TrainConfig
from vallayz_train.tibetan.bench import (
    FRONT_END_LR,
    MODEL_DEFAULTS,
    TOKEN_BUCKETS,
    TOKEN_ROW_DROPOUT,
    TRAIN_DEFAULTS,
    encode_speech,
    write_speech_meta,
)
from vallayz_train.trainer import fit

# name -> (model config changes, training config changes, data change); "pooled-speech" trains
# on speech mean-pooled over its real frames (one node instead of one per frame);
# "speech:<kind>:<pooling>:<nodes>" synthesizes the speech rows' lines again with those
# features (see vallayz_train.tibetan.encoders.speech_encoder). Training changes name
# TrainConfig fields; "loss_weights" holds only the weights that change.
Variant = tuple[dict[str, Any], dict[str, Any], str | None]
REFERENCE = "contrastive heads (reference)"
VARIANTS: dict[str, Variant] = {
    "default": ({}, {}, None),
    "K=1": ({"variants": 1}, {}, None),
    "K=4": ({"variants": 4}, {}, None),
    "sigma=0": ({"sigma": 0.0}, {}, None),
    "sigma=0.2": ({"sigma": 0.2}, {}, None),
    "top-k=1": ({"top_k": 1}, {}, None),
    "top-k=16 (all)": ({"top_k": 16}, {}, None),
    "GRU update": ({"update": "gru"}, {}, None),
    "random-init bridge layers": ({"zero_init_residual": False}, {}, None),
    "zero-init adapters": ({"zero_init_adapters": True}, {}, None),
    "no adapter input norm": ({"adapter_norm": False}, {}, None),
    "soil 256": ({"soil_dim": 256}, {}, None),
    "soil 256, hidden 512": ({"soil_dim": 256, "hidden_dim": 512}, {}, None),
    "no speech": ({}, {}, "no-speech"),
    "pooled speech": ({}, {}, "pooled-speech"),
    "speech MFCC, 8 picked frames": ({}, {}, "speech:mfcc:pick:8"),
    "speech MFCC, 8 segment means": ({}, {}, "speech:mfcc:mean:8"),
    "speech MFCC, 16 segment means": ({}, {}, "speech:mfcc:mean:16"),
    "speech MFCC, 32 segment means": ({}, {}, "speech:mfcc:mean:32"),
    "speech oww, 8 picked frames": ({}, {}, "speech:oww:pick:8"),
    "speech oww, 8 segment means": ({}, {}, "speech:oww:mean:8"),
    "speech oww, 16 segment means": ({}, {}, "speech:oww:mean:16"),
    "no kNN term": ({}, {"loss_weights": {"knn": 0.0}}, None),
    "equal pair weights": ({}, {"pair_weighting": "equal"}, None),
    "lr=3e-4": ({}, {"lr": 3e-4}, None),
    "lr=3e-3": ({}, {"lr": 3e-3}, None),
    "lr=1e-2": ({}, {"lr": 1e-2}, None),
    "front-end lr=1e-2": ({}, {"front_end_lr": 1e-2}, None),
    "front-end lr=3e-2": ({}, {"front_end_lr": 3e-2}, None),
    "front-end lr=1e-1": ({}, {"front_end_lr": 1e-1}, None),
    "front-end lr=3e-2, rows without n-grams 0.2": (
        {},
        {"front_end_lr": 3e-2, "token_row_dropout": 0.2},
        None,
    ),
    "front-end lr=3e-2, rows without n-grams 0.2, planner on": (
        {},
        {"front_end_lr": 3e-2, "token_row_dropout": 0.2, "planner": True},
        None,
    ),
    "front-end lr=3e-2, n-gram dropout 0.2": (
        {},
        {"front_end_lr": 3e-2, "token_dropout": 0.2},
        None,
    ),
    "front-end lr=3e-2, n-gram dropout 0.5": (
        {},
        {"front_end_lr": 3e-2, "token_dropout": 0.5},
        None,
    ),
    "lr=3e-3, front-end lr=1e-2": ({}, {"lr": 3e-3, "front_end_lr": 1e-2}, None),
    "n-gram table 2^17": ({"token_buckets": {"bo": 2**17}}, {}, None),
    "n-gram table 2^18": ({"token_buckets": {"bo": 2**18}}, {}, None),
    "selection over variants": ({"selection": "variants"}, {}, None),
    "absent init: attend": ({"absent_init": "attend"}, {}, None),
    "bridged term": ({}, {"loss_weights": {"bridged": 1.0}}, None),
    "bridged term, absent init: attend": (
        {"absent_init": "attend"},
        {"loss_weights": {"bridged": 1.0}},
        None,
    ),
    "bridged term, absent init: attend, K=4": (
        {"absent_init": "attend", "variants": 4},
        {"loss_weights": {"bridged": 1.0}},
        None,
    ),
    "sigma cosine schedule": ({}, {"sigma_schedule": "cosine"}, None),
    "re-ranking": ({"match_head": True}, {"loss_weights": {"rerank": 1.0}}, None),
    "bridged term, re-ranking": (
        {"match_head": True},
        {"loss_weights": {"bridged": 1.0, "rerank": 1.0}, "retrieval_mode": "bridged"},
        None,
    ),
    "contrastive only": (
        {},
        {
            "loss_weights": {
                "knn": 0.0,
                "translation": 0.0,
                "cycle": 0.0,
                "denoising": 0.0,
                "orthogonality": 0.0,
            }
        },
        None,
    ),
}


# Not IMPN: the CLIP-style heads with the same front end and budget, for reference, alone and
# with the changes of these IMPN variants, named "<REFERENCE>, <variant>" (of the model changes,
# only token_buckets applies to the heads).
VARIANTS[REFERENCE] = ({}, {}, None)
for _name in (
    "lr=3e-3",
    "front-end lr=1e-2",
    "front-end lr=3e-2",
    "front-end lr=1e-1",
    "front-end lr=3e-2, rows without n-grams 0.2",
    "front-end lr=3e-2, n-gram dropout 0.2",
    "front-end lr=3e-2, n-gram dropout 0.5",
    "n-gram table 2^17",
    "n-gram table 2^18",
    "speech MFCC, 8 picked frames",
    "speech MFCC, 8 segment means",
    "speech MFCC, 16 segment means",
    "speech MFCC, 32 segment means",
    "speech oww, 8 segment means",
):
    VARIANTS[f"{REFERENCE}, {_name}"] = VARIANTS[_name]


def linked_copy(data_dir: Path, out: Path, write_speech: Callable[[Path], None]) -> Path:
    """A copy of the data directory (linked files, the speech presence mask included) whose
    other speech files ``write_speech`` writes into the folder it is given; built aside and
    moved into place, so an interrupted copy is built again rather than reused."""
    if (out / "items.tsv").exists():
        return out
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in data_dir.iterdir():
        if not path.name.startswith("speech.") or path.name == "speech.present.npy":
            (staging / path.name).symlink_to(path.resolve())
    write_speech(staging)
    staging.replace(out)
    return out


def pooled_speech_data(data_dir: Path, out: Path) -> Path:
    """A copy of the data directory whose speech is one mean-pooled node."""

    def write(folder: Path) -> None:
        data = PairedEmbeddings(data_dir, check_values=False)
        batch = data.batch(np.arange(data.size), ["speech"])
        np.save(folder / "speech.npy", batch.pooled()["speech"].numpy().astype(np.float16))

    return linked_copy(data_dir, out, write)


def speech_data(data_dir: Path, out: Path, kind: str, pooling: str, nodes: int) -> Path:
    """A copy of the data directory whose speech rows are synthesized again and encoded as
    ``nodes`` nodes of ``kind`` frames with ``pooling`` (encodings cached beside ``out``)."""

    def write(folder: Path) -> None:
        data = PairedEmbeddings(data_dir, check_values=False)
        rows = np.flatnonzero(data.present["speech"])
        lines = [data.items[int(r)]["text_speech"] for r in rows]
        frames = encode_speech(lines, kind, nodes, pooling, out.parent / "cache")
        speech = np.zeros((data.size, *frames.shape[1:]), dtype=np.float16)
        speech[rows] = frames
        np.save(folder / "speech.npy", speech)
        write_speech_meta(folder, kind, nodes, pooling)

    return linked_copy(data_dir, out, write)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--pairs", nargs="+", default=["bo->en", "bo+speech->en"])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="a subset of variants")
    parser.add_argument(
        "--noisy-snr",
        dest="noisy_snr",
        type=float,
        help="also score bo->en with noise at this SNR on the Tibetan vector, n-grams withheld",
    )
    parser.add_argument(
        "--missing",
        type=float,
        help="also score every multi-source pair with each source dropped for this share of "
        "the rows (at least one kept per row), as the missing-modality sweep does",
    )
    parser.add_argument(
        "--base",
        choices=["plain", "bench"],
        default="plain",
        help="training settings every variant starts from: 'plain' (lr 1e-3 everywhere, every "
        "row's n-grams used) or 'bench' (the bench tibetan defaults: n-gram tables at "
        f"{FRONT_END_LR:g}, the n-grams of {TOKEN_ROW_DROPOUT * 100:g}%% of rows withheld)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed (initialisation, batch order, dropout); the split stays the same, "
        "so runs at several seeds measure how much a variant's score moves by chance",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["soil", "bridged"],
        default=["soil"],
        help="IMPN retrieval paths to score: 'soil' (each source embedded alone, averaged) "
        "and/or 'bridged' (queries read from the absent target's nodes after message passing)",
    )
    parser.add_argument(
        "--rerank-depth",
        type=int,
        default=50,
        help="candidates re-scored per query by variants with a match head",
    )
    args = parser.parse_args()

    pairs = [parse_pair(p) for p in args.pairs]
    train = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.steps,
        checkpoint_every=args.steps,
        seed=args.seed,
        warmup_steps=min(50, args.steps // 4),
        planner=False,
    )
    if args.base == "bench":
        train = replace(train, **TRAIN_DEFAULTS)
    table: list[dict[str, Any]] = []
    for name in args.only or list(VARIANTS):
        changes, train_changes, data_change = VARIANTS[name]
        weights = {**train.loss_weights, **train_changes.get("loss_weights", {})}
        config = replace(train, **{**train_changes, "loss_weights": weights})
        data_dir = args.data
        model = {**MODEL_DEFAULTS, "token_buckets": {"bo": TOKEN_BUCKETS}, **changes}
        if data_change == "no-speech":
            dims = PairedEmbeddings(args.data, check_values=False).modalities
            model["modalities"] = {m: d for m, d in dims.items() if m != "speech"}
        elif data_change == "pooled-speech":
            data_dir = pooled_speech_data(args.data, args.out / "data-pooled-speech")
        elif data_change is not None and data_change.startswith("speech:"):
            _, kind, pooling, nodes = data_change.split(":")
            folder = args.out / f"data-{data_change.replace(':', '-')}"
            data_dir = speech_data(args.data, folder, kind, pooling, int(nodes))
        run = args.out / "".join(c for c in name.replace(" ", "-") if c not in "(),")
        if args.seed:
            run = run.with_name(f"{run.name}-seed{args.seed}")
        started = time.perf_counter()
        heads = name.startswith(REFERENCE)
        if heads:
            model = {"token_buckets": model["token_buckets"]}
        if (run / "run.json").exists() and not (run / "latest").exists():
            shutil.rmtree(run)  # stopped before its first checkpoint: start it again
        if (run / "latest").exists() and not (run / "summary.json").exists():
            fit(None, run, resume=True, progress=True)  # an interrupted variant continues
        elif not (run / "summary.json").exists():
            method = "contrastive-heads" if heads else "impn"
            fit(data_dir, run, model, config, progress=True, method=method)
        seconds = time.perf_counter() - started
        data = PairedEmbeddings(data_dir, check_values=False)
        val = data.split_indices(train.split_seed)["val"]
        impn = load_pretrained(run).eval()
        known = json.loads((run / "config.json").read_text())["modalities"]
        usable = [p for p in pairs if all(m in known for m in (*p[0], p[1]))]
        views: list[tuple[str, Any, list[Any]]] = [("", data, usable)]
        if args.noisy_snr is not None:
            # The noise sweep's setting: noise on the Tibetan vector, its n-grams withheld.
            noisy = PerturbedView(data, noisy=("bo",), snr_db=args.noisy_snr)
            views.append((f" at {args.noisy_snr:g} dB", noisy, [(("bo",), "en")]))
        several = [p for p in usable if len(p[0]) > 1]
        if args.missing is not None and several:
            # The missing-modality sweep's setting: each source dropped for a share of rows.
            sources = sorted({m for p in several for m in p[0]})
            absent = drop_sources({m: data.present[m] for m in sources}, args.missing)
            view = PerturbedView(data, absent=absent)
            views.append((f", {args.missing * 100:g}% missing", view, several))
        modes = args.modes if getattr(impn, "message_passing", False) else ["soil"]
        rows = [
            {**row, "target": f"{row['target']}{suffix}", "mode": mode}
            for mode in modes
            for suffix, view, view_pairs in views
            for row in retrieval_table(
                view, val, model_encoder(impn, view, mode), view_pairs, args.pool
            )
        ]
        if getattr(impn, "match_head", None) is not None:
            # Re-ranked after the first stage of the variant's validation path.
            first = model_encoder(impn, data, config.retrieval_mode)
            rows += [
                {**row, "mode": f"{config.retrieval_mode}, re-ranked top {args.rerank_depth}"}
                for row in rerank_table(
                    impn, data, val, first, usable, args.pool, 5, 0, args.rerank_depth
                )
            ]
        for row in rows:
            # Pools of --pool candidates, or every query when a pair has fewer.
            if row["pool"] == str(args.pool) or int(str(row["queries"])) < args.pool:
                table.append(
                    {
                        "variant": name if not args.seed else f"{name} (seed {args.seed})",
                        "pair": f"{row['source']}->{row['target']}",
                        "mode": row["mode"],
                        "pool": row["queries"] if row["pool"] == "all" else row["pool"],
                        "val R@1": row["R@1"],
                        "val R@5": row["R@5"],
                        "train s": seconds,
                    }
                )
        print(format_table(table[-len(rows) :]) if rows else "", flush=True)
    print(format_table(table))
    (args.out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
