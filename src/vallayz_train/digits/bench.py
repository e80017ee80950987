"""``vallayz bench digits``: real spoken digits ↔ handwritten digit images ↔ digit words.

Every FSDD recording is one item with three modalities, paired by the digit: ``speech`` (the
recording's frame nodes), ``image`` (one of scikit-learn's 8 × 8 digits of the same class) and
``word`` (MiniLM of the digit's word). The images of each class are dealt out to the speakers
in disjoint shares, so a held-out speaker's images are unseen in training too.

The split is by speaker: one fold per speaker, whose recordings are the test split; a seeded
10 % of the other speakers' recordings validate, the rest train. Every method of
:func:`~vallayz_train.bench.run_benchmark` is trained and evaluated in each fold, and the
report gives the mean and standard deviation over the folds. Retrieval is class-level: a hit
is a candidate of the query's digit. The stitching classifier predicts the digit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.data import write_paired_embeddings
from vallayz.errors import VallayzUserError
from vallayz.eval import format_table
from vallayz_train.bench import Pair, finish_report, run_benchmark
from vallayz_train.bench.spec import (
    SMALL_DATA_TRAIN,
    check_settings,
    fixed_pairs_spec,
    pair_modalities,
)
from vallayz_train.config import TrainConfig
from vallayz_train.digits.encoders import (
    WORDS,
    Recording,
    digit_images,
    read_recordings,
    speech_encoder,
    speech_nodes,
)
from vallayz_train.digits.settings import DigitsSettings
from vallayz_train.encoders import cached_encode, english_encoder
from vallayz_train.model_defaults import MODEL_DEFAULTS as TIBETAN_MODEL
from vallayz_train.shared_data import file_digest, find_data
from vallayz_train.split_folder import read_items, write_split_folder

ENV_DATA = "VALLAYZ_FSDD_DATA"
SOURCE = (
    "the Free Spoken Digit Dataset's recordings/ ({digit}_{speaker}_{take}.wav), public GitHub "
    "repository Jakobovski/free-spoken-digit-dataset"
)
# speech+image->word carries the missing-modality sweep (a pair with several sources).
PAIRS: list[Pair] = [
    (("speech",), "image"),
    (("image",), "speech"),
    (("speech",), "word"),
    (("word",), "speech"),
    (("image",), "word"),
    (("word",), "image"),
    (("speech", "image"), "word"),
]
VAL_FRACTION = 0.1
MODEL_DEFAULTS: dict[str, Any] = dict(TIBETAN_MODEL)
TRAIN_DEFAULTS: dict[str, Any] = {**SMALL_DATA_TRAIN, "max_steps": 200, "warmup_steps": 20}
# The columns of the benchmark's tables that summarise() averages; the rest identify a row.
METRICS: tuple[str, ...] = ("R@1", "R@5", "R@10", "MRR", "median_rank")
METRICS += ("native", "stitched", "ratio", "mse", "cosine", "value")
TABLES = ("retrieval", "stitching", "missing_sweep", "noise_sweep", "corrupted_sweep", "geometry")


def read_fsdd(root: str | Path | None = None) -> list[Recording]:
    """The recordings of the FSDD folder ``root`` (default :func:`find_data`)."""
    folder = find_data("fsdd", ENV_DATA, root)
    recordings = read_recordings(folder) if folder.is_dir() else []
    if not recordings:
        raise VallayzUserError(
            f"no {{digit}}_{{speaker}}_{{take}}.wav files in {folder}; give --data FOLDER or "
            f"set {ENV_DATA} to a folder of {SOURCE}"
        )
    speakers = sorted({r.speaker for r in recordings})
    if len(speakers) < 3:
        raise VallayzUserError(
            f"{folder} has recordings of {len(speakers)} speaker(s) ({speakers}); the split by "
            "speaker needs at least 3 (one to test, others to train and validate)"
        )
    return recordings


def deal_images(recordings: Sequence[Recording], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The image row paired with each recording: the images of each digit are shuffled and cut
    into one disjoint share per speaker, and a speaker's takes cycle through its share."""
    rng = np.random.default_rng(seed)
    speakers = sorted({r.speaker for r in recordings})
    shares: dict[tuple[int, str], np.ndarray] = {}
    for digit in range(10):
        pool = rng.permutation(np.flatnonzero(labels == digit))
        for speaker, share in zip(speakers, np.array_split(pool, len(speakers)), strict=True):
            shares[digit, speaker] = share
    out = np.zeros(len(recordings), dtype=np.int64)
    used: dict[tuple[int, str], int] = {}
    for row, r in enumerate(recordings):
        share = shares[r.digit, r.speaker]
        if len(share) == 0:
            raise VallayzUserError(f"no image of digit {r.digit} is left for speaker {r.speaker}")
        n = used.get((r.digit, r.speaker), 0)
        out[row] = share[n % len(share)]
        used[r.digit, r.speaker] = n + 1
    return out


