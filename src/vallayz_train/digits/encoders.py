"""Readers and encoders of the spoken-digits benchmark.

* Speech: the Free Spoken Digit Dataset's WAV files (``{digit}_{speaker}_{take}.wav``, 8 kHz),
  resampled to 16 kHz, as a sequence of frame nodes: openwakeword's speech_embedding frames
  (``oww``, 96-d per 80 ms step; the clip is centred in :data:`OWW_SECONDS` of silence so that
  every clip yields the same :data:`OWW_NODES` frames), or, the cheap option, MFCC frames
  (20-d, 10 ms hop) averaged over :data:`MFCC_NODES` equal segments.
* Images: scikit-learn's bundled 8 × 8 handwritten digits (``load_digits``), 64-d in [0, 1].
* Words: MiniLM-L6 of the digit's English word.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vallayz_train.encoders import SAMPLE_RATE, frame_extractor, read_wav, resample_frames

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEECH_FEATURES = ("oww", "mfcc")
# Seconds of audio the speech_embedding model reads per clip (FSDD clips last 0.2-0.8 s): it
# makes one frame per 80 ms once it has 0.76 s, so 1.4 s give 8 frames.
OWW_SECONDS = 1.4
OWW_NODES = 8
MFCC_NODES = 16
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
EXTRA = "pip install 'vallayz[digits]'"


@dataclass(frozen=True)
class Recording:
    """One FSDD file."""

    path: Path
    digit: int
    speaker: str
    take: int


def read_recordings(folder: Path) -> list[Recording]:
    """Every ``{digit}_{speaker}_{take}.wav`` under ``folder`` (or its ``recordings/``),
    sorted by speaker, digit and take."""
    base = folder / "recordings" if (folder / "recordings").is_dir() else folder
    found = []
    for path in base.glob("*.wav"):
        match = _NAME.match(path.name)
        if match:
            found.append(Recording(path, int(match[1]), match[2], int(match[3])))
    return sorted(found, key=lambda r: (r.speaker, r.digit, r.take))


def speech_nodes(kind: str) -> int:
    """Nodes per clip of the speech features ``kind``."""
    if kind not in SPEECH_FEATURES:
        raise ValueError(f"speech features must be one of {SPEECH_FEATURES}, got {kind!r}")
    return OWW_NODES if kind == "oww" else MFCC_NODES


def _oww_frames() -> Callable[[np.ndarray], np.ndarray]:
    try:
        from openwakeword.utils import AudioFeatures
    except ImportError as err:
        raise ImportError(f"speech 'oww' needs openwakeword and onnxruntime ({EXTRA})") from err
    features = AudioFeatures(ncpu=1)
    length = round(OWW_SECONDS * SAMPLE_RATE)

    def frames_of(audio: np.ndarray) -> np.ndarray:
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[:length]
        pad = length - len(pcm)
        pcm = np.pad(pcm, (pad // 2, pad - pad // 2))
        return np.asarray(features._get_embeddings(pcm), dtype=np.float32)

    return frames_of


def speech_encoder(kind: str = "oww") -> Callable[[list[str]], np.ndarray]:
    """WAV paths → ``[N, nodes, d]`` float16 frame nodes (see the module docstring)."""
    nodes = speech_nodes(kind)
    frames_of = _oww_frames() if kind == "oww" else frame_extractor(kind)

    def encode(paths: list[str]) -> np.ndarray:
        out = [resample_frames(frames_of(read_wav(p)), nodes, "mean") for p in paths]
        return np.stack(out).astype(np.float16)

    return encode


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: ``([1797, 64] float32 in [0, 1], labels)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(f"the digit images come with scikit-learn ({EXTRA})") from err
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
