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


@pytest.fixture(params=[False, True], ids=["random-bridge", "default-zero-init"])
def model(request: pytest.FixtureRequest) -> IMPN:
    """A tiny model with random bridge layers, and one with the library default
    (``zero_init_residual=True``, the bridge starting as the identity) that users get."""
    return IMPN(tiny_config(zero_init_residual=request.param)).eval()


def tri_modal_inputs(batch: int = 5, frames: int = 4) -> dict[str, torch.Tensor]:
    """Pooled text and image, frame sequence for audio."""
    return {
        "text": torch.randn(batch, DIMS["text"]),
        "audio": torch.randn(batch, frames, DIMS["audio"]),
        "image": torch.randn(batch, DIMS["image"]),
    }


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command line printed on stderr, checked to be one line and no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def never(*args: object, **kwargs: object) -> None:
    """A stand-in for a step that the settings' checks must stop before."""
    raise AssertionError("reached a step that the settings' check should have stopped")
