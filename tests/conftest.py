from __future__ import annotations

import pytest
import torch

from vallayz import IMPN, IMPNConfig

DIMS = {"text": 12, "audio": 6, "image": 16}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_config(**overrides: object) -> IMPNConfig:
    fields: dict[str, object] = {
        "modalities": dict(DIMS),
        "soil_dim": 16,
        "layers": 2,
        "heads": 2,
        "variants": 3,
        "top_k": 3,
        "sigma": 0.1,
        "gate_hidden": 8,
        "ffn_mult": 2,
        # Random bridge layers, so that an untrained model already passes messages that
        # change its output (the library's default starts them as the identity).
        "zero_init_residual": False,
    }
    fields.update(overrides)
    return IMPNConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def model() -> IMPN:
    return IMPN(tiny_config()).eval()


def tri_modal_inputs(batch: int = 5, frames: int = 4) -> dict[str, torch.Tensor]:
    """Pooled text and image, frame sequence for audio."""
    return {
        "text": torch.randn(batch, DIMS["text"]),
        "audio": torch.randn(batch, frames, DIMS["audio"]),
        "image": torch.randn(batch, DIMS["image"]),
    }
