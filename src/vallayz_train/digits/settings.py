"""The settings of ``vallayz bench digits``: what it builds and how it evaluates, in one place.

The command line takes its defaults from :class:`DigitsSettings` and builds one from its
options; :func:`~vallayz_train.digits.bench.bench_digits` reads every setting from it. The
training config and the model overrides are separate arguments. Imports nothing heavy, so that
building the command line stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vallayz_train.names import CLOSED_FORM_METHODS


@dataclass(frozen=True)
class DigitsSettings:
    """What ``bench digits`` builds (recordings, speech features, folds) and how it evaluates
    (pools, their seed, matched dropout, closed-form maps)."""

    # FSDD folder of {digit}_{speaker}_{take}.wav; None: $VALLAYZ_FSDD_DATA or shared/data/fsdd.
    data_path: str | Path | None = None
    # Frame features of the recordings: "oww" (openwakeword speech_embedding) or "mfcc".
    speech_kind: str = "oww"
    # Speakers held out, one fold each; None: every speaker.
    speakers: tuple[str, ...] | None = None
    # Candidates per random pool (a held-out speaker has 500 recordings), besides the whole split.
    pool: int = 100
    # Number of random pools.
    pools: int = 5
    # Seed of the pools.
    seed_eval: int = 0
    # Also train every learned method once per missing rate of the sweep, with that dropout.
    matched_dropout: bool = False
    # Closed-form maps fitted on the training rows.
    closed_form: tuple[str, ...] = CLOSED_FORM_METHODS
