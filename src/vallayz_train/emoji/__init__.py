"""The emoji benchmark: Twemoji images (EfficientNet-lite0) ↔ their CLDR label and tags (MiniLM)."""

from __future__ import annotations

from vallayz_train.names import CLOSED_FORM_METHODS

# The closed-form maps bench emoji fits by default. The affine map is left out: its 500
# full-batch gradient steps on a 1,280 x 1,280 float64 matrix over ~1,070 anchors cost more CPU
# time than the whole rest of the benchmark; it is the linear map's model class plus a bias,
# and --closed-form ortho l-ortho linear affine fits it too.
DEFAULT_CLOSED_FORM = tuple(m for m in CLOSED_FORM_METHODS if m != "affine")
