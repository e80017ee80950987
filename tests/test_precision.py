"""bfloat16 autocast: a training step of IMPN runs under it on the CPU (the ops it covers run in
bfloat16, the loss stays close to the float32 loss, parameters and gradients stay float32),
and the trainer's ``amp`` setting, documented as CUDA-only, leaves a CPU run unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tri_modal_inputs
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz.losses import IMPNLoss
from vallayz.types import Batch
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import Trainer


def _linear_output_dtypes(model: torch.nn.Module) -> tuple[set[torch.dtype], list[object]]:
    seen: set[torch.dtype] = set()
    handles = [
        module.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for module in model.modules()
        if isinstance(module, torch.nn.Linear)
    ]
    return seen, handles


@pytest.mark.parametrize("zero_init_residual", [False, True])
def test_a_training_step_runs_under_bfloat16_autocast_on_the_cpu(
    zero_init_residual: bool,
) -> None:
    model = IMPN(tiny_config(zero_init_residual=zero_init_residual)).train()
    batch = Batch.of(tri_modal_inputs(16))
    loss_fn = IMPNLoss()
    reference = loss_fn(model, batch, torch.Generator().manual_seed(0))

    seen, handles = _linear_output_dtypes(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(model, batch, torch.Generator().manual_seed(0))
    for handle in handles:
        handle.remove()  # type: ignore[attr-defined]
    assert seen == {torch.bfloat16}  # autocast did reach the model's matrix products
    assert torch.isfinite(out.total)
    # bfloat16 keeps 8 bits of mantissa; the loss, summed in float32, agrees to about 1e-3.
    assert float(out.total.detach()) == pytest.approx(float(reference.total.detach()), rel=1e-2)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.zero_grad()
    out.total.backward()  # type: ignore[no-untyped-call]
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads and all(
        g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads.values()
    )
    optimizer.step()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def _trained_state(tmp_path: Path, name: str, amp: bool) -> dict[str, torch.Tensor]:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=80, groups=16))
    config = TrainConfig(
        max_steps=3, batch_size=16, warmup_steps=1, eval_every=1000, planner=False, amp=amp
    )
    (tmp_path / name).mkdir()
    torch.manual_seed(0)
    trainer = Trainer(data, tmp_path / name, IMPN(tiny_config()), config, progress=False)
    trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_amp_is_ignored_on_the_cpu(tmp_path: Path) -> None:
    on = _trained_state(tmp_path, "amp", amp=True)
    off = _trained_state(tmp_path, "fp32", amp=False)
    assert on.keys() == off.keys()
    for key in on:
        assert on[key].dtype == off[key].dtype
        assert torch.equal(on[key], off[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_keeps_float32_parameters_and_a_finite_loss(tmp_path: Path) -> None:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=80, groups=16))
    config = TrainConfig(
        max_steps=3, batch_size=16, warmup_steps=1, eval_every=1000, planner=False, device="cuda"
    )
    (tmp_path / "run").mkdir()
    trainer = Trainer(data, tmp_path / "run", IMPN(tiny_config()), config, progress=False)
    summary = trainer.fit()
    assert summary["steps"] == 3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
