"""Encoders that several data sets use, and the cache every encoding goes through: encodings
cached on disk by content hash (:mod:`~vallayz_train.encoders.cache`), English MiniLM
(:mod:`~vallayz_train.encoders.english`), and audio as frame features and nodes
(:mod:`~vallayz_train.encoders.audio`). Encoders of one data set only live in its package."""

from vallayz_train.encoders.audio import (
    FRAME_POOLINGS,
    SAMPLE_RATE,
    SPEECH_FEATURES,
    audio_features,
    frame_extractor,
    mfcc,
    read_wav,
    resample_frames,
)
from vallayz_train.encoders.cache import cached_encode
from vallayz_train.encoders.english import ENGLISH_MODEL, english_encoder

__all__ = [
    "ENGLISH_MODEL",
    "FRAME_POOLINGS",
    "SAMPLE_RATE",
    "SPEECH_FEATURES",
    "audio_features",
    "cached_encode",
    "english_encoder",
    "frame_extractor",
    "mfcc",
    "read_wav",
    "resample_frames",
]
