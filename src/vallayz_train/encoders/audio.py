"""Audio shared by the data sets that hear speech: WAV files as 16 kHz mono audio, frame
features (MFCC frames in numpy, or the speech_embedding frames that ship with ``openwakeword``),
and frames resampled into a fixed number of nodes, each the mean of one segment of the utterance
(or single frames picked at even intervals)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vallayz.errors import VallayzUserError

SAMPLE_RATE = 16000


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


def audio_features(
    path: str | Path, kind: str = "mfcc", nodes: int = 16, pooling: str = "mean"
) -> np.ndarray:
    """``[1, nodes, d]`` features of a recorded WAV file: its frames (:func:`frame_extractor`)
    resampled into ``nodes`` nodes (:func:`resample_frames`), as a speech encoder makes them from
    synthesized audio."""
    frames = frame_extractor(kind)(read_wav(path))
    return resample_frames(frames, nodes, pooling)[None].astype(np.float32)
