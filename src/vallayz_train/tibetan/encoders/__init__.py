"""Encoders of the Tibetan benchmark, one module each: the Tibetan TF-IDF + SVD encoder and its
hashed n-gram ids (:mod:`~vallayz_train.tibetan.encoders.tibetan`), and generated speech
(:mod:`~vallayz_train.tibetan.encoders.speech`). English MiniLM, the audio frames and the cache
of every encoding are shared with the other data sets (:mod:`vallayz_train.encoders`)."""

from vallayz_train.tibetan.encoders.speech import (
    SpeechEncoder,
    available_workers,
    line_features,
    map_lines,
    phonetics,
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
    "TSHEG",
    "SpeechEncoder",
    "TibetanEncoder",
    "available_workers",
    "line_features",
    "map_lines",
    "phonetics",
    "speech_encoder",
    "syllables",
    "synthesize",
    "tibetan_features",
]