def build_data(
    out: Path,
    root: str | Path | None = None,
    speech_kind: str = "oww",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    log: Any = print,
) -> tuple[Path, list[str]]:
    """Encodes every recording, image and word into ``out/data``; returns it and the speakers."""
    recordings = read_fsdd(root)
    cache = out / "cache"
    digests = [file_digest(r.path) for r in recordings]
    by_digest = {d: str(r.path) for d, r in zip(digests, recordings, strict=True)}
    encode_speech = speech_encoder(speech_kind)
    speech = cached_encode(
        f"speech-{speech_kind}-{speech_nodes(speech_kind)}",
        digests,
        lambda chunk: encode_speech([by_digest[d] for d in chunk]),
        cache,
        chunk=500,
        progress=progress,
    )
    words = cached_encode(
        "word-minilm", list(WORDS), english_encoder(device), cache, progress=False
    )
    images, labels = digit_images()
    image_rows = deal_images(recordings, labels, seed)
    digits = np.array([r.digit for r in recordings])
    speakers = sorted({r.speaker for r in recordings})
    log(
        f"digits: {len(recordings)} recordings of {len(speakers)} speakers {speakers}; "
        f"speech {speech_kind} {tuple(speech.shape[1:])}; {len(set(image_rows))} distinct images"
    )
    items = [
        {
            "id": r.path.stem,
            "group": r.speaker,
            "label": WORDS[r.digit],
            "image_row": str(i),
        }
        for r, i in zip(recordings, image_rows, strict=True)
    ]
    data = write_paired_embeddings(
        out / "data",
        {
            "speech": speech,
            "image": images[image_rows],
            "word": words[digits].astype(np.float16),
        },
        items,
    )
    return data, speakers


def fold_data(data: Path, folder: Path, test_speaker: str, seed: int = 0) -> Path:
    """A data directory that links ``data``'s arrays and splits its items by speaker:
    ``test_speaker`` tests, a seeded ``VAL_FRACTION`` of the others' rows validates."""
    items = read_items(data)
    rng = np.random.default_rng(seed)
    splits = [
        "test"
        if row["group"] == test_speaker
        else ("val" if rng.random() < VAL_FRACTION else "train")
        for row in items.rows
    ]
    return write_split_folder(data, folder, items, splits)


