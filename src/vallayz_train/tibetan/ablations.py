"""The named IMPN ablations of the Tibetan benchmark (``vallayz ablate``): micro-variants K,
noise sigma, top-k, GRU vs residual update, Tibetan syllables as nodes, the speech modality on
or off, speech as frame nodes or one pooled node, the speech features, loss terms, pair
weighting, learning rates, n-gram tables, bridge-layer initialisation, parts of the encoder
path left out (bridge attention, bridge feed-forward, final norm), what the decoded translation
reads, and the contrastive heads and the pairwise MLPs as the references.

Each variant is a :class:`~vallayz_train.bench.ablation.Variant`; the speech changes are
:class:`~vallayz_train.bench.ablation.DataChange` objects that build a linked copy of the data
folder with other speech files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.data import PairedEmbeddings
from vallayz_train.bench.ablation import Variant
from vallayz_train.tibetan.constants import SYLLABLE_BUCKETS
from vallayz_train.tibetan.data import encode_speech, write_speech_meta


def linked_copy(data_dir: Path, out: Path, write_speech: Callable[[Path], None]) -> Path:
    """A copy of the data directory (linked files, the speech presence mask included) whose
    other speech files ``write_speech`` writes into the folder it is given; built aside and
    moved into place, so an interrupted copy is built again rather than reused."""
    if (out / "items.tsv").exists():
        return out
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in data_dir.iterdir():
        if not path.name.startswith("speech.") or path.name == "speech.present.npy":
            (staging / path.name).symlink_to(path.resolve())
    write_speech(staging)
    staging.replace(out)
    return out


@dataclass(frozen=True)
class NoSpeech:
    """Trains without the speech modality (the data as it is, the model without speech)."""

    def prepare(self, data_dir: Path, out: Path) -> Path:
        return data_dir

    def model_changes(self, data_dir: Path) -> dict[str, Any]:
        dims = PairedEmbeddings(data_dir, check_values=False).modalities
        return {"modalities": {m: d for m, d in dims.items() if m != "speech"}}


@dataclass(frozen=True)
class PooledSpeech:
    """Speech mean-pooled over its real frames: one node instead of one per frame."""

    def prepare(self, data_dir: Path, out: Path) -> Path:
        def write(folder: Path) -> None:
            data = PairedEmbeddings(data_dir, check_values=False)
            batch = data.batch(np.arange(data.size), ["speech"])
            np.save(folder / "speech.npy", batch.pooled()["speech"].numpy().astype(np.float16))

        return linked_copy(data_dir, out / "data-pooled-speech", write)

    def model_changes(self, data_dir: Path) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class SpeechFeatures:
    """The speech rows' lines synthesized again and encoded as ``nodes`` nodes of ``kind``
    frames with ``pooling`` (see :func:`vallayz_train.tibetan.encoders.speech_encoder`;
    encodings cached under the ablation's ``cache/``)."""

    kind: str
    pooling: str
    nodes: int

    def prepare(self, data_dir: Path, out: Path) -> Path:
        def write(folder: Path) -> None:
            data = PairedEmbeddings(data_dir, check_values=False)
            rows = np.flatnonzero(data.present["speech"])
            lines = [data.items[int(r)]["text_speech"] for r in rows]
            frames = encode_speech(lines, self.kind, self.nodes, self.pooling, out / "cache")
            speech = np.zeros((data.size, *frames.shape[1:]), dtype=np.float16)
            speech[rows] = frames
            np.save(folder / "speech.npy", speech)
            write_speech_meta(folder, self.kind, self.nodes, self.pooling)

        folder = out / f"data-speech-{self.kind}-{self.pooling}-{self.nodes}"
        return linked_copy(data_dir, folder, write)

    def model_changes(self, data_dir: Path) -> dict[str, Any]:
        return {}


REFERENCE = "contrastive heads (reference)"
# The loss terms that read bridged states, the only ones through which a message is trained.
_MESSAGE_TERMS_OFF = {"translation": 0.0, "cycle": 0.0, "denoising": 0.0}
_CONTRASTIVE_ONLY = {"loss_weights": {**_MESSAGE_TERMS_OFF, "knn": 0.0, "orthogonality": 0.0}}
VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "K=1": Variant({"variants": 1}),
    "K=4": Variant({"variants": 4}),
    "sigma=0": Variant({"sigma": 0.0}),
    "sigma=0.2": Variant({"sigma": 0.2}),
    "top-k=1": Variant({"top_k": 1}),
    "top-k=16 (all)": Variant({"top_k": 16}),
    "GRU update": Variant({"update": "gru"}),
    "random-init bridge layers": Variant({"zero_init_residual": False}),
    "zero-init adapters": Variant({"zero_init_adapters": True}),
    "no adapter input norm": Variant({"adapter_norm": False}),
    "soil 256": Variant({"soil_dim": 256}),
    "soil 256, hidden 512": Variant({"soil_dim": 256, "hidden_dim": 512}),
    "no speech": Variant(data=NoSpeech()),
    "pooled speech": Variant(data=PooledSpeech()),
    "speech MFCC, 8 picked frames": Variant(data=SpeechFeatures("mfcc", "pick", 8)),
    "speech MFCC, 8 segment means": Variant(data=SpeechFeatures("mfcc", "mean", 8)),
    "speech MFCC, 16 segment means": Variant(data=SpeechFeatures("mfcc", "mean", 16)),
    "speech MFCC, 32 segment means": Variant(data=SpeechFeatures("mfcc", "mean", 32)),
    "speech oww, 8 picked frames": Variant(data=SpeechFeatures("oww", "pick", 8)),
    "speech oww, 8 segment means": Variant(data=SpeechFeatures("oww", "mean", 8)),
    "speech oww, 16 segment means": Variant(data=SpeechFeatures("oww", "mean", 16)),
    "no kNN term": Variant(train={"loss_weights": {"knn": 0.0}}),
    "equal pair weights": Variant(train={"pair_weighting": "equal"}),
    "lr=3e-4": Variant(train={"lr": 3e-4}),
    "lr=3e-3": Variant(train={"lr": 3e-3}),
    "lr=1e-2": Variant(train={"lr": 1e-2}),
    "front-end lr=1e-2": Variant(train={"front_end_lr": 1e-2}),
    "front-end lr=3e-2": Variant(train={"front_end_lr": 3e-2}),
    "front-end lr=1e-1": Variant(train={"front_end_lr": 1e-1}),
    "front-end lr=3e-2, rows without n-grams 0.2": Variant(
        train={"front_end_lr": 3e-2, "token_row_dropout": 0.2}
    ),
    "front-end lr=3e-2, rows without n-grams 0.2, planner on": Variant(
        train={"front_end_lr": 3e-2, "token_row_dropout": 0.2, "planner": True}
    ),
    "front-end lr=3e-2, n-gram dropout 0.2": Variant(
        train={"front_end_lr": 3e-2, "token_dropout": 0.2}
    ),
    "front-end lr=3e-2, n-gram dropout 0.5": Variant(
        train={"front_end_lr": 3e-2, "token_dropout": 0.5}
    ),
    "lr=3e-3, front-end lr=1e-2": Variant(train={"lr": 3e-3, "front_end_lr": 1e-2}),
    "n-gram table 2^17": Variant({"token_buckets": {"bo": 2**17}}),
    "n-gram table 2^18": Variant({"token_buckets": {"bo": 2**18}}),
    "selection over variants": Variant({"selection": "variants"}),
    "absent init: attend": Variant({"absent_init": "attend"}),
    "bridged term": Variant(train={"loss_weights": {"bridged": 1.0}}),
    "bridged term, absent init: attend": Variant(
        {"absent_init": "attend"}, {"loss_weights": {"bridged": 1.0}}
    ),
    "bridged term, absent init: attend, K=4": Variant(
        {"absent_init": "attend", "variants": 4}, {"loss_weights": {"bridged": 1.0}}
    ),
    "sigma cosine schedule": Variant(train={"sigma_schedule": "cosine"}),
    "re-ranking": Variant({"match_head": True}, {"loss_weights": {"rerank": 1.0}}),
    "bridged term, re-ranking": Variant(
        {"match_head": True},
        {"loss_weights": {"bridged": 1.0, "rerank": 1.0}, "retrieval_mode": "bridged"},
    ),
    "contrastive only": Variant(train=_CONTRASTIVE_ONLY),
    # The combinatorial term (fused queries): each subset of two present modalities, embedded
    # in one pass in which they exchange messages, against the third (score with --modes soil
    # fused to see late and fused rows of bo+speech->en).
    "combinatorial term": Variant(train={"loss_weights": {"combinatorial": 1.0}}),
    "combinatorial term 0.3": Variant(train={"loss_weights": {"combinatorial": 0.3}}),
    "combinatorial term 3": Variant(train={"loss_weights": {"combinatorial": 3.0}}),
    # The fused query with a learned weight per source (a gate over the present sources'
    # states, starting as the mean), trained on clean sources or with one source of half the
    # fused rows corrupted (white noise at 0-20 dB, tokens withheld), so that it can learn to
    # lean away from a junk source.
    "combinatorial term 0.3, fusion gate": Variant(
        {"fusion_gate": True}, {"loss_weights": {"combinatorial": 0.3}}
    ),
    "combinatorial term 0.3, fusion gate, corrupted sources": Variant(
        {"fusion_gate": True}, {"loss_weights": {"combinatorial": 0.3}, "fused_corruption": 0.5}
    ),
    # A second stage after the defaults (vallayz fit --fuse): a copy of the bridge layers and a
    # gate over the sources trained by the combinatorial term alone, everything else frozen, so
    # that the fused path cannot cost the shared space; with the gate alone; with half the rows
    # of each fused subset given one corrupted source.
    "fusion stage": Variant(fusion_stage_of="default"),
    "fusion stage, gate only": Variant(fusion_stage_of="default", fusion_parts="gate"),
    "fusion stage, corrupted sources": Variant(
        train={"fused_corruption": 0.5}, fusion_stage_of="default"
    ),
    "fusion stage, gate only, corrupted sources": Variant(
        train={"fused_corruption": 0.5}, fusion_stage_of="default", fusion_parts="gate"
    ),
    # The copied layers overfit the 4,700 training rows with three modalities at 250 steps
    # (their training loss halves while the fused validation R@1 falls): a tenth of the
    # learning rate, or 60 steps.
    "fusion stage, lr=1e-4": Variant(train={"lr": 1e-4}, fusion_stage_of="default"),
    "fusion stage, 60 steps": Variant(
        train={"max_steps": 60, "eval_every": 60, "checkpoint_every": 60, "warmup_steps": 15},
        fusion_stage_of="default",
    ),
    # Message passing off in training: the three terms that read the bridged states (translation,
    # cycle, denoising) are dropped, so no gradient passes through a message and the evaluated
    # shared space (each source embedded alone) is trained by InfoNCE, kNN and orthogonality.
    "no message passing": Variant(train={"loss_weights": _MESSAGE_TERMS_OFF}),
    # Each receiving node's gate scores its 8 nearest senders only (the bound that keeps the
    # gates' cost linear in the number of nodes).
    "sender candidates 8": Variant({"sender_candidates": 8}),
    # The syllables of each Tibetan line as nodes of the bo modality (a trainable table over
    # their hashed ids plus learned positions), after the pooled vector's node; with the gates
    # bounded as above, since up to 48 more nodes per row make scoring every sender pair ~11x
    # the cost of a step.
    "syllable nodes": Variant({"token_nodes": {"bo": SYLLABLE_BUCKETS}, "sender_candidates": 8}),
    # The same, with the pooled Tibetan state read from the pooled vector's node alone (the
    # syllable nodes reach it through attention), not averaged over every syllable.
    "syllable nodes, read out at the vector's node": Variant(
        {
            "token_nodes": {"bo": SYLLABLE_BUCKETS},
            "sender_candidates": 8,
            "token_nodes_in_pool": False,
        }
    ),
}
# What IMPN's decoded translation (into the target's native space) reads, one change each: the
# decoder reads the sources' pooled soil state instead of the absent target's (the shared-space
# translation), or both summed (a skip from the sources to the decoder), each also with the
# gradient stopped at the sources (so that only the decoder learns to read them); the absent
# target's nodes start from the sources' pooled state instead of a constant seed; the
# translation term weighed three times. "random-init bridge layers" (above) is the non-zero
# start of the cross-modal output projections (with the attention and feed-forward branches).
# The carry's training recipe chosen on validation: its translation term weighed 3, and every
# row translated (each row drops all but one of its modalities in the translation pass).
_TRANSLATE_EVERY_ROW = {"loss_weights": {"translation": 3.0}, "modality_dropout": 1.0}
TRANSLATION_VARIANTS: dict[str, Variant] = {
    "decode from the sources": Variant({"decode_from": "sources"}),
    "decode from target and sources": Variant({"decode_from": "both"}),
    "decode from the sources, detached": Variant({"decode_from": "sources", "decode_detach": True}),
    "decode from target and sources, detached": Variant(
        {"decode_from": "both", "decode_detach": True}
    ),
    "absent init: pool": Variant({"absent_init": "pool"}),
    "translation weight 3": Variant(train={"loss_weights": {"translation": 3.0}}),
    # A carried source code beside the soil state (IMPNConfig.carry_dim, the width of the
    # pairwise MLP translator's hidden layer): the decoder of an absent target adds a read of
    # the sources' code, trained by the translation and cycle terms; "detached" keeps those
    # terms out of the token front ends, which the soil space reads too.
    "carry the source": Variant({"carry_dim": 512}),
    "carry the source, detached": Variant({"carry_dim": 512, "carry_detach": True}),
    "carry the source, translation weight 3": Variant(
        {"carry_dim": 512}, train={"loss_weights": {"translation": 3.0}}
    ),
    "carry the source, translation weight 10": Variant(
        {"carry_dim": 512}, train={"loss_weights": {"translation": 10.0}}
    ),
    "carry the source, translation weight 3, every row translated": Variant(
        {"carry_dim": 512}, train=_TRANSLATE_EVERY_ROW
    ),
    # The carry with an n-gram table of its own (the MLP translator's input), weighed 3 with
    # every row translated.
    "carry the source, own n-gram table, translation weight 3, every row translated": Variant(
        {"carry_dim": 512, "carry_front_end": True}, train=_TRANSLATE_EVERY_ROW
    ),
    # The recipe with each row translated in both directions (the complement of every draw
    # translated too, as a pair of MLP translators trains): one direction per row against two.
    "carry the source, translation weight 3, every row translated both ways": Variant(
        {"carry_dim": 512}, train={**_TRANSLATE_EVERY_ROW, "translate_complement": True}
    ),
    "carry the source, own n-gram table, translation weight 3, every row translated both ways": (
        Variant(
            {"carry_dim": 512, "carry_front_end": True},
            train={**_TRANSLATE_EVERY_ROW, "translate_complement": True},
        )
    ),
    # The carry alone: an absent target decoded from the sources' code, its soil state unread.
    "decode from the carry alone": Variant({"carry_dim": 512, "decode_from": "carry"}),
    "carry the source, decode from the sources, detached": Variant(
        {"carry_dim": 512, "decode_from": "sources", "decode_detach": True}
    ),
}
VARIANTS.update(TRANSLATION_VARIANTS)
# Parts of the isolated encoder path (adapters, bridge layers, final norm) left out: with every
# loss term, and with InfoNCE alone from random bridge layers (the encoder-capacity probe).
ENCODER_PARTS: dict[str, dict[str, Any]] = {
    "no bridge attention": {"bridge_attention": False},
    "no bridge feed-forward": {"bridge_ffn": False},
    "no final norm": {"final_norm": False},
    "no bridge attention, feed-forward or final norm": {
        "bridge_attention": False,
        "bridge_ffn": False,
        "final_norm": False,
    },
}
ENCODER_PROBE = "contrastive only, random-init bridge layers"
VARIANTS[ENCODER_PROBE] = Variant({"zero_init_residual": False}, _CONTRASTIVE_ONLY)
for _name, _change in ENCODER_PARTS.items():
    VARIANTS[_name] = Variant(_change)
    VARIANTS[f"{ENCODER_PROBE}, {_name}"] = Variant(
        {**_change, "zero_init_residual": False}, _CONTRASTIVE_ONLY
    )
