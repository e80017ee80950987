"""The settings of ``vallayz bench emoji``: what it builds and how it evaluates, in one place.

The command line takes its defaults from :class:`EmojiSettings` and builds one from its
options; :func:`~vallayz_train.emoji.bench.bench_emoji` reads every setting from it. The
training config and the model overrides are separate arguments. Imports nothing heavy, so that
building the command line stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vallayz_train.names import CLOSED_FORM_METHODS


@dataclass(frozen=True)
class EmojiSettings:
    """What ``bench emoji`` builds (from which folder) and how it evaluates (pools, their seed,
    matched dropout, closed-form maps).

    The affine map is not fitted by default: its 500 full-batch gradient steps on a 1,280 x
    1,280 float64 matrix over ~1,070 anchors cost more CPU time than the whole rest of the
    benchmark; it is the linear map's model class plus a bias, and ``--closed-form ortho
    l-ortho linear affine`` fits it too.
    """

    # Folder with pairs.tsv and img/; None: $VALLAYZ_EMOJI_DATA or shared/data/emoji.
    data_path: str | Path | None = None
    # Candidates per random pool (the test split holds about 306 items), besides the whole split.
    pool: int = 100
    # Number of random pools.
    pools: int = 5
    # Seed of the pools.
    seed_eval: int = 0
    # Also train every learned method once per missing rate of the sweep, with that dropout.
    matched_dropout: bool = False
    # Closed-form maps fitted on the training rows: all but affine (see above).
    closed_form: tuple[str, ...] = tuple(m for m in CLOSED_FORM_METHODS if m != "affine")
