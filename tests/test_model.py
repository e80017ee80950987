from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import DIMS, tiny_config, tri_modal_inputs
from torch.utils._python_dispatch import TorchDispatchMode

from vallayz import IMPN, Batch, IMPNConfig
from vallayz.losses import IMPNLoss

NAMES = list(DIMS)


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(NAMES, 2)))
def test_translate_every_ordered_pair(model: IMPN, source: str, target: str) -> None:
    x = tri_modal_inputs(5)[source]
    out = model.translate(x, source=source, target=target)
    assert out.shape == (5, DIMS[target])
    assert torch.isfinite(out).all()
    assert model.embed(x, source).shape == (5, 16)


def test_every_non_empty_subset_of_present_modalities_works(model: IMPN) -> None:
    inputs = tri_modal_inputs(4)
    for size in (1, 2, 3):
        for subset in itertools.combinations(NAMES, size):
            out = model({m: inputs[m] for m in subset})
            for name in NAMES:
                assert out.decoded[name].shape == (4, DIMS[name])
                assert out.soil[name].shape == (4, 16)
                assert bool(out.present[name].all()) == (name in subset)
            missing = [m for m in NAMES if m not in subset]
            if missing:
                translated = model.translate({m: inputs[m] for m in subset}, target=missing[0])
                torch.testing.assert_close(translated, out.decoded[missing[0]])


def test_rows_with_missing_modalities_and_garbage_in_absent_rows(model: IMPN) -> None:
    inputs = tri_modal_inputs(4)
    present = {
        "text": torch.tensor([True, False, True, False]),
        "image": torch.tensor([False, True, True, False]),
    }
    inputs["text"][1] = float("nan")  # absent rows may hold anything
    out = model(Batch.of(inputs, present=present))
    assert all(torch.isfinite(t).all() for t in out.decoded.values())
    # A present row is unaffected by what an absent row holds.
    clean = tri_modal_inputs(4)
    clean["text"][1] = 123.0
    clean_inputs = {m: inputs[m].clone() for m in inputs}
    clean_inputs["text"][1] = 123.0
    again = model(Batch.of(clean_inputs, present=present))
    torch.testing.assert_close(again.decoded["audio"], out.decoded["audio"])


def test_isolated_pass_equals_each_modality_alone(model: IMPN) -> None:
    inputs = tri_modal_inputs(3)
    joint = model(inputs, isolate=True)
    for name in NAMES:
        alone = model({name: inputs[name]})
        torch.testing.assert_close(joint.soil[name], alone.soil[name])
        torch.testing.assert_close(model.embed(inputs[name], name), alone.soil[name])


def test_padding_content_does_not_matter(model: IMPN) -> None:
    inputs = tri_modal_inputs(3, frames=5)
    padding = torch.tensor(
        [[True] * 5, [True, True, False, False, False], [True] * 3 + [False] * 2]
    )
    base = model(Batch.of(inputs, padding={"audio": padding}))
    inputs["audio"][~padding] = 1e4
    moved = model(Batch.of(inputs, padding={"audio": padding}))
    for name in NAMES:
        torch.testing.assert_close(moved.decoded[name], base.decoded[name])
    # A padded sequence equals the same sequence cut to its real nodes.
    short = {m: x[1:2] for m, x in inputs.items()}
    short["audio"] = short["audio"][:, :2]
    torch.testing.assert_close(model(short).decoded["text"], base.decoded["text"][1:2])


