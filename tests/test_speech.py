"""Speech synthesis in worker processes, and how many rows get speech."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vallayz.errors import VallayzUserError
from vallayz_train.cli import build_parser
from vallayz_train.tibetan.bench import bench_tibetan
from vallayz_train.tibetan.encoders import line_features, map_lines, speech, speech_encoder
from vallayz_train.tibetan.encoders.speech import (
    check_workers,
    speech_amount,
    speech_row_count,
)
from vallayz_train.tibetan.settings import TibetanSettings

LINES = [
    "སངས་རྒྱས་ལ་ཕྱག་འཚལ་ལོ།",
    "བྱང་ཆུབ་སེམས་དཔའ།",
    "རང་བྱུང་རྟག་པའི་རྡོ་རྗེ་ཚེ་དཔག་མེད། །",
    "འཆི་བདག་བདུད་འཇོམས་གཙུག་ཏོར་རྣམ་པར་རྒྱལ། །",
    "ཀ",
]

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng (make test installs it)"
)


@needs_espeak
def test_two_workers_give_the_in_process_features_in_input_order() -> None:
    one = speech_encoder("mfcc", 16, "mean", workers=1)(LINES)
    with speech_encoder("mfcc", 16, "mean", workers=2) as encoder:
        two = encoder(LINES)
        again = encoder(LINES[::-1])  # the pool is reused across calls
    assert one.dtype == two.dtype == np.float16 and one.shape == (len(LINES), 16, 20)
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(again, one[::-1])
    # Row i is the speech of line i, not of its neighbour: each line on its own, in process.
    for row, line in enumerate(LINES):
        alone = line_features(line, "mfcc", 16, "mean").astype(np.float16)
        np.testing.assert_array_equal(one[row], alone)
    assert len({one[i].tobytes() for i in range(len(LINES))}) == len(LINES)


# Module-level so that worker processes can unpickle them.
def _fails_on_third(text: str) -> np.ndarray:
    if text == "third":
        raise RuntimeError("no voice for this line")
    return np.full(2, len(text), np.float32)


def _dies_on_third(text: str) -> np.ndarray:
    if text == "third":
        os._exit(3)
    return np.full(2, len(text), np.float32)


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_on_a_line_names_the_line(workers: int) -> None:
    texts = ["first", "second", "third", "fourth"]
    pool = _spawn_pool(workers) if workers > 1 else None
    try:
        if pool is not None:  # the pool works, in input order, before the failing batch
            assert [int(x[0]) for x in map_lines(_fails_on_third, texts[:2], pool)] == [5, 6]
        with pytest.raises(VallayzUserError, match=r"line 3 of 4 .*'third'.*no voice"):
            map_lines(_fails_on_third, texts, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def test_a_dead_worker_is_an_error_naming_a_line_not_a_hang() -> None:
    pool = _spawn_pool(2)
    try:
        with pytest.raises(VallayzUserError, match="worker process died") as info:
            map_lines(_dies_on_third, ["first", "second", "third", "fourth", "fifth"], pool)
        # The culprit is the named line or one encoded with it; "fifth" was still queued.
        assert re.search(r"line [1-3] of 5 .*'(first|second|third)'", str(info.value))
    finally:
        pool.shutdown(cancel_futures=True)


@needs_espeak
def test_an_interrupt_ends_the_workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker left alive after Ctrl-C would keep the interpreter waiting at exit.
    encoder = speech_encoder("mfcc", 16, "mean", workers=2)
    processes: list[multiprocessing.process.BaseProcess] = []

    def interrupted(
        fn: object, texts: list[str], pool: ProcessPoolExecutor | None
    ) -> list[np.ndarray]:
        assert pool is not None
        assert pool.submit(os.getpid).result() != os.getpid()  # the workers are up
        processes.extend(pool._processes.values())  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(speech, "map_lines", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encoder(LINES[:2])
    assert processes
    for process in processes:
        process.join(timeout=10)
        assert not process.is_alive()


def test_worker_counts_are_checked() -> None:
    assert check_workers(3) == 3
    assert check_workers(None) >= 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="speech workers must be a whole number >= 1"):
            check_workers(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "given,want",
    [("2000", 2000), (" 0 ", 0), ("0.34", 0.34), ("1.0", 1.0), ("1", 1), (7, 7), (0.5, 0.5)],
)
def test_speech_amount_reads_counts_and_fractions(given: str | float, want: float) -> None:
    got = speech_amount(given)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "given,problem",
    [
        ("-3", "count >= 0"),
        (-1, "count >= 0"),
        ("1.5", r"in \(0, 1\]"),
        ("0.0", r"in \(0, 1\]"),
        ("1e3", r"in \(0, 1\]"),
        ("nan", r"in \(0, 1\]"),
        ("a third", "a count such as 2000 or a fraction"),
        (True, "int count or a float fraction"),
    ],
)
def test_speech_amount_refuses_bad_values(given: str | float, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        speech_amount(given)


def test_speech_row_count_caps_counts_and_rounds_fractions() -> None:
    rows = 121_711
    assert speech_row_count(2000, rows) == 2000
    assert speech_row_count(10**6, rows) == rows
    assert speech_row_count(0, rows) == 0
    assert speech_row_count(1.0, rows) == rows
    for fraction in (0.34, 1 / 3, 0.5, 0.999):
        count = speech_row_count(fraction, rows)
        assert abs(count - fraction * rows) <= 0.5
    assert speech_row_count(1e-9, rows) == 1  # a positive fraction never means no rows


def _bench_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", "tibetan", *extra])


def test_bench_tibetan_command_line_takes_a_count_or_a_fraction() -> None:
    default = _bench_args()
    assert default.speech == 2000 and default.speech_workers is None
    assert _bench_args("--speech", "0.34").speech == 0.34
    assert isinstance(_bench_args("--speech", "500").speech, int)
    assert _bench_args("--speech-workers", "2").speech_workers == 2


@pytest.mark.parametrize(
    "extra,problem",
    [
        (["--speech", "1.5"], r"argument --speech: a fraction .* must be in \(0, 1\]"),
        (["--speech", "-2"], "argument --speech: speech rows must be a count >= 0"),
        (["--speech-workers", "0"], "argument --speech-workers: must be a whole number >= 1"),
    ],
)
def test_bench_tibetan_command_line_refuses_bad_speech_options(
    extra: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _bench_args(*extra)
    assert info.value.code == 2
    assert re.search(problem, capsys.readouterr().err)


def test_bench_tibetan_refuses_a_bad_fraction_before_reading_the_corpus(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.tsv")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        bench_tibetan(tmp_path, TibetanSettings(corpus_path=absent, speech_items=1.5))
    with pytest.raises(ValueError, match="speech workers"):
        bench_tibetan(tmp_path, TibetanSettings(corpus_path=absent, speech_workers=0))
