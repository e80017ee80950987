from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tri_modal_inputs

from vallayz import IMPN
from vallayz.layers import Adapter, BridgeLayer, CrossModalPassing, ReceptorGate

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


def reference_layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def reference_gate(gate: ReceptorGate, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g = MLP([a; v; <a, v>/sqrt(d)]) on the concatenation, one pair at a time."""
    features = torch.cat([a, v, (a @ v / math.sqrt(a.shape[0]))[None]])
    weight = torch.cat([gate.receiver.weight, gate.sender.weight, gate.dot[:, None]], dim=1)
    hidden = weight @ features + gate.receiver.bias
    return (gate.out.weight @ (0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))))[0] + (
        gate.out.bias[0]
    )


def reference_message(layer: CrossModalPassing, states, variants, valid):
    """Loops over rows, receivers, senders and variants, as the spec reads.

    Each sender ``j`` gets the score ``T log mean_k exp(g_ijk / T)``; the ``top_k`` best senders
    are kept and softmaxed at ``T``; the kept sender's variants are weighed by ``softmax_k(g /
    T)``; the message is the weighted sum of ``W_v v``. ``variants`` are the noisy copies of
    the normalised states ``[B, N, K, d]``.
    """
    batch, nodes, count, dim = variants.shape
    t = layer.temperature
    message = torch.zeros(batch, nodes, dim, dtype=f64)
    for b in range(batch):
        for i in range(nodes):
            a = reference_layer_norm(states[b, i], layer.norm)
            scores, alphas = {}, {}
            for j in range(nodes):
                if not valid[b, i, j]:
                    continue
                g = torch.stack(
                    [reference_gate(layer.gate, a, variants[b, j, k]) for k in range(count)]
                )
                scores[j] = t * torch.log(torch.exp(g / t).mean())
                alphas[j] = torch.exp(g / t) / torch.exp(g / t).sum()
            kept = sorted(scores, key=lambda j: -float(scores[j].detach()))[: layer.top_k]
            if not kept:
                continue
            z = sum(torch.exp(scores[j] / t) for j in kept)
            for j in kept:
                w = torch.exp(scores[j] / t) / z
                for k in range(count):
                    message[b, i] += w * alphas[j][k] * (layer.value.weight @ variants[b, j, k])
    return message


@pytest.mark.parametrize("top_k", [1, 2, 5])
def test_selection_over_senders_matches_a_reference_loop(top_k: int) -> None:
    layer = CrossModalPassing(6, 5, top_k=top_k, temperature=0.7, update="residual").double()
    states, real, same, ids = packed_nodes(batch=2, counts=(1, 3, 2), dim=6)
    senders = real.clone()
    senders[0, ids == 1] = False  # modality 1 absent in row 0
    senders[1, 4] = False  # one padding node
    valid = senders[:, None, :] & ~same[None]
    normed = layer.norm(states)
    variants = normed.unsqueeze(2) + 0.3 * torch.randn(2, len(ids), 3, 6, dtype=f64)
    message, weights = layer.aggregate(normed, variants, valid)
    torch.testing.assert_close(message, reference_message(layer, states, variants, valid))
    # Exactly min(top_k, valid senders) distinct senders carry weight, all K variants of each.
    per_sender = weights.unflatten(-1, (len(ids), 3))
    for b in range(2):
        for i in range(len(ids)):
            chosen = per_sender[b, i].sum(-1) > 0
            assert int(chosen.sum()) == min(top_k, int(valid[b, i].sum()))
            assert bool((per_sender[b, i][chosen] > 0).all())
            assert not bool(chosen[~valid[b, i]].any())


def test_top_k_counts_senders_not_variants() -> None:
    # With K = 4 copies of each sender and top_k = 2, two senders (eight variants) are kept;
    # selection over variants would keep two copies of one sender.
    layer = CrossModalPassing(6, 5, top_k=2, temperature=1.0, update="residual").double()
    states, real, same, _ids = packed_nodes(batch=1, counts=(1, 4), dim=6)
    valid = real[:, None, :] & ~same[None]
    normed = layer.norm(states)
    _, weights = layer.aggregate(normed, normed.unsqueeze(2).expand(-1, -1, 4, -1), valid)
    assert int((weights[0, 0] > 0).sum()) == 8
    torch.testing.assert_close(weights.sum(-1)[0, :1], torch.ones(1, dtype=f64))
    # The earlier reading (selection over variants, kept as an ablation) fills the top-k with
    # the copies of the one best sender.
    layer.selection = "variants"
    _, weights = layer.aggregate(normed, normed.unsqueeze(2).expand(-1, -1, 4, -1), valid)
    kept = weights[0, 0].unflatten(-1, (5, 4)).sum(-1) > 0
    assert int((weights[0, 0] > 0).sum()) == 2 and int(kept.sum()) == 1


def test_deterministic_limit_equals_a_gated_bridge() -> None:
    """K copies at sigma = 0 give the K = 1 layer exactly, and small sigma tends to it."""
    for update in ("residual", "gru"):
        layer = CrossModalPassing(8, 6, top_k=2, temperature=0.8, update=update).double()
        states, real, same, ids = packed_nodes()
        senders = real.clone()
        senders[0, ids == 1] = False
        one = layer(states, senders, same, None, variants=1)
        zero = torch.zeros(len(ids), dtype=f64)
        copies = layer(states, senders, same, zero, variants=4, clean=True)
        torch.testing.assert_close(copies.states, one.states)
        assert copies.clean_message is not None
        torch.testing.assert_close(copies.message, copies.clean_message)  # denoising term is 0
        normed = layer.norm(states)
        expected = reference_message(
            layer, states, normed.unsqueeze(2), senders[:, None, :] & ~same[None]
        )
        torch.testing.assert_close(one.message, expected)
        gaps = []
        for sigma in (1e-2, 1e-4, 1e-6):
            noisy = layer(states, senders, same, zero + sigma, variants=4)
            gaps.append(float((noisy.states - one.states).detach().abs().max()))
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4


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
    states, real, same, _ids = packed_nodes()
    out = layer(states, real, real, same, None, variants=2).states
    if update == "residual":
        torch.testing.assert_close(out, states, rtol=0, atol=0)
    else:  # a GRU update has no residual branch to silence: attention and FFN are silent,
        # so the layer is the GRU of the reference message alone.
        normed = layer.cross.norm(states)
        message = reference_message(
            layer.cross, states, normed.unsqueeze(2), real[:, None, :] & ~same[None]
        )
        gru = layer.cross.gru
        assert gru is not None
        expected = gru(message.reshape(-1, 8), states.reshape(-1, 8)).reshape(states.shape)
        torch.testing.assert_close(out, expected)
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


@pytest.mark.parametrize("update", ["residual", "gru"])
def test_no_senders_skips_the_gate_and_equals_an_all_false_mask(update: str) -> None:
    layer = BridgeLayer(8, 2, 4, 2, 0.9, update, 2).double()
    states, real, same, ids = packed_nodes()
    sigma = torch.full((len(ids),), 0.1, dtype=f64)
    nobody = torch.zeros_like(real)
    masked = layer(states, real, nobody, same, sigma, variants=3, clean=True)
    skipped = layer(states, real, None, same, sigma, variants=3, clean=True)
    torch.testing.assert_close(skipped.states, masked.states)
    torch.testing.assert_close(skipped.weights, masked.weights)
    assert skipped.clean_message is not None
    assert not skipped.message.any() and not skipped.clean_message.any()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_single_node_shortcut_equals_attention_over_one_node_per_modality(dropout: float) -> None:
    """With one node per modality each node attends to itself alone, so the shortcut (values
    only) must give what the full attention gives, padding or not."""
    layer = BridgeLayer(8, 2, 4, 2, 0.9, "residual", 2, dropout=dropout).double().eval()
    states, real, same, _ids = packed_nodes(batch=4, counts=(1, 1, 1))
    real[1, 2] = False
    general = layer.attention(states, real, same)
    shortcut = layer.attention(states, real, same, single_nodes=True)
    torch.testing.assert_close(shortcut, general)
    torch.testing.assert_close(
        layer(states, real, real, same, None, single_nodes=True).states,
        layer(states, real, real, same, None).states,
    )
    # Training with attention dropout takes the general path (it drops the one weight).
    layer.train()
    torch.manual_seed(3)
    dropped = layer.attention(states, real, same, single_nodes=True)
    torch.manual_seed(3)
    torch.testing.assert_close(dropped, layer.attention(states, real, same))


@pytest.mark.parametrize("selection", ["senders", "variants"])
def test_noisy_and_clean_messages_in_one_gate_pass_equal_two_separate_passes(
    selection: str,
) -> None:
    layer = CrossModalPassing(6, 5, 2, 0.8, "residual", selection).double()
    states, real, same, ids = packed_nodes(batch=3, counts=(1, 3, 2), dim=6)
    senders = real.clone()
    senders[0, ids == 2] = False
    sigma = torch.full((len(ids),), 0.2, dtype=f64)
    result = layer(states, senders, same, sigma, 4, torch.Generator().manual_seed(5), clean=True)
    normed = layer.norm(states)
    noisy = normed.unsqueeze(2) + sigma[None, :, None, None] * torch.randn(
        3, len(ids), 4, 6, generator=torch.Generator().manual_seed(5), dtype=f64
    )
    valid = senders[:, None, :] & ~same[None]
    message, weights = layer.aggregate(normed, noisy, valid)
    clean, _ = layer.aggregate(normed, normed.unsqueeze(2), valid)
    torch.testing.assert_close(result.message, message)
    torch.testing.assert_close(result.weights, weights)
    assert result.clean_message is not None
    torch.testing.assert_close(result.clean_message, clean)
    torch.testing.assert_close(result.states, states + layer.out(message))  # type: ignore[misc]


def bounded_pair(candidates: int, selection: str = "senders"):
    """A layer that scores every sender and the same layer bounded to ``candidates``."""
    full = CrossModalPassing(6, 5, 2, 0.8, "residual", selection).double()
    bounded = CrossModalPassing(6, 5, 2, 0.8, "residual", selection, candidates).double()
    bounded.load_state_dict(full.state_dict())
    return full, bounded


@pytest.mark.parametrize("selection", ["senders", "variants"])
def test_bounded_senders_equal_all_senders_when_no_receiver_has_more(selection: str) -> None:
    # Four modalities of one node: each receiver has at most three valid senders of four.
    full, bounded = bounded_pair(3, selection)
    states, real, same, _ids = packed_nodes(batch=3, counts=(1, 1, 1, 1), dim=6)
    senders = real.clone()
    senders[0, 1] = False
    sigma = torch.full((4,), 0.2, dtype=f64)
    runs = [
        layer(states, senders, same, sigma, 3, torch.Generator().manual_seed(2), clean=True)
        for layer in (full, bounded)
    ]
    for field in ("states", "weights", "message", "clean_message"):
        torch.testing.assert_close(getattr(runs[1], field), getattr(runs[0], field))


def test_bounded_senders_score_the_nearest_candidates_only() -> None:
    """Below the valid senders, the bounded layer is the full layer restricted to the senders
    whose clean states have the largest dot products with the receiver's (chosen here by
    sorting), in values and in gradients."""
    full, bounded = bounded_pair(2)
    states, real, same, ids = packed_nodes(batch=2, counts=(1, 3, 2), dim=6)
    senders = real.clone()
    senders[1, 4] = False
    valid = senders[:, None, :] & ~same[None]
    x = states.clone().requires_grad_()
    normed = full.norm(x)
    noise = 0.3 * torch.randn(2, len(ids), 3, 6, dtype=f64)
    affinity = (normed @ normed.transpose(1, 2)).detach()
    restricted = torch.zeros_like(valid)
    for b in range(2):
        for i in range(len(ids)):
            order = sorted(
                (j for j in range(len(ids)) if valid[b, i, j]), key=lambda j: -affinity[b, i, j]
            )
            restricted[b, i, order[:2]] = True
    expected, expected_weights = full.aggregate(normed, normed.unsqueeze(2) + noise, restricted)
    own = bounded.norm(x)
    message, weights = bounded.aggregate(own, own.unsqueeze(2) + noise, valid)
    torch.testing.assert_close(message, expected)
    torch.testing.assert_close(weights, expected_weights)
    assert bool((valid.sum(-1) > 2).any())  # some receiver loses senders to the bound
    grads = [
        torch.autograd.grad(out.square().sum(), [x, *layer.parameters()], allow_unused=True)
        for out, layer in ((expected, full), (message, bounded))
    ]
    for g_full, g_bounded in zip(*grads, strict=True):
        if g_full is None:
            assert g_bounded is None
        else:
            torch.testing.assert_close(g_bounded, g_full)


def test_a_model_with_bounded_senders_trains_and_equals_the_default_above_its_senders() -> None:
    from conftest import tiny_config

    from vallayz.losses import IMPNLoss

    x = tri_modal_inputs(4, frames=3)  # 1 + 3 + 1 nodes: at most 4 senders per receiver
    default = IMPN(tiny_config())
    bounded = IMPN(tiny_config(sender_candidates=4))
    bounded.load_state_dict(default.state_dict())
    outs = [
        model(x, generator=torch.Generator().manual_seed(0), return_messages=True)
        for model in (default, bounded)
    ]
    torch.testing.assert_close(outs[1].decoded["image"], outs[0].decoded["image"])
    tight = IMPN(tiny_config(sender_candidates=1))
    loss = IMPNLoss()(tight, x, torch.Generator().manual_seed(0)).total
    loss.backward()
    assert torch.isfinite(loss)
    gate = tight.layers[0].cross.gate  # type: ignore[union-attr]
    assert gate.sender.weight.grad is not None and gate.sender.weight.grad.abs().sum() > 0


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("switches", "removed"),
    [
        # Pre-LN self-attention: LayerNorm 2d, qkv 3d^2 + 3d, output projection d^2 + d.
        ({"bridge_attention": False}, lambda d, m: 4 * d * d + 6 * d),
        # Pre-LN feed-forward: LayerNorm 2d, up m*d^2 + m*d, down m*d^2 + d.
        ({"bridge_ffn": False}, lambda d, m: 2 * m * d * d + (m + 3) * d),
        ({"final_norm": False}, None),
    ],
)
def test_encoder_switches_remove_exactly_their_blocks(switches: dict, removed) -> None:
    default, changed = IMPN(tiny_config()), IMPN(tiny_config(**switches))
    d, m, layers = 16, 2, 2  # tiny_config's soil_dim, ffn_mult and layers
    expected = 2 * d if removed is None else layers * removed(d, m)
    assert _parameters(default) - _parameters(changed) == expected
    prefix = {
        "bridge_attention": [f"layers.{i}.attention." for i in range(layers)],
        "bridge_ffn": [f"layers.{i}.ffn." for i in range(layers)],
        "final_norm": ["norm."],
    }[next(iter(switches))]
    gone = set(default.state_dict()) - set(changed.state_dict())
    assert gone and all(any(k.startswith(p) for p in prefix) for k in gone)
    assert set(changed.state_dict()) < set(default.state_dict())


def test_a_bridge_layer_without_attention_or_ffn_skips_exactly_that_block() -> None:
    torch.manual_seed(0)
    full = BridgeLayer(8, 2, 4, 2, 1.0, "residual", 2).double()
    states, real, same, ids = packed_nodes()
    sigma = torch.zeros(len(ids), dtype=f64)
    for attention, ffn in ((False, True), (True, False), (False, False)):
        part = BridgeLayer(8, 2, 4, 2, 1.0, "residual", 2, attention=attention, ffn=ffn)
        part = part.double()
        part.load_state_dict({k: v for k, v in full.state_dict().items() if k in part.state_dict()})
        expected = full.attention(states, real, same) if attention else states
        expected = full.cross(expected, real, same, sigma).states
        expected = full.ffn(expected) if ffn else expected
        torch.testing.assert_close(part(states, real, real, same, sigma).states, expected)
        part.zero_init_residual()  # only the blocks it has
        assert part.cross.out is not None and not part.cross.out.weight.any()


def test_without_final_norm_the_soil_states_are_not_normalised() -> None:
    x = tri_modal_inputs(4)
    normed = IMPN(tiny_config()).eval()
    raw = IMPN(tiny_config(final_norm=False)).eval()
    raw.load_state_dict({k: v for k, v in normed.state_dict().items() if not k.startswith("norm.")})
    # The default LayerNorm (weight 1, bias 0) is the standardisation of each node state.
    out_raw, out_normed = raw(x, isolate=True), normed(x, isolate=True)
    for name in x:
        nodes = out_raw.nodes[name]
        standard = (nodes - nodes.mean(-1, keepdim=True)) / torch.sqrt(
            nodes.var(-1, unbiased=False, keepdim=True) + 1e-5
        )
        torch.testing.assert_close(out_normed.nodes[name], standard, atol=1e-5, rtol=1e-4)


def test_a_linear_adapter_is_its_projection_alone() -> None:
    from vallayz import IMPNConfig

    config = IMPNConfig(modalities={"a": 6, "b": 8}, soil_dim=8, heads=2, linear_adapters=["b"])
    model = IMPN(config)
    linear, mlp = model.adapters["b"], model.adapters["a"]
    # The square (8 -> 8) linear adapter still learns its map, starting at the identity.
    assert isinstance(linear, Adapter) and isinstance(mlp, Adapter)
    assert linear.projection is not None and not hasattr(linear, "up")
    torch.testing.assert_close(linear.projection.weight, torch.eye(8))
    x = torch.randn(5, 8, dtype=torch.float64)
    linear = linear.double()
    torch.testing.assert_close(linear(x), x @ linear.projection.weight.T)
    assert hasattr(mlp, "up")
    with pytest.raises(ValueError, match="linear_adapters names \\['z'\\]"):
        IMPNConfig(modalities={"a": 6, "b": 8}, linear_adapters=["z"])