def summarise(folds: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over folds of every metric of rows that agree on every other
    column; ``folds`` counts the folds that had the row."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for table in folds:
        for row in table:
            key = tuple((k, v) for k, v in row.items() if k not in METRICS)
            grouped.setdefault(key, []).append(row)
    out = []
    for key, rows in grouped.items():
        summary: dict[str, Any] = dict(key)
        summary["folds"] = len(rows)
        for metric in METRICS:
            values = [float(r[metric]) for r in rows if metric in r]
            if values:
                summary[metric] = float(np.mean(values))
                summary[f"{metric} sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def bench_digits(
    out: str | Path,
    settings: DigitsSettings | None = None,
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Encodes the data, runs one benchmark per held-out speaker and summarises them.

    Args:
        out: The benchmark's folder.
        settings: What the benchmark builds and how it evaluates (default ``DigitsSettings()``;
            its ``speakers`` are held out, by default every speaker, one fold each).
        train: Training config of every learned method (default :data:`TRAIN_DEFAULTS`).
        model_overrides: IMPN config fields over :data:`MODEL_DEFAULTS`.
        progress: Whether to show progress bars.
        log: Prints the benchmark's messages.
    """
    settings = settings or DigitsSettings()
    root, speech_kind = settings.data_path, settings.speech_kind
    train = train or TrainConfig(**TRAIN_DEFAULTS)
    spec = fixed_pairs_spec(
        PAIRS,
        settings.pool,
        settings.pools,
        settings.seed_eval,
        settings.matched_dropout,
        settings.closed_form,
    )
    model = {**MODEL_DEFAULTS, **(model_overrides or {})}
    # Checked before the recordings are encoded.
    check_settings(spec, train, model, pair_modalities(PAIRS))
    # The speakers are read from the file names, before anything is encoded or written.
    everyone = sorted({r.speaker for r in read_fsdd(root)})
    held_out = list(settings.speakers or everyone)
    unknown = sorted(set(held_out) - set(everyone))
    if unknown:
        raise VallayzUserError(f"unknown speaker(s) {unknown}; the data has {everyone}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, _ = build_data(out, root, speech_kind, train.split_seed, train.device, progress, log)
    per_fold: dict[str, dict[str, Any]] = {}
    for speaker in held_out:
        folder = out / f"fold-{speaker}"
        log(f"fold: speaker {speaker} held out")
        fold = fold_data(data, folder / "data", speaker, train.split_seed)
        per_fold[speaker] = run_benchmark(fold, folder, spec, train, model, progress, log)
    results = fold_summary(data, speech_kind, held_out, per_fold)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(out, results)
    return results


def fold_summary(
    data: Path, speech_kind: str, held_out: list[str], per_fold: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The results of the benchmark over its folds, as ``results.json`` holds them.

    Args:
        data: The data folder of every recording.
        speech_kind: Its speech features.
        held_out: The speakers held out, as the settings name them.
        per_fold: The results of :func:`~vallayz_train.bench.run_benchmark` on each fold, by
            held-out speaker.

    Returns:
        The folds' settings (those of the first fold), sizes and seconds, each speaker's
        retrieval on the whole split, and every table summarised over the folds
        (:func:`summarise`).
    """
    first = next(iter(per_fold.values()))
    results: dict[str, Any] = {
        "data": str(data.resolve()),
        "speech_features": speech_kind,
        "speakers": held_out,
        "split_sizes": {s: r["split_sizes"] for s, r in per_fold.items()},
        "spec": first["spec"],
        "train": first["train"],
        "hardware": first["hardware"],
        "train_seconds": {s: r["train_seconds"] for s, r in per_fold.items()},
        "per_speaker": {
            s: [row for row in r["retrieval"] if row["pool"] == "all"] for s, r in per_fold.items()
        },
    }
    for table in TABLES:
        results[table] = summarise([r[table] for r in per_fold.values()])
    return results


def _mean_sd(row: dict[str, Any], metric: str) -> str:
    if metric not in row:
        return ""
    return f"{row[metric]:.3f} ± {row[f'{metric} sd']:.3f}"


def _table(rows: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> str:
    shown = [
        {**{k: r.get(k, "") for k in keys}, **{m: _mean_sd(r, m) for m in metrics}} for r in rows
    ]
    return format_table(shown, [*keys, *metrics])


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Writes ``report.md`` (and plots when matplotlib is installed) of the folds' summary."""
    spec, train = results["spec"], results["train"]
    speakers = results["speakers"]
    lines = [
        "# Spoken digits benchmark (split by speaker)",
        "",
        f"- data: `{results['data']}`; speech features `{results['speech_features']}`; one fold "
        f"per held-out speaker ({', '.join(speakers)}); every cell is the mean ± standard "
        "deviation over the folds",
        f"- split sizes per fold: {results['split_sizes']}",
        f"- retrieval is class-level (a hit is a candidate of the query's digit; chance R@1 is "
        f"about 0.1); pools: {spec['pools']} random pools of {spec['pool']} (seed "
        f"{spec['seed']}) and the whole held-out speaker",
        f"- learned methods trained under one budget: max_steps={train['max_steps']}, "
        f"batch_size={train['batch_size']}, seed={train['seed']}; closed-form maps fitted on the "
        f"training rows ({spec['normalisation']} scaling)",
        f"- hardware: {results['hardware']}; training seconds per fold {results['train_seconds']}",
        "",
        "## Retrieval",
        "",
        _table(
            results["retrieval"],
            ["method", "source", "target", "pool", "queries"],
            ["R@1", "R@5", "MRR"],
        ),
        "",
        "## Retrieval per held-out speaker (R@1, whole split)",
        "",
    ]
    lines += [_per_speaker_table(results["per_speaker"], speakers), ""]
    sections = [
        ("stitching", "Stitching: a digit classifier on native target vectors, applied to "
         "translations", ["method", "source", "target"], ["native", "stitched", "ratio"]),
        ("missing_sweep", "Missing-modality sweep (sources dropped at test)",
         ["method", "missing_rate", "source", "target", "pool"], ["R@1", "R@5"]),
        ("noise_sweep", "Noise sweep (Gaussian noise on the speech at the given SNR)",
         ["method", "snr_db", "source", "target", "pool"], ["R@1", "R@5"]),
        ("corrupted_sweep", "One source corrupted (noise on the speech of speech+image only)",
         ["method", "corrupted", "snr_db", "source", "target", "pool"], ["R@1", "R@5"]),
        ("geometry", "Geometry: cycle reconstruction and kNN preservation",
         ["method", "metric"], ["mse", "cosine", "value"]),
    ]  # fmt: skip
    return finish_report(
        out,
        results,
        lines,
        [(key, title, _columns(keys, metrics)) for key, title, keys, metrics in sections],
        _plots,
    )


def _per_speaker_table(per: dict[str, list[dict[str, Any]]], speakers: list[str]) -> str:
    """R@1 of every method and direction (the rows of the first speaker's fold) in one column
    per held-out speaker, blank where a fold lacks the row."""
    rows = []
    for row in per[speakers[0]]:
        entry = {"method": row["method"], "direction": f"{row['source']}->{row['target']}"}
        for s in speakers:
            match = [
                r
                for r in per[s]
                if (r["method"], r["source"], r["target"])
                == (row["method"], row["source"], row["target"])
            ]
            entry[s] = f"{match[0]['R@1']:.3f}" if match else ""
        rows.append(entry)
    return format_table(rows)


def _columns(keys: list[str], metrics: list[str]) -> Callable[[list[dict[str, Any]]], str]:
    return lambda rows: _table(rows, keys, metrics)


def _plots(out: Path, results: dict[str, Any]) -> list[Path]:
    from vallayz_train.plots import _pyplot

    plt = _pyplot()
    paths = []
    retrieval = [r for r in results["retrieval"] if r["pool"] == "all"]
    directions = list(dict.fromkeys(f"{r['source']}->{r['target']}" for r in retrieval))
    methods = list(dict.fromkeys(r["method"] for r in retrieval))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(directions)), 4))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        by_direction = {
            f"{r['source']}->{r['target']}": r for r in retrieval if r["method"] == method
        }
        x = [j + i * width for j, d in enumerate(directions) if d in by_direction]
        bars = [by_direction[d] for d in directions if d in by_direction]
        ax.bar(x, [r["R@1"] for r in bars], width, yerr=[r["R@1 sd"] for r in bars], label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(directions))], directions, fontsize=7)
    ax.set_ylabel("R@1 (class-level, whole held-out speaker)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "recall_by_direction.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    sweep = [r for r in results["missing_sweep"] if r["pool"] == "all"]
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in dict.fromkeys(r["method"] for r in sweep):
            chosen = [r for r in sweep if r["method"] == method]
            ax.errorbar(
                [r["missing_rate"] for r in chosen],
                [r["R@1"] for r in chosen],
                yerr=[r["R@1 sd"] for r in chosen],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xlabel("missing rate of each source")
        ax.set_ylabel("R@1")
        ax.set_title(f"{sweep[0]['source']} → {sweep[0]['target']}")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "missing.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
