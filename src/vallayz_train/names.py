"""The names of the methods every command, benchmark and the trainer offer, in one place.

Spelled here, not imported from the library, so that building the command line imports
nothing heavy; ``tests/test_names.py`` checks them against the library's own lists
(:data:`vallayz.learned.ARCHITECTURES`, :data:`vallayz.baselines.METHODS`,
:data:`vallayz.multiway.MULTIWAY_METHODS`). A new method is added to the library's list and
here.
"""

from __future__ import annotations

# Methods the trainer trains into a run folder: IMPN and the learned baselines
# (vallayz.learned.ARCHITECTURES), in the order the benchmark tables list them.
LEARNED_METHODS: tuple[str, ...] = (
    "impn",
    "contrastive-heads",
    "mlp-translator",
    "seq-heads",
    "fusemix",
)
# Closed-form maps fitted on the training rows: the pairwise maps of vallayz.baselines, then
# the multi-way ones of vallayz.multiway (fitted on every modality at once).
PAIRWISE_CLOSED_FORM: tuple[str, ...] = ("ortho", "l-ortho", "linear", "affine")
MULTIWAY_CLOSED_FORM: tuple[str, ...] = ("cca", "gpa", "gcpa")
CLOSED_FORM_METHODS: tuple[str, ...] = PAIRWISE_CLOSED_FORM + MULTIWAY_CLOSED_FORM
# Retrieval paths `vallayz ablate` scores: soil (sources embedded alone, averaged: late
# fusion), bridged, fused (several sources in one message-passing pass) and translate (queries
# decoded into the target's native space).
ABLATION_MODES: tuple[str, ...] = ("soil", "bridged", "fused", "translate")
