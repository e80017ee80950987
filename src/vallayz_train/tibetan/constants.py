"""Constants of the Tibetan benchmark: its directions, training defaults, speech and n-gram
settings. The command line, the benchmark and the ablations read them from here; the CPU-sized
model they share with the other benchmarks is in :mod:`vallayz_train.model_defaults`."""

from __future__ import annotations

from typing import Any

# speech->bo is the transliteration link: the spoken line against its own Tibetan text.
PAIRS = [
    (("bo",), "en"),
    (("en",), "bo"),
    (("speech",), "en"),
    (("speech",), "bo"),
    (("bo", "speech"), "en"),
]
ENCODER_DIR = "encoders"

# Speech nodes per utterance, and how the frames become them: the means of equal segments
# ("mean"), which let every frame reach a node, or single frames at even intervals ("pick").
# 16 segment means took IMPN's speech->bo R@1 from 0.024 (8 picked frames) to 0.368 on the
# validation split (BENCHMARKS.md, "Speech features").
SPEECH_NODES = 16
SPEECH_POOLING = "mean"
# Length of the hashed-feature id lists of a Tibetan line (90 % of lines have fewer features),
# and the default table size of the trainable embedding-bag front end every learned method gets.
TOKEN_LENGTH = 256
# Syllables per line that IMPN's token nodes take (Batch.node_ids; 95 % of lines have fewer),
# and the rows of their table when a config turns them on (IMPNConfig.token_nodes).
SYLLABLE_LENGTH = 48
SYLLABLE_BUCKETS = 2**16
TOKEN_BUCKETS = 2**16
# Peak learning rate of those tables when the command line and config file name none (the
# rest of each model trains at TrainConfig.lr): a bucket sees a gradient only in the batches
# that hold one of its n-grams. See BENCHMARKS.md, "Learning rates".
FRONT_END_LR = 3e-2
# Share of training rows whose n-gram ids are all withheld, so that every learned method also
# learns to read the fixed vector alone (the noise sweep withholds the ids of noisy rows).
TOKEN_ROW_DROPOUT = 0.2
# Optimizer steps of every learned method of the benchmark (an equal budget).
MAX_STEPS = 800
# The TrainConfig fields `bench tibetan` sets where the command line and config file name
# none; the rest (warm-up, validation and checkpoint intervals, batch size) are TrainConfig's.
# The command line and bench_tibetan() both start from TRAIN_DEFAULTS; the ablations'
# "--base bench" from FRONT_END_DEFAULTS (their budget is their own).
FRONT_END_DEFAULTS: dict[str, Any] = {
    "front_end_lr": FRONT_END_LR,
    "token_row_dropout": TOKEN_ROW_DROPOUT,
}
TRAIN_DEFAULTS: dict[str, Any] = {"max_steps": MAX_STEPS, **FRONT_END_DEFAULTS}
