"""Fused against late-fused queries on a toy with complementary sources (seconds per step).

Every item has an 8-d latent. ``text`` sees latent dimensions 0-5, ``image`` dimensions 2-7
(each through a random map, ``tanh`` and noise), ``audio`` all eight: neither source alone
identifies the audio, the two together do. IMPN is trained with and without the combinatorial
term, or with it in a second stage after the defaults (the fusion stage), by the ablation
machinery (:func:`~vallayz_train.bench.ablation.run_ablation`) and scored on the validation
split, on the soil path (late fusion: each source alone, averaged) and the fused path (one pass
in which the sources exchange messages), clean, with the text at 0 dB SNR (one source
corrupted), and with each source missing for half of the rows.

Usage::

    python benchmarks/fused_toy.py --out runs/toy
    python benchmarks/fused_toy.py --out runs/toy --only "combinatorial term"
    python benchmarks/fused_toy.py --out runs/toy-s1 --seed 1 --only default "fusion stage"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vallayz.data import write_paired_embeddings
from vallayz_train.bench.ablation import AblationSpec, Variant, run_ablation

ROWS = 6000
VARIANTS = {
    "default": Variant(),
    "combinatorial term": Variant(train={"loss_weights": {"combinatorial": 1.0}}),
    "combinatorial term 3": Variant(train={"loss_weights": {"combinatorial": 3.0}}),
    # A second stage after the defaults (vallayz fit --fuse): the fused path's own copy of the
    # bridge layers and a gate, trained by the combinatorial term with the rest frozen.
    "fusion stage": Variant(fusion_stage_of="default"),
    "fusion stage, corrupted sources": Variant(
        train={"fused_corruption": 0.5}, fusion_stage_of="default"
    ),
}
MODEL = {"soil_dim": 64, "hidden_dim": 128, "heads": 2}


def write_toy(directory: Path, rows: int = ROWS, seed: int = 0) -> Path:
    """The toy data folder: complementary ``text`` and ``image`` views, a complete ``audio``."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 8))

    def view(dims: list[int], width: int, noise: float) -> np.ndarray:
        weights = rng.normal(size=(len(dims), width))
        return np.tanh(latent[:, dims] @ weights) + noise * rng.normal(size=(rows, width))

    arrays = {
        "text": view([0, 1, 2, 3, 4, 5], 24, 0.3).astype(np.float32),
        "image": view([2, 3, 4, 5, 6, 7], 24, 0.3).astype(np.float32),
        "audio": view(list(range(8)), 32, 0.1).astype(np.float32),
    }
    items = [{"id": f"i{i}", "group": f"g{i % 300}"} for i in range(rows)]
    return write_paired_embeddings(directory, arrays, items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/toy", help="folder of the data and the runs")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="a subset of variants")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data stay)")
    args = parser.parse_args()
    out = Path(args.out)
    data = write_toy(out / "data")
    spec = AblationSpec(
        steps=args.steps,
        batch_size=256,
        seed=args.seed,
        pairs=[(("text",), "audio"), (("image",), "audio"), (("text", "image"), "audio")],
        modes=("soil", "fused"),
        noisy_snr=0.0,
        noisy_pair=(("text",), "audio"),
        missing=0.5,
    )
    run_ablation(
        data,
        out / "abl",
        spec,
        VARIANTS,
        args.only,
        MODEL,
        progress=False,
        log=lambda *a: print(*a, flush=True),
    )


if __name__ == "__main__":
    main()
