"""Generated speech: Tibetan → phonetics (``bophono``, KVP scheme, syllable by syllable; Wylie
with ``pyewts`` as fallback) → ``espeak-ng`` → 16 kHz audio → frames → a fixed number of nodes
(frames and nodes as :mod:`vallayz_train.encoders.audio` makes them).

Lines are independent, so a :class:`SpeechEncoder` can spread them over a pool of worker
processes; each line's features are the same whichever process made them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import tempfile
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError
from vallayz_train.encoders.audio import (
    FRAME_POOLINGS,
    SAMPLE_RATE,
    SPEECH_FEATURES,
    frame_extractor,
    resample_frames,
)
from vallayz_train.tibetan.encoders.tibetan import TSHEG, syllables

# Seconds one espeak-ng call may take before the line counts as failed (a line takes ~0.04 s).
ESPEAK_TIMEOUT_S = 120.0


@functools.lru_cache(maxsize=1)
def _transcribers() -> tuple[Any, Any]:
    """The ``bophono`` converter and the ``pyewts`` transliterator, built once per process
    (building the converter costs more than transcribing a line with it)."""
    try:
        import bophono
        import pyewts
    except ImportError as err:
        raise ImportError(
            "speech needs bophono and pyewts (pip install 'vallayz[tibetan]')"
        ) from err
    return bophono.UnicodeToApi(schema="KVP", options={}), pyewts.pyewts()


def phonetics(text: str) -> str:
    """A readable phonetic transcription of a Tibetan line (no shad or punctuation).

    Syllables go through ``bophono`` (KVP scheme); those it cannot read (Sanskrit
    transliterations, stray vowel signs) fall back to Wylie from ``pyewts``.
    """
    converter, wylie = _transcribers()
    words = []
    for syllable in syllables(text):
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                word = converter.get_api(syllable + TSHEG)
            except Exception:  # bophono raises assorted errors on unusual stacks
                word = None
        if not word:
            word = re.sub(r"[^a-zA-Z']+", "", wylie.toWylie(syllable))
        if word:
            words.append(word)
    return " ".join(words)


def _espeak() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise VallayzUserError("espeak-ng is not installed; on Debian: apt-get install espeak-ng")
    return binary


def synthesize(text: str, voice: str = "en-us") -> np.ndarray:
    """``espeak-ng`` speech of ``text`` as 16 kHz float32 audio."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    binary = _espeak()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        subprocess.run(
            [binary, "-v", voice, "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=ESPEAK_TIMEOUT_S,
        )
        rate, audio = wavfile.read(path)
    audio = audio.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return audio