def test_evaluation_is_deterministic_and_ensemble_is_seeded() -> None:
    model = IMPN(tiny_config(sigma=0.5)).eval()
    x = tri_modal_inputs(4)["text"]
    assert torch.equal(model.translate(x, "text", "image"), model.translate(x, "text", "image"))
    a = model.translate(x, "text", "image", ensemble=4, seed=3)
    b = model.translate(x, "text", "image", ensemble=4, seed=3)
    c = model.translate(x, "text", "image", ensemble=4, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_gate_weights_are_returned_for_plots(model: IMPN) -> None:
    out = model(tri_modal_inputs(2, frames=3), return_gates=True)
    assert out.gates is not None and len(out.gates) == 2
    matrix = out.gates[0].modality_matrix()
    for name in NAMES:
        assert matrix[name, name] == 0.0
        assert sum(matrix[name, other] for other in NAMES) == pytest.approx(1.0)


def test_soil_embed_with_target_and_multi_source_embed(model: IMPN) -> None:
    inputs = tri_modal_inputs(3)
    sources = {"text": inputs["text"], "audio": inputs["audio"]}
    assert model.embed(sources, target="image").shape == (3, 16)
    mixed = model.embed(sources, present={"text": torch.tensor([True, False, True])})
    torch.testing.assert_close(mixed[1], model.embed(inputs["audio"][1:2], "audio")[0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m: m.translate(torch.randn(2, 5), "text", "audio"),
            "text.*dimension 5.*expects 12",
        ),
        (lambda m: m.translate(torch.randn(2, 12), "speech", "audio"), "unknown modality 'speech'"),
        (
            lambda m: m({"text": torch.randn(2, 12), "video": torch.randn(2, 3)}),
            "unknown modality 'video'",
        ),
        (lambda m: m.translate(torch.randn(2, 12), "text", "text"), "also an input"),
        (lambda m: m.translate(torch.randn(2, 12), "text", "smell"), "unknown modality 'smell'"),
        (lambda m: m.translate(torch.randn(2, 12), target="audio"), "source="),
        (lambda m: m({"text": torch.randn(2, 12), "image": torch.randn(3, 16)}), "batch size"),
        (lambda m: m({"text": torch.randn(12)}), "shape"),
        (lambda m: m({"text": torch.zeros(2, 12, dtype=torch.long)}), "floating-point"),
        (lambda m: m({}), "no modality"),
    ],
)
def test_bad_calls_raise_value_errors_that_say_how_to_fix(model: IMPN, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_present_row_is_named(model: IMPN, bad: float) -> None:
    x = torch.randn(4, 12)
    x[2, 5] = bad
    with pytest.raises(ValueError, match=r"'text'.*NaN or Inf.*row 2"):
        model.translate(x, "text", "audio")


def test_row_with_every_modality_absent_is_named(model: IMPN) -> None:
    inputs = tri_modal_inputs(3)
    present = {m: torch.tensor([True, False, True]) for m in NAMES}
    with pytest.raises(ValueError, match="every modality is absent in row 1"):
        model(Batch.of(inputs, present=present))


def test_present_row_with_only_padding_is_named(model: IMPN) -> None:
    inputs = tri_modal_inputs(2, frames=3)
    padding = torch.tensor([[True, True, False], [False, False, False]])
    with pytest.raises(ValueError, match="'audio' is marked present in row 1 but all of its nodes"):
        model(Batch.of(inputs, padding={"audio": padding}))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = IMPN(
        tiny_config(update="gru", learn_sigma=True, sigma={"text": 0.1, "audio": 0.2, "image": 0.3})
    )
    model.set_gating(top_k=2, temperature=0.5)
    model.eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["schema_version"] == 1 and config["top_k"] == 2
    loaded = IMPN.from_pretrained(tmp_path).eval()
    inputs = tri_modal_inputs(4)
    a, b = model(inputs), loaded(inputs)
    for name in NAMES:
        assert torch.equal(a.decoded[name], b.decoded[name])
    assert loaded.sigma == pytest.approx(model.sigma)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_loading_broken_checkpoints_raises_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config\.json is missing"):
        IMPN.from_pretrained(tmp_path)
    IMPN(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        IMPN.from_pretrained(tmp_path)
    IMPN(tiny_config(soil_dim=32)).save_pretrained(tmp_path)
    IMPNConfig.to_json(tiny_config(), tmp_path / "config.json")
    with pytest.raises(ValueError, match="does not match"):
        IMPN.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        IMPN.from_pretrained(tmp_path)


def synthetic_tri_modal(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Three views of one hidden 4-d factor through random linear maps plus noise."""
    z = torch.randn(n, 4, generator=generator)
    out = {}
    for name, dim in DIMS.items():
        w = torch.randn(4, dim, generator=generator)
        x = z @ w + 0.05 * torch.randn(n, dim, generator=generator)
        out[name] = x.unsqueeze(1).repeat(1, 2, 1) if name == "audio" else x
    return out


def test_a_few_optimizer_steps_reduce_the_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    data = synthetic_tri_modal(64, generator)
    model = IMPN(tiny_config()).train()
    loss = IMPNLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def evaluate() -> float:
        with torch.no_grad():
            return float(loss(model, data, torch.Generator().manual_seed(123)).total)

    before = evaluate()
    for _ in range(40):
        optimizer.zero_grad()
        loss(model, data, generator).total.backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.7 * before


def test_checkpoint_does_not_depend_on_the_order_of_modalities(tmp_path: Path) -> None:
    model = IMPN(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["modalities"] = dict(reversed(list(config["modalities"].items())))
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = IMPN.from_pretrained(tmp_path).eval()
    assert loaded.names == list(reversed(model.names))
    inputs = tri_modal_inputs(4)
    for name in NAMES:
        torch.testing.assert_close(loaded(inputs).decoded[name], model(inputs).decoded[name])


def test_checkpoint_tensor_names_are_stable() -> None:
    # Renaming a submodule breaks every saved checkpoint; these names are part of schema 1.
    keys = set(IMPN(tiny_config()).state_dict())
    for name in [
        "adapters.text.projection.weight",
        "adapters.text.up.weight",
        "decoders.image.skip.weight",
        "seeds.audio",
        "log_sigma.text",
        "layers.0.cross.gate.dot",
        "layers.1.ffn.down.bias",
    ]:
        assert name in keys, name


def test_absent_init_reads_the_present_nodes() -> None:
    """With "attend", an absent modality's start depends on what the row holds; with "seed" it
    does not. Both start as the seed until trained (zero projection)."""
    x = tri_modal_inputs(4)
    given = {m: x[m] for m in ("text", "audio")}
    seeded = IMPN(tiny_config(absent_init="seed", layers=1)).eval()
    attend = IMPN(tiny_config(absent_init="attend", layers=1)).eval()
    attend.load_state_dict(seeded.state_dict(), strict=False)
    torch.testing.assert_close(attend(given).soil["image"], seeded(given).soil["image"])
    assert attend.absent_init is not None
    torch.nn.init.normal_(attend.absent_init.proj.weight)
    other = {m: torch.randn_like(v) for m, v in given.items()}
    # Block the bridge's own messages: only the absent initialisation sees the other nodes.
    for layer in (*seeded.layers, *attend.layers):
        layer.cross.gate.out.bias.data.fill_(0)
        assert layer.cross.out is not None
        torch.nn.init.zeros_(layer.cross.out.weight)
    assert torch.allclose(seeded(given).soil["image"], seeded(other).soil["image"])
    assert not torch.allclose(attend(given).soil["image"], attend(other).soil["image"])
    # Present modalities are not touched by it.
    torch.testing.assert_close(attend(x).soil["text"], seeded(x).soil["text"])


def test_many_variants_at_tiny_sigma_tend_to_the_deterministic_model() -> None:
    model = IMPN(tiny_config(variants=4, sigma=1e-7)).double()
    x = {m: v.double() for m, v in tri_modal_inputs(3).items()}
    given = {m: x[m] for m in ("text", "audio")}
    deterministic = model(given, sample=False).decoded["image"]
    sampled = model(given, sample=True).decoded["image"]
    torch.testing.assert_close(sampled, deterministic, atol=1e-5, rtol=0)
    model.set_sigma(0.0)
    torch.testing.assert_close(model(given, sample=True).decoded["image"], deterministic)


class _NoHostSync(TorchDispatchMode):
    """Fails on every operator that makes the host wait for the device: reading a value
    (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``) or a shape that depends on values
    (``nonzero``, boolean-mask indexing, ``masked_select``)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.__name__.split(".")[0]
        indices = args[1] if name in ("index", "index_put", "index_put_") else ()
        by_mask = any(i is not None and i.dtype == torch.bool for i in indices)
        if name in self.SYNCING or by_mask:
            raise AssertionError(f"host-device synchronisation in forward: {func}")
        return func(*args, **(kwargs or {}))

    def __enter__(self):  # type: ignore[no-untyped-def]
        # tolist() reads the values without passing through the dispatcher.
        self._tolist = torch.Tensor.tolist

        def tolist(tensor: torch.Tensor) -> object:
            raise AssertionError("host-device synchronisation in forward: tolist")

        torch.Tensor.tolist = tolist  # type: ignore[method-assign,assignment]
        return super().__enter__()

    def __exit__(self, *exc):  # type: ignore[no-untyped-def]
        torch.Tensor.tolist = self._tolist  # type: ignore[method-assign]
        return super().__exit__(*exc)


def test_the_guard_catches_host_syncs() -> None:
    x = torch.randn(4)
    syncs = (
        lambda: bool(x.sum() > 0),
        lambda: x[x > 0],
        lambda: float(x.max()),
        lambda: x.tolist(),
    )
    for sync in syncs:
        with pytest.raises(AssertionError, match="synchronisation"), _NoHostSync():
            sync()


@pytest.mark.parametrize("absent_init", ["seed", "attend"])
def test_forward_reads_nothing_back_from_the_device(absent_init: str) -> None:
    """Once the batch is checked, a training pass (noisy variants, messages, gates) and an
    isolated pass never wait for the device."""
    model = IMPN(tiny_config(absent_init=absent_init)).train()
    x = tri_modal_inputs(4, frames=3)
    present = {"text": torch.tensor([True, False, True, True])}
    batch = Batch.of(x, present=present)
    batch.validate(model.config)
    generator = torch.Generator().manual_seed(0)
    with _NoHostSync():
        out = model(
            batch, generator=generator, return_messages=True, return_gates=True, validate=False
        )
        model(batch, isolate=True, validate=False, decode=False)
    assert out.gates is not None and out.gates[0].node_modality[:2] == ["text", "audio"]
    # ... and the check still runs by default.
    with pytest.raises(AssertionError, match="synchronisation"), _NoHostSync():
        model(batch)


def test_skipping_the_check_and_the_decoders_changes_no_state() -> None:
    model = IMPN(tiny_config()).eval()
    x = tri_modal_inputs(3)
    full = model(x, isolate=True)
    lean = model(x, isolate=True, validate=False, decode=False)
    assert lean.decoded == {} and set(full.decoded) == set(x)
    for name in x:
        torch.testing.assert_close(lean.soil[name], full.soil[name])


def test_clean_variants_draw_no_noise() -> None:
    """At sigma = 0 (or a schedule's scale 0) the K copies are clean and no random number is
    drawn, so that seeded runs keep their sequence of draws."""
    model = IMPN(tiny_config(sigma=0.0)).train()
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    model(tri_modal_inputs(3), generator=generator)
    assert torch.equal(generator.get_state(), before)
    model.set_sigma(0.1)
    model.sigma_scale = 0.0
    model(tri_modal_inputs(3), generator=generator)
    assert torch.equal(generator.get_state(), before)
    model.sigma_scale = 1.0
    model(tri_modal_inputs(3), generator=generator)
    assert not torch.equal(generator.get_state(), before)


def test_default_translation_at_init_reads_a_constant_not_the_source() -> None:
    """The diagnosis behind ``decode_from`` and ``absent_init="pool"``: with the bridge starting
    as the identity, an absent target's nodes hold their seed whatever the row holds, so the
    default translation starts as one vector for every row; reading the sources, or starting
    the absent nodes from them, makes it depend on the source from the first step."""
    x = tri_modal_inputs(4)["text"]
    rows = {}
    for decode_from, absent_init in [("target", "seed"), ("sources", "seed"), ("target", "pool")]:
        torch.manual_seed(0)
        model = IMPN(
            tiny_config(zero_init_residual=True, decode_from=decode_from, absent_init=absent_init)
        ).eval()
        rows[decode_from, absent_init] = model.translate(x, source="text", target="image")
    same = rows["target", "seed"]
    torch.testing.assert_close(same, same[:1].expand_as(same))
    for key in [("sources", "seed"), ("target", "pool")]:
        assert (rows[key][1:] - rows[key][:1]).abs().amax(dim=1).min() > 1e-3, key


@pytest.mark.parametrize("zero_init_residual", [False, True])
def test_translation_from_the_sources_is_the_target_decoder_on_the_source_embedding(
    zero_init_residual: bool,
) -> None:
    """One source: ``decode_from="sources"`` decodes the source's shared-space embedding with the
    target's decoder; ``"both"`` adds the absent target's own pooled state to it."""
    x = tri_modal_inputs(3)["text"]
    sources = IMPN(tiny_config(zero_init_residual=zero_init_residual, decode_from="sources"))
    both = IMPN(tiny_config(zero_init_residual=zero_init_residual, decode_from="both"))
    both.load_state_dict(sources.state_dict())
    sources.eval(), both.eval()
    with torch.no_grad():
        embedded = sources.embed(x, "text")
        torch.testing.assert_close(
            sources.translate(x, source="text", target="image"), sources.decoders["image"](embedded)
        )
        target_state = both.embed(x, "text", target="image")
        torch.testing.assert_close(
            both.translate(x, source="text", target="image"),
            both.decoders["image"](target_state + embedded),
        )
        # Present modalities decode their own state whatever decode_from says.
        default = IMPN(tiny_config(zero_init_residual=zero_init_residual))
        default.load_state_dict(sources.state_dict())
        inputs = tri_modal_inputs(3)
        for name, value in default.eval()(inputs).decoded.items():
            torch.testing.assert_close(sources(inputs).decoded[name], value)


@pytest.mark.parametrize("decode_from", ["sources", "both"])
def test_decode_detach_is_the_decoder_on_the_detached_source_embedding(decode_from: str) -> None:
    """``decode_detach``: the same translation as without it, and the gradients of a loss on it
    are those of the target's decoder applied to the source's embedding detached by hand (plus
    the absent target's own state under ``"both"``, whose messages still train the source)."""
    x = tri_modal_inputs(3)["text"].double()
    detached = IMPN(tiny_config(decode_from=decode_from, decode_detach=True)).double().eval()
    by_hand = IMPN(tiny_config(decode_from=decode_from)).double().eval()
    by_hand.load_state_dict(detached.state_dict())
    translated = detached.translate(x, source="text", target="image")
    translated.square().sum().backward()
    own = by_hand.embed(x, "text", target="image") if decode_from == "both" else 0.0
    reference = by_hand.decoders["image"](own + by_hand.embed(x, "text").detach())
    reference.square().sum().backward()
    torch.testing.assert_close(translated, reference)
    for (name, p), q in zip(detached.named_parameters(), by_hand.parameters(), strict=True):
        zero = torch.zeros_like(p)
        got, expected = (zero if g is None else g for g in (p.grad, q.grad))
        torch.testing.assert_close(got, expected, msg=name)
    adapter = [p.grad for p in detached.adapters["text"].parameters() if p.grad is not None]
    assert (sum(float(g.abs().sum()) for g in adapter) > 0) == (decode_from == "both")


def test_decode_detach_without_sources_to_detach_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="decode_from='sources' or 'both'"):
        tiny_config(decode_detach=True)


def test_translation_from_the_sources_averages_the_present_ones_per_row() -> None:
    """Two sources with one missing in some rows: the decoder reads the mean of the pooled
    states of the sources each row holds."""
    model = IMPN(tiny_config(decode_from="sources")).eval()
    x = tri_modal_inputs(4)
    given = {m: x[m] for m in ("text", "audio")}
    present = {"text": torch.tensor([True, True, False, True])}
    present["audio"] = torch.tensor([True, False, True, True])
    batch = Batch.of(given, present=present)
    with torch.no_grad():
        out = model(batch)
        mean = [(out.soil["text"][i] + out.soil["audio"][i]) / 2 for i in (0, 3)]
        expected = torch.stack([mean[0], out.soil["text"][1], out.soil["audio"][2], mean[1]])
        torch.testing.assert_close(out.decoded["image"], model.decoders["image"](expected))
        torch.testing.assert_close(model.translate(batch, target="image"), out.decoded["image"])


def test_pool_init_starts_absent_nodes_from_the_sources_pooled_state() -> None:
    """``absent_init="pool"``: with the bridge the identity, an absent modality's state is the
    final norm of its seed plus the mean of the present modalities' pooled initial states; a
    pass with every message blocked keeps the seed."""
    model = IMPN(tiny_config(zero_init_residual=True, absent_init="pool", layers=1)).eval()
    x = tri_modal_inputs(3)
    given = {m: x[m] for m in ("text", "audio")}
    with torch.no_grad():
        states = {
            m: model.adapters[m](v).reshape(3, -1, 16).mean(dim=1) + model.modality_embedding[m]
            for m, v in given.items()
        }
        start = model.seeds["image"] + model.modality_embedding["image"]
        start = start + (states["text"] + states["audio"]) / 2
        torch.testing.assert_close(model(given).soil["image"], model.norm(start))
        isolated = model(given, isolate=True).soil["image"]
        torch.testing.assert_close(isolated, isolated[:1].expand_as(isolated))
        # Present modalities are not touched by it.
        seeded = IMPN(tiny_config(zero_init_residual=True, layers=1)).eval()
        seeded.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x).soil["text"], seeded(x).soil["text"])


@pytest.mark.parametrize("decode_from", ["sources", "both"])
def test_translation_term_trains_the_source_adapter_through_the_target_decoder(
    decode_from: str,
) -> None:
    model = IMPN(tiny_config(decode_from=decode_from, absent_init="pool"))
    x = tri_modal_inputs(6)
    generator = torch.Generator().manual_seed(0)
    out = IMPNLoss(drop_rate=0.5)(model, x, generator)
    assert torch.isfinite(out.total) and out.terms["translation"] > 0
    out.terms["translation"].backward()
    for name in ("adapters.text.down.weight", "decoders.image.up.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_decode_from_is_validated_and_saved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decode_from must be one of"):
        tiny_config(decode_from="native")
    model = IMPN(tiny_config(decode_from="both", absent_init="pool"))
    model.save_pretrained(tmp_path)
    loaded = IMPN.from_pretrained(tmp_path)
    assert (loaded.config.decode_from, loaded.config.absent_init) == ("both", "pool")