# Not IMPN: the CLIP-style heads with the same front end and budget, for reference, alone and
# with the changes of these IMPN variants, named "<REFERENCE>, <variant>" (of the model
# changes, only token_buckets applies to the heads).
VARIANTS[REFERENCE] = Variant(method="contrastive-heads")
# Not IMPN either: one MLP per ordered pair of modalities (the same front end and budget), the
# reference of the translation path.
MLP_REFERENCE = "pairwise MLP (reference)"
VARIANTS[MLP_REFERENCE] = Variant(method="mlp-translator")
for _name in (
    "lr=3e-3",
    "front-end lr=1e-2",
    "front-end lr=3e-2",
    "front-end lr=1e-1",
    "front-end lr=3e-2, rows without n-grams 0.2",
    "front-end lr=3e-2, n-gram dropout 0.2",
    "front-end lr=3e-2, n-gram dropout 0.5",
    "n-gram table 2^17",
    "n-gram table 2^18",
    "speech MFCC, 8 picked frames",
    "speech MFCC, 8 segment means",
    "speech MFCC, 16 segment means",
    "speech MFCC, 32 segment means",
    "speech oww, 8 segment means",
):
    VARIANTS[f"{REFERENCE}, {_name}"] = replace(VARIANTS[_name], method="contrastive-heads")

