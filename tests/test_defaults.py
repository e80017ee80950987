"""The library's default model configuration, which the fast fixtures of other tests change
(``zero_init_residual`` off, so that an untrained bridge already passes messages)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import DIMS, tiny_config, tri_modal_inputs

from vallayz import IMPN, IMPNConfig
from vallayz.losses import IMPNLoss
from vallayz.types import Batch


def _partial_batch() -> Batch:
    present = {
        "text": torch.tensor([True, True, False, True, True]),
        "audio": torch.tensor([True, False, True, False, True]),
        "image": torch.tensor([False, True, True, True, True]),
    }
    return Batch.of(tri_modal_inputs(5), present=present)


def _residual_projections(model: IMPN) -> list[torch.nn.Linear]:
    out = []
    for layer in model.layers:
        out += [layer.attention.proj, layer.ffn.down]
        if layer.cross.out is not None:
            out.append(layer.cross.out)
    return out


def _message_effect(model: IMPN, batch: Batch) -> float:
    """Largest change that cross-modal messages make to any soil vector."""
    with torch.no_grad():
        full, alone = model(batch).soil, model(batch, isolate=True).soil
    return max(float((full[m] - alone[m]).abs().max()) for m in DIMS)


def test_the_default_config_starts_every_bridge_layer_as_the_identity() -> None:
    assert IMPNConfig(modalities=dict(DIMS)).zero_init_residual is True
    batch = _partial_batch()
    default = IMPN(tiny_config(zero_init_residual=True)).eval()
    # Documented: an untrained model maps each modality through its adapter alone.
    assert _message_effect(default, batch) == 0.0
    assert all(float(p.weight.detach().abs().sum()) == 0 for p in _residual_projections(default))
    # The same check on random bridge layers sees the messages.
    assert _message_effect(IMPN(tiny_config(zero_init_residual=False)).eval(), batch) > 1e-3


def test_the_default_config_learns_to_pass_messages(tmp_path: Path) -> None:
    # Zero residual branches must not trap training at the identity: the zeroed projections get
    # gradient at the first step, the loss falls, and messages then change the output.
    generator = torch.Generator().manual_seed(0)
    data = tri_modal_inputs(32)
    model = IMPN(tiny_config(zero_init_residual=True)).train()
    loss = IMPNLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def evaluate() -> float:
        with torch.no_grad():
            return float(loss(model, data, torch.Generator().manual_seed(123)).total)

    before = evaluate()
    for step in range(20):
        optimizer.zero_grad()
        loss(model, data, generator).total.backward()
        if step == 0:
            for linear in _residual_projections(model):
                assert linear.weight.grad is not None
                assert float(linear.weight.grad.abs().sum()) > 0
        optimizer.step()
    assert evaluate() < before
    model.eval()
    assert _message_effect(model, _partial_batch()) > 1e-3
    # And the trained default round-trips through save_pretrained.
    model.save_pretrained(tmp_path)
    loaded = IMPN.from_pretrained(tmp_path).eval()
    batch = _partial_batch()
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    for name in DIMS:
        assert torch.equal(a.decoded[name], b.decoded[name])
    assert loaded.config.zero_init_residual is True
