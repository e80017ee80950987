"""The settings of ``vallayz bench stitch``: what it builds and how it evaluates, in one place.

The command line takes its defaults from :class:`StitchSettings` and builds one from its
options; :func:`~vallayz_train.stitch.bench.bench_stitch` reads every setting from it. The
training config and the model overrides are separate arguments. Imports nothing heavy, so that
building the command line stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vallayz_train.names import CLOSED_FORM_METHODS


@dataclass(frozen=True)
class StitchSettings:
    """What ``bench stitch`` builds (corpus subset, negative control) and how it evaluates
    (pools, their seed, closed-form maps).

    The default number of pairs keeps the encoding a few minutes of a 15-minute run on 2 CPU
    cores: multilingual-e5-small reads about 1,000 English lines in 23 s there.
    """

    # The Tibetan-English corpus; None: $VALLAYZ_TIBETAN_CORPUS or shared/data/tibetan.
    corpus_path: str | Path | None = None
    # Unique pairs drawn at random from the corpus; None: all of them.
    max_pairs: int | None = 6000
    # Candidates per random pool of the test split, besides the whole split.
    pool: int = 1000
    # Number of random pools.
    pools: int = 5
    # Seed of the pools and of the negative control's anchors.
    seed_eval: int = 0
    # Closed-form maps, each fitted with standard scaling and with L2 normalisation.
    closed_form: tuple[str, ...] = CLOSED_FORM_METHODS
    # Training pairs whose Tibetan line anchors the negative control's maps (0: zero-shot only).
    control_anchors: int = 1000
    # Whether to run the negative control (Tibetan read by both encoders).
    control: bool = True
