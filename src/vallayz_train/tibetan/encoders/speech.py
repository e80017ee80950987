"""Generated speech: Tibetan → phonetics (``bophono``, KVP scheme, syllable by syllable; Wylie
with ``pyewts`` as fallback) → ``espeak-ng`` → 16 kHz audio → MFCC frames (numpy), or the
speech_embedding frames that ship with ``openwakeword`` → a fixed number of nodes, each the mean
of one segment of the utterance (or single frames picked at even intervals).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vallayz.errors import VallayzUserError
from vallayz_train.tibetan.encoders.tibetan import TSHEG, syllables

SAMPLE_RATE = 16000


def phonetics(text: str) -> str:
    """A readable phonetic transcription of a Tibetan line (no shad or punctuation).

    Syllables go through ``bophono`` (KVP scheme); those it cannot read (Sanskrit
    transliterations, stray vowel signs) fall back to Wylie from ``pyewts``.
    """
    try:
        import bophono
        import pyewts
    except ImportError as err:
        raise ImportError(
            "speech needs bophono and pyewts (pip install 'vallayz[tibetan]')"
        ) from err
    converter = bophono.UnicodeToApi(schema="KVP", options={})
    wylie = pyewts.pyewts()
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


def synthesize(text: str, voice: str = "en-us") -> np.ndarray:
    """``espeak-ng`` speech of ``text`` as 16 kHz float32 audio."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    binary = shutil.which("espeak-ng")
    if binary is None:
        raise VallayzUserError("espeak-ng is not installed; on Debian: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        subprocess.run(
            [binary, "-v", voice, "-w", str(path), text], check=True, capture_output=True
        )
        rate, audio = wavfile.read(path)
    audio = audio.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return audio


def read_wav(path: str | Path) -> np.ndarray:
    """A WAV file as mono 16 kHz float32 audio."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    try:
        rate, audio = wavfile.read(str(path))
    except (OSError, ValueError) as err:
        raise VallayzUserError(f"cannot read {path} as a WAV file ({err})") from err
    audio = audio.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if np.abs(audio).max(initial=0) > 1.5:
        audio /= 32768.0
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return audio


def _mel_filters(n_mels: int, n_fft: int, rate: int) -> np.ndarray:
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(rate / 2)), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.floor((n_fft + 1) * hz / rate).astype(int)
    filters = np.zeros((n_mels, n_fft // 2 + 1), np.float32)
    for m in range(1, n_mels + 1):
        left, centre, right = bins[m - 1], bins[m], bins[m + 1]
        for k in range(left, centre):
            filters[m - 1, k] = (k - left) / max(1, centre - left)
        for k in range(centre, right):
            filters[m - 1, k] = (right - k) / max(1, right - centre)
    return filters


_FILTERS = _mel_filters(40, 512, SAMPLE_RATE)


def mfcc(audio: np.ndarray, n_mfcc: int = 20, hop: int = 160, window: int = 400) -> np.ndarray:
    """MFCC frames (25 ms windows, 10 ms hop), with per-utterance mean normalisation.

    Shape:
        ``[samples]`` → ``[frames, n_mfcc]``.
    """
    from scipy.fft import dct

    audio = np.pad(audio, (0, max(0, window - len(audio))))
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop] * np.hamming(window)
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2 / 512
    log_mel = np.log(power @ _FILTERS.T + 1e-8)
    coeffs = dct(log_mel, type=2, axis=1, norm="ortho")[:, :n_mfcc]
    return (coeffs - coeffs.mean(axis=0)).astype(np.float32)


# How resample_frames turns frames into nodes.
FRAME_POOLINGS = ("mean", "pick")


def resample_frames(frames: np.ndarray, count: int, pooling: str = "mean") -> np.ndarray:
    """``count`` nodes from a variable number of frames.

    ``mean`` splits the frames into ``count`` contiguous segments of (nearly) equal length and
    averages each, so every frame of the utterance reaches a node; ``pick`` keeps single frames
    at even intervals (one 25 ms MFCC frame per node, the rest of the utterance unseen). With
    fewer frames than nodes, both repeat frames.

    Shape:
        ``[T, d]`` → ``[count, d]``.
    """
    if pooling not in FRAME_POOLINGS:
        raise ValueError(f"speech pooling must be one of {FRAME_POOLINGS}, got {pooling!r}")
    if count < 1 or len(frames) == 0:
        raise ValueError(f"need at least one frame and one node, got {len(frames)} and {count}")
    total = len(frames)
    if pooling == "pick" or total < count:
        index = np.linspace(0, total - 1, count).round().astype(int)
        return frames[index]
    # Frame t belongs to segment floor(t count / T), so segment i holds the frames
    # [ceil(i T / count), ceil((i + 1) T / count)): never empty when T >= count.
    bounds = -((-np.arange(count + 1) * total) // count)
    sums = np.concatenate([np.zeros((1, frames.shape[1])), np.cumsum(frames, axis=0)])
    lengths = np.diff(bounds)[:, None]
    return ((sums[bounds[1:]] - sums[bounds[:-1]]) / lengths).astype(frames.dtype)


# The frame features a speech encoder can read, the cheapest first.
SPEECH_FEATURES = ("mfcc", "oww")


def frame_extractor(kind: str = "mfcc") -> Callable[[np.ndarray], np.ndarray]:
    """16 kHz audio → frame features: ``mfcc`` (20-d MFCC frames) or ``oww`` (the 96-d
    speech_embedding frames of ``openwakeword``, which needs ``onnxruntime``).

    Shape:
        ``[samples]`` → ``[frames, d]``.
    """
    if kind == "mfcc":
        return mfcc
    if kind not in SPEECH_FEATURES:
        raise ValueError(f"speech features must be one of {SPEECH_FEATURES}, got {kind!r}")
    try:
        from openwakeword.utils import AudioFeatures
    except ImportError as err:
        raise ImportError("speech 'oww' needs openwakeword and onnxruntime") from err
    features = AudioFeatures(ncpu=1)

    def frames_of(audio: np.ndarray) -> np.ndarray:
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        pcm = np.pad(pcm, (0, max(0, 2 * SAMPLE_RATE - len(pcm))))
        return np.asarray(features._get_embeddings(pcm), dtype=np.float32)

    return frames_of


def speech_encoder(
    kind: str = "mfcc", nodes: int = 16, pooling: str = "mean"
) -> Callable[[list[str]], np.ndarray]:
    """Tibetan lines → ``[N, nodes, d]`` frame features of their synthesized speech.

    Frames come from :func:`frame_extractor`; each utterance becomes ``nodes`` nodes by
    :func:`resample_frames` with ``pooling``.
    """
    frames_of = frame_extractor(kind)

    def encode(texts: list[str]) -> np.ndarray:
        out = [resample_frames(frames_of(synthesize(phonetics(t))), nodes, pooling) for t in texts]
        return np.stack(out).astype(np.float16)

    return encode


def audio_features(
    path: str | Path, kind: str = "mfcc", nodes: int = 16, pooling: str = "mean"
) -> np.ndarray:
    """``[1, nodes, d]`` features of a recorded WAV file, as :func:`speech_encoder` makes them."""
    frames = frame_extractor(kind)(read_wav(path))
    return resample_frames(frames, nodes, pooling)[None].astype(np.float32)
