"""The settings of ``vallayz bench tibetan``: what it builds and how it evaluates, in one place.

The command line takes its defaults from :class:`TibetanSettings` and builds one from its
options; :func:`~vallayz_train.tibetan.bench.bench_tibetan` reads every setting from it. The
training config and the model overrides are separate arguments. Imports nothing heavy, so that
building the command line stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from vallayz_train.names import LEARNED_METHODS
from vallayz_train.tibetan.constants import SPEECH_NODES, SPEECH_POOLING, TOKEN_BUCKETS


@dataclass(frozen=True)
class TibetanSettings:
    """What ``bench tibetan`` builds (corpus subset, speech, n-gram front end) and how it
    evaluates (pools, their seed, matched dropout)."""

    # doc<TAB>bo<TAB>en TSV (.xz or plain) or a text-pairs folder; None: the shared corpus.
    corpus_path: str | None = None
    # Unique pairs drawn at random from the corpus; None: the whole corpus.
    max_pairs: int | None = 20000
    # Rows with synthesized speech: a count (int) or a fraction of the rows (float in (0, 1]).
    speech_items: int | float = 2000
    # Frame features of the speech: "mfcc" or "oww" (openwakeword).
    speech_kind: str = "mfcc"
    # Nodes per utterance, the sequence length of the speech modality.
    speech_nodes: int = SPEECH_NODES
    # Frames to nodes: "mean" (averages of equal segments) or "pick" (frames at even intervals).
    speech_pooling: str = SPEECH_POOLING
    # Processes that synthesize the speech; None: one per available core.
    speech_workers: int | None = None
    # Rows of the trainable n-gram embedding bag of every learned method (0: none).
    token_buckets: int = TOKEN_BUCKETS
    # Candidates per random pool of the test split, besides the whole split.
    pool: int = 1000
    # Number of random pools.
    pools: int = 5
    # Seed of the pools.
    seed_eval: int = 0
    # Also train every learned method once per missing rate of the sweep, with that dropout.
    matched_dropout: bool = False
    # Learned methods trained and evaluated (names of vallayz_train.names.LEARNED_METHODS).
    methods: tuple[str, ...] = LEARNED_METHODS
