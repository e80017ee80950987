from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tri_modal_inputs

from vallayz import IMPN
from vallayz.functional import topk_softmax
from vallayz.layers import BridgeLayer, CrossModalPassing, ReceptorGate

f64 = torch.float64


def packed_nodes(batch: int = 3, counts: tuple[int, ...] = (1, 3, 2), dim: int = 8):
    """Three modalities packed: node modality ids, same-modality matrix, all nodes real."""
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    same = ids[:, None] == ids[None, :]
    states = torch.randn(batch, len(ids), dim, dtype=f64)
    real = torch.ones(batch, len(ids), dtype=torch.bool)
    return states, real, same, ids


def test_gate_split_first_layer_equals_mlp_on_concatenation() -> None:
    gate = ReceptorGate(dim=5, hidden=7).double()
    a, v = torch.randn(2, 3, 5, dtype=f64), torch.randn(2, 4, 5, dtype=f64)
    weight, bias = gate.first_layer()
    expected = torch.empty(2, 3, 4, dtype=f64)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                features = torch.cat([a[b, i], v[b, j], (a[b, i] @ v[b, j] / math.sqrt(5))[None]])
                expected[b, i, j] = gate.out(F.gelu(weight @ features + bias)).squeeze()
    torch.testing.assert_close(gate(a, v), expected)


def reference_cross_step(layer: CrossModalPassing, states, senders, same):
    """The update with the variant machinery bypassed: senders are the clean nodes themselves."""
    h = layer.norm(states)
    scores = layer.gate(h, h)
    weights = topk_softmax(
        scores, senders[:, None, :] & ~same[None], layer.top_k, layer.temperature
    )
    message = weights @ layer.value(h)
    return layer.apply_update(states, message)


def test_deterministic_limit_equals_bypassed_computation() -> None:
    for update in ("residual", "gru"):
        layer = CrossModalPassing(8, 6, top_k=2, temperature=0.8, update=update).double()
        states, real, same, ids = packed_nodes()
        senders = real.clone()
        senders[0, ids == 1] = False  # modality 1 absent in row 0
        sigma = torch.full((len(ids),), 0.3, dtype=f64)
        out = layer(states, senders, same, sigma * 0, variants=1)
        again = layer(states, senders, same, sigma * 0, variants=1)
        assert torch.equal(out.states, again.states)  # deterministic
        torch.testing.assert_close(out.states, reference_cross_step(layer, states, senders, same))


def test_gates_respect_modalities_and_presence() -> None:
    layer = CrossModalPassing(8, 6, top_k=100, temperature=1.0, update="residual").double()
    states, real, same, ids = packed_nodes()
    senders = real.clone()
    senders[1, ids == 2] = False
    out = layer(states, senders, same, torch.full((len(ids),), 0.2, dtype=f64), variants=3)
    sender_ids = ids.repeat_interleave(3)
    own = (ids[:, None] == sender_ids[None, :])[None].expand_as(out.weights)
    assert torch.equal(out.weights[own], torch.zeros_like(out.weights[own]))
    assert torch.equal(out.weights[1][:, sender_ids == 2], torch.zeros(len(ids), 6, dtype=f64))
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, len(ids), dtype=f64))


def test_bridge_gradcheck_float64() -> None:
    torch.manual_seed(0)
    layer = BridgeLayer(
        4, heads=2, gate_hidden=3, top_k=3, temperature=0.9, update="gru", ffn_mult=2
    )
    layer = layer.double()
    states, real, same, ids = packed_nodes(batch=2, counts=(1, 2), dim=4)
    sigma = torch.full((len(ids),), 0.1, dtype=f64)

    def run(x: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)  # identical variants on every call
        return layer(x, real, real, same, sigma, variants=2, generator=generator).states

    assert torch.autograd.gradcheck(run, (states.requires_grad_(),), eps=1e-6, atol=1e-5)