@functools.cache
def _process_extractor(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`frame_extractor` of ``kind``, built once per process."""
    return frame_extractor(kind)


def line_features(
    text: str, kind: str = "mfcc", nodes: int = 16, pooling: str = "mean"
) -> np.ndarray:
    """The speech nodes of one Tibetan line: phonetics → ``espeak-ng`` → frames → nodes.

    Shape:
        ``str`` → ``[nodes, d]`` (float32).
    """
    frames = _process_extractor(kind)(synthesize(phonetics(text)))
    return resample_frames(frames, nodes, pooling)


def available_workers() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int | None) -> int:
    """``workers`` as a process count (``None``: every available core); at least 1."""
    if workers is None:
        return available_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"speech workers must be a whole number >= 1 (1: no worker processes), got {workers!r}"
        )
    return workers


class _WorkerError(Exception):
    """The traceback of an error raised in a worker process, kept as the cause."""


def _guarded(fn: Callable[[str], np.ndarray], text: str) -> tuple[bool, Any]:
    """Runs ``fn(text)`` in a worker: ``(True, result)``, or ``(False, (summary, traceback))``
    so that any error reaches the parent as text, whatever its type."""
    try:
        return True, fn(text)
    except Exception as err:
        return False, (_describe(err), traceback.format_exc())


def _describe(err: BaseException) -> str:
    summary = f"{type(err).__name__}: {err}"
    stderr = getattr(err, "stderr", None)
    if isinstance(err, subprocess.CalledProcessError) and stderr:
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr)
        summary += f" ({text.strip()[-300:]})"
    return summary


def _line_error(index: int, total: int, text: str, problem: str) -> VallayzUserError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return VallayzUserError(
        f"speech of line {index + 1} of {total} in this batch failed: {shown!r}: {problem}"
    )


def map_lines(
    fn: Callable[[str], np.ndarray],
    texts: list[str],
    pool: ProcessPoolExecutor | None = None,
) -> list[np.ndarray]:
    """``[fn(t) for t in texts]``, in the input order, in ``pool``'s processes when given.

    ``fn`` must be picklable (a module-level function, or a ``functools.partial`` of one).
    An error on a line, or a worker process that dies, raises
    :class:`~vallayz.errors.VallayzUserError` naming the line; nothing waits forever.
    """
    if pool is None:
        out = []
        for index, text in enumerate(texts):
            try:
                out.append(fn(text))
            except (VallayzUserError, ImportError):
                raise
            except Exception as err:
                raise _line_error(index, len(texts), text, _describe(err)) from err
        return out
    futures: list[Future[tuple[bool, Any]]] = [pool.submit(_guarded, fn, t) for t in texts]
    try:
        out = []
        for index, future in enumerate(futures):
            try:
                ok, value = future.result()
            except BrokenProcessPool as err:
                raise _line_error(
                    index,
                    len(texts),
                    texts[index],
                    "a worker process died (killed, out of memory, or a crash in a native "
                    "library) while synthesizing this line or one started just after it",
                ) from err
            if not ok:
                summary, remote = value
                raise _line_error(index, len(texts), texts[index], summary) from (
                    _WorkerError(remote)
                )
            out.append(value)
        return out
    finally:
        for future in futures:
            future.cancel()


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Ends ``pool``'s worker processes at once (the executor then marks itself broken)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()


def _leave_interrupts_to_the_parent() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group, and a worker interrupted
    while reading its task queue would leave the queue half read and the pool hung at
    shutdown; the parent handles it and stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SpeechEncoder:
    """Tibetan lines → ``[N, nodes, d]`` frame features of their synthesized speech.

    Frames come from :func:`frame_extractor`; each utterance becomes ``nodes`` nodes by
    :func:`resample_frames` with ``pooling`` (:func:`line_features`). With ``workers`` > 1
    the lines of a call are spread over that many worker processes, started at the first call
    with two lines or more and kept until :meth:`close`; the result is in the input order and
    equal to the one-process result. ``workers=1`` encodes in this process.

    Workers are started with ``spawn``, so a script that runs one with ``workers`` > 1 needs
    the usual ``if __name__ == "__main__":`` guard around its top-level code.
    """

    def __init__(
        self,
        kind: str = "mfcc",
        nodes: int = 16,
        pooling: str = "mean",
        workers: int | None = None,
    ) -> None:
        if kind not in SPEECH_FEATURES:
            raise ValueError(f"speech features must be one of {SPEECH_FEATURES}, got {kind!r}")
        if pooling not in FRAME_POOLINGS:
            raise ValueError(f"speech pooling must be one of {FRAME_POOLINGS}, got {pooling!r}")
        if nodes < 1:
            raise ValueError(f"speech nodes must be >= 1, got {nodes}")
        self.kind = kind  # frame features, one of SPEECH_FEATURES
        self.nodes = nodes  # nodes per utterance
        self.pooling = pooling  # frames → nodes, one of FRAME_POOLINGS
        self.workers = check_workers(workers)  # processes that synthesize (1: this one)
        # Missing packages fail now, in this process, rather than once per line in a worker.
        if self.workers == 1:
            _process_extractor(kind)
        elif kind == "oww" and not all(
            importlib.util.find_spec(name) for name in ("openwakeword", "onnxruntime")
        ):
            raise ImportError("speech 'oww' needs openwakeword and onnxruntime")
        self._pool: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _line(self) -> Callable[[str], np.ndarray]:
        return functools.partial(
            line_features, kind=self.kind, nodes=self.nodes, pooling=self.pooling
        )

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # "spawn": a worker never inherits the parent's threads or locks (torch, tqdm).
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_leave_interrupts_to_the_parent,
            )
            self._finalizer = weakref.finalize(
                self, self._pool.shutdown, wait=False, cancel_futures=True
            )
        return self._pool

    def __call__(self, texts: list[str]) -> np.ndarray:
        """The features of ``texts``, in their order.

        Shape:
            ``N`` lines → ``[N, nodes, d]`` (float16).
        """
        _espeak()  # a missing espeak-ng or bophono is reported once, not per line
        _transcribers()
        pool = self._executor() if self.workers > 1 and len(texts) > 1 else None
        try:
            out = map_lines(self._line(), texts, pool)
        except VallayzUserError as err:
            if isinstance(err.__cause__, BrokenProcessPool):
                self.close()  # a broken pool takes no more work; the next call starts anew
            raise
        except BaseException:
            # Ctrl-C: the workers hold nothing worth waiting for (a chunk is cached whole).
            self._stop(terminate=True)
            raise
        return np.stack(out).astype(np.float16)

    def close(self) -> None:
        """Stops the worker processes (a later call starts new ones)."""
        self._stop(terminate=False)

    def _stop(self, terminate: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        try:
            if terminate:
                _terminate_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
        except BaseException:
            # Interrupted while waiting: never leave workers that the interpreter would wait
            # for at exit.
            _terminate_workers(pool)
            raise

    def __enter__(self) -> SpeechEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def speech_encoder(
    kind: str = "mfcc", nodes: int = 16, pooling: str = "mean", workers: int | None = None
) -> SpeechEncoder:
    """Tibetan lines → ``[N, nodes, d]`` frame features of their synthesized speech
    (a :class:`SpeechEncoder`; ``workers=None`` uses every available core).

    Shape:
        ``N`` lines → ``[N, nodes, d]``.
    """
    return SpeechEncoder(kind, nodes, pooling, workers)


def speech_amount(value: int | float | str) -> int | float:
    """How many rows get speech: a count (a whole number >= 0) or a fraction of the rows (a
    number with a decimal point, in (0, 1]). Text is read the same way: ``"2000"`` is a
    count, ``"0.34"`` and ``"1.0"`` are fractions.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"speech rows must be a count such as 2000 or a fraction of the rows such "
                    f"as 0.34, got {text!r}"
                ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"speech rows must be an int count or a float fraction, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"speech rows must be a count >= 0, got {value}")
        return int(value)
    if not 0.0 < value <= 1.0:  # also refuses NaN
        raise ValueError(
            f"a fraction of the rows with speech must be in (0, 1], got {value} "
            f"(a whole number is a count of rows, 0 none)"
        )
    return float(value)


def speech_row_count(amount: int | float, rows: int) -> int:
    """The number of rows with speech out of ``rows``: a count is capped at ``rows``; a
    fraction is rounded to the nearest row, and at least one row."""
    amount = speech_amount(amount)
    if isinstance(amount, int):
        return min(amount, rows)
    return min(rows, max(1, round(amount * rows)))
