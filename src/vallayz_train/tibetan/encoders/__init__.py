"""Encoders of the Tibetan benchmark, one module each, every encoding cached on disk by content
hash (:mod:`~vallayz_train.tibetan.encoders.cache`): English MiniLM
(:mod:`~vallayz_train.tibetan.encoders.english`), the Tibetan TF-IDF + SVD encoder and its
hashed n-gram ids (:mod:`~vallayz_train.tibetan.encoders.tibetan`), and generated speech
(:mod:`~vallayz_train.tibetan.encoders.speech`)."""

from vallayz_train.tibetan.encoders.cache import cached_encode
from vallayz_train.tibetan.encoders.english import ENGLISH_MODEL, english_encoder
from vallayz_train.tibetan.encoders.speech import (
    FRAME_POOLINGS,
    SAMPLE_RATE,
    SPEECH_FEATURES,
    SpeechEncoder,
    audio_features,
    available_workers,
    frame_extractor,
    line_features,
    map_lines,
    mfcc,
    phonetics,
    read_wav,
    resample_frames,
    speech_encoder,
    synthesize,
)
from vallayz_train.tibetan.encoders.tibetan import (
    TSHEG,
    TibetanEncoder,
    syllables,
    tibetan_features,
)

__all__ = [
    "ENGLISH_MODEL",
    "FRAME_POOLINGS",
    "SAMPLE_RATE",
    "SPEECH_FEATURES",
    "TSHEG",
    "SpeechEncoder",
    "TibetanEncoder",
    "audio_features",
    "available_workers",
    "cached_encode",
    "english_encoder",
    "frame_extractor",
    "line_features",
    "map_lines",
    "mfcc",
    "phonetics",
    "read_wav",
    "resample_frames",
    "speech_encoder",
    "syllables",
    "synthesize",
    "tibetan_features",
]