# The ladder from the contrastive heads to IMPN: one change per rung, each rung keeping the
# changes of the rungs before it (``vallayz ablate --only "ladder 0: ..." ...``). Rungs 0-3 grow
# the heads into FuseMix's adapters; rungs 4-8 grow IMPN's encoder path (trained by InfoNCE
# alone) back into the default IMPN, so the step between rung 3 and rung 4 is the change from
# a per-modality MLP adapter to IMPN's adapter and soil space.
_ENCODER_ONLY = {"bridge_attention": False, "bridge_ffn": False}
LADDER: dict[str, Variant] = {
    "ladder 0: contrastive heads (linear, fixed temperature 0.07)": Variant(
        method="contrastive-heads"
    ),
    "ladder 1: + input LayerNorm and a learned temperature (FuseMix, no blocks)": Variant(
        {"depth": 0, "mixup": False, "dropout": 0.0}, method="fusemix"
    ),
    # Rung 1 split in two: the input LayerNorm alone, the temperature fixed as the heads' is.
    "ladder 1a: + input LayerNorm only (FuseMix, no blocks, temperature fixed at 0.07)": Variant(
        {"depth": 0, "mixup": False, "dropout": 0.0, "learn_temperature": False},
        method="fusemix",
    ),
    "ladder 2: + two residual MLP blocks (FuseMix adapter, dropout 0.1)": Variant(
        {"depth": 2, "mixup": False, "dropout": 0.1}, method="fusemix"
    ),
    # Rung 2 with the temperature fixed as the heads' is: the cost of the MLP blocks alone.
    "ladder 2a: + two residual MLP blocks, temperature fixed at 0.07 (no mixup)": Variant(
        {"depth": 2, "mixup": False, "dropout": 0.1, "learn_temperature": False},
        method="fusemix",
    ),
    "ladder 3: + latent mixup (FuseMix as published)": Variant(
        {"depth": 2, "mixup": True, "dropout": 0.1}, method="fusemix"
    ),
    "ladder 4: IMPN adapter, modality embedding and final norm only (InfoNCE)": Variant(
        {**_ENCODER_ONLY, "layers": 1}, _CONTRASTIVE_ONLY
    ),
    "ladder 5: + one bridge layer (within-modality attention and feed-forward)": Variant(
        {"layers": 1}, _CONTRASTIVE_ONLY
    ),
    "ladder 6: + a second bridge layer": Variant(train=_CONTRASTIVE_ONLY),
    "ladder 7: + kNN and orthogonality terms": Variant(train={"loss_weights": _MESSAGE_TERMS_OFF}),
    "ladder 8: + the message-passing terms (IMPN, defaults)": Variant(),
    # Rung 4 and rung 8 with the adapter that rung 2a shows the heads are better without: a
    # linear map alone (no MLP branch), or the MLP branch starting at zero (the adapter starts
    # as its linear projection and learns the branch).
    "ladder 4l: rung 4 with a linear adapter (no MLP branch)": Variant(
        {**_ENCODER_ONLY, "layers": 1, "adapter_branch": False}, _CONTRASTIVE_ONLY
    ),
    "ladder 4z: rung 4 with the adapter's MLP branch starting at zero": Variant(
        {**_ENCODER_ONLY, "layers": 1, "zero_init_adapters": True}, _CONTRASTIVE_ONLY
    ),
    "ladder 8l: rung 8 (IMPN) with a linear adapter (no MLP branch)": Variant(
        {"adapter_branch": False}
    ),
    "ladder 8z: rung 8 (IMPN) with the adapter's MLP branch starting at zero": Variant(
        {"zero_init_adapters": True}
    ),
    # Rung 4l reads the sentence vectors better and the speech frames worse than rung 4: the
    # linear adapter for the two sentence vectors only, the speech frames keeping the MLP.
    "ladder 4m: rung 4 with linear adapters for bo and en (MLP for the speech frames)": Variant(
        {**_ENCODER_ONLY, "layers": 1, "linear_adapters": ["bo", "en"]}, _CONTRASTIVE_ONLY
    ),
    "ladder 8m: rung 8 (IMPN) with linear adapters for bo and en (MLP for speech)": Variant(
        {"linear_adapters": ["bo", "en"]}
    ),
    # Where the linear adapter's gain (rung 4l) is lost on the way to rung 8l.
    "ladder 5l: rung 4l + one bridge layer (within-modality attention and feed-forward)": Variant(
        {"layers": 1, "adapter_branch": False}, _CONTRASTIVE_ONLY
    ),
    # Rung 5l loses rung 4l's gain: whether the bridge layers' feed-forward (a per-node MLP,
    # like the adapter's branch) is what costs, with IMPN's every other part in place.
    "ladder 8f: rung 8l without the bridge layers' feed-forward": Variant(
        {"adapter_branch": False, "bridge_ffn": False}
    ),
}
VARIANTS.update(LADDER)
# FuseMix's validation search (issue #29 asks for the same search as IMPN's): depth and dropout
# of the residual blocks, with latent mixup as published and the temperature fixed at 0.07
# (ladder rung 1 shows the learned one falls to 0.026 in 250 steps and costs 8.7 points).
FUSEMIX_SEARCH: dict[str, Variant] = {
    f"fusemix search: depth {depth}, dropout {dropout}": Variant(
        {"depth": depth, "dropout": dropout, "mixup": True, "learn_temperature": False},
        method="fusemix",
    )
    for depth in (1, 2, 4)
    for dropout in (0.1, 0.6)
}
VARIANTS.update(FUSEMIX_SEARCH)
# Not IMPN: the heads reading speech frames and other node inputs through their own small
# sequence reader (one self-attention layer and attention pooling), the baseline that IMPN's
# speech results must beat.
VARIANTS["sequence-aware heads (reference)"] = Variant(method="seq-heads")
# Its depth searched as IMPN's settings were: attention pooling alone, or two layers before it.
VARIANTS["sequence-aware heads, pooling only"] = Variant({"seq_layers": 0}, method="seq-heads")
VARIANTS["sequence-aware heads, two layers"] = Variant({"seq_layers": 2}, method="seq-heads")