def test_self_attention_stays_within_a_modality() -> None:
    layer = BridgeLayer(8, 2, 4, 2, 1.0, "residual", 2).double()
    states, real, same, ids = packed_nodes()
    base = layer.attention(states, real, same)
    changed = states.clone()
    changed[:, ids == 2] += 5.0
    moved = layer.attention(changed, real, same)
    torch.testing.assert_close(moved[:, ids != 2], base[:, ids != 2])
    assert not torch.allclose(moved[:, ids == 2], base[:, ids == 2])


def test_padding_nodes_neither_send_nor_attend() -> None:
    layer = BridgeLayer(8, 2, 4, 2, 1.0, "residual", 2).double()
    states, real, same, ids = packed_nodes()
    real[:, 3] = False  # a padding node of modality 1
    sigma = torch.zeros(len(ids), dtype=f64)
    base = layer(states, real, real, same, sigma).states
    changed = states.clone()
    changed[:, 3] = 1e3
    moved = layer(changed, real, real, same, sigma).states
    keep = torch.arange(len(ids)) != 3
    torch.testing.assert_close(moved[:, keep], base[:, keep])


@pytest.mark.parametrize("update", ["residual", "gru"])
def test_zero_initialised_residual_branches_make_a_layer_the_identity(update: str) -> None:
    layer = BridgeLayer(8, 2, 4, 2, 1.0, update, 2).double()
    layer.zero_init_residual()
    states, real, same, ids = packed_nodes()
    sigma = torch.full((len(ids),), 0.1, dtype=f64)
    out = layer(states, real, real, same, sigma, variants=2).states
    if update == "residual":
        torch.testing.assert_close(out, states, rtol=0, atol=0)
    else:  # a GRU update has no residual branch to silence
        assert not torch.allclose(out, states)
    # Trainable from the first step: the zeroed projections receive gradients.
    out.sum().backward()
    assert layer.ffn.down.weight.grad is not None and layer.ffn.down.weight.grad.abs().sum() > 0


def test_zero_init_residual_config_reaches_every_layer() -> None:
    model = IMPN(tiny_config(zero_init_residual=True)).eval()
    assert all(not layer.ffn.down.weight.detach().any() for layer in model.layers)
    # With every bridge layer the identity, other modalities cannot move a modality's soil
    # vector: the joint pass agrees with the isolated one.
    x = tri_modal_inputs(3)
    joint = model(x).soil
    alone = model(x, isolate=True).soil
    for m in x:
        torch.testing.assert_close(joint[m], alone[m])


def test_zero_initialised_adapters_start_as_their_projection() -> None:
    model = IMPN(tiny_config(zero_init_adapters=True)).double()
    x = tri_modal_inputs(3)["text"].double()
    adapter = model.adapters["text"]
    assert adapter.projection is not None
    torch.testing.assert_close(adapter(x), adapter.projection(x), rtol=0, atol=0)
    # A random adapter is not linear.
    other = IMPN(tiny_config()).double().adapters["text"]
    assert other.projection is not None
    assert not torch.allclose(other(x), other.projection(x))


def test_an_adapter_without_input_norm_matches_its_formula_and_sees_scale() -> None:
    model = IMPN(tiny_config(adapter_norm=False)).double()
    adapter = model.adapters["text"]
    assert adapter.projection is not None
    x = tri_modal_inputs(3)["text"].double()
    w1, b1 = adapter.up.weight, adapter.up.bias
    w2, b2 = adapter.down.weight, adapter.down.bias
    expected = F.gelu(x @ w1.T + b1) @ w2.T + b2 + x @ adapter.projection.weight.T
    torch.testing.assert_close(adapter(x), expected)
    # With the LayerNorm the branch ignores the input's scale; without it, it does not.
    normed = IMPN(tiny_config()).double().adapters["text"]
    for module, invariant in ((normed, True), (adapter, False)):
        branch = module.down(F.gelu(module.up(module.norm(x))))
        scaled = module.down(F.gelu(module.up(module.norm(3.0 * x))))
        assert torch.allclose(branch, scaled, atol=1e-4) == invariant  # LN eps: not exact
