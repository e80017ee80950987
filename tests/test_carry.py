"""The carried source code (``IMPNConfig.carry_dim``): what an absent target's decoder adds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DIMS, tiny_config, tri_modal_inputs
from torch import Tensor

from vallayz import IMPN, Batch
from vallayz.layers import Carry
from vallayz.losses import IMPNLoss


def _randomise_reads(model: IMPN) -> None:
    """Gives every carry's read non-zero weights (they start at zero)."""
    with torch.no_grad():
        for carry in model.carries.values():
            assert isinstance(carry, Carry)
            carry.down.weight.normal_(std=0.3)
            carry.down.bias.normal_(std=0.3)


def _code_by_hand(model: IMPN, x: Tensor, real: Tensor, name: str) -> Tensor:
    """``GELU(W1·LN(mean of the real entries))``, one row at a time."""
    carry = model.carries[name]
    assert isinstance(carry, Carry)
    rows = []
    for i in range(x.shape[0]):
        pooled = x[i][real[i]].mean(dim=0)
        normed = F.layer_norm(pooled, pooled.shape, carry.norm.weight, carry.norm.bias)
        rows.append(F.gelu(carry.up.weight @ normed + carry.up.bias))
    return torch.stack(rows)


def test_the_carry_adds_the_read_of_the_present_sources_mean_code_to_an_absent_target() -> None:
    """Two sources (one of them a padded frame sequence) missing in some rows: the absent
    image's decoded vector is the decoder on its state plus the read of the mean code of the
    sources each row holds; a row that holds the image decodes it as without a carry."""
    model = IMPN(tiny_config(carry_dim=5)).double().eval()
    plain = IMPN(tiny_config()).double().eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("carries.") for k in unexpected)
    _randomise_reads(model)
    x = {m: v.double() for m, v in tri_modal_inputs(5).items()}
    padding = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    present = {
        "text": torch.tensor([True, True, False, True, True]),
        "audio": torch.tensor([True, False, True, True, True]),
        "image": torch.tensor([False, False, False, False, True]),
    }
    batch = Batch.of(x, present=present, padding={"audio": padding.bool()})
    with torch.no_grad():
        got = model(batch).decoded["image"]
        without = plain(batch).decoded["image"]
        codes = {
            "text": _code_by_hand(
                model, x["text"][:, None], torch.ones(5, 1, dtype=torch.bool), "text"
            ),
            "audio": _code_by_hand(model, x["audio"], padding.bool(), "audio"),
        }
        read = model.carries["image"].read  # type: ignore[operator]
        for i in range(5):
            sources = [codes[m][i] for m in ("text", "audio") if present[m][i]]
            added = 0.0 if present["image"][i] else read(torch.stack(sources).mean(dim=0))
            torch.testing.assert_close(got[i], without[i] + added)
        rows = [0, 1, 2, 3]
        sources = Batch.of(
            {m: x[m][rows] for m in ("text", "audio")},
            present={m: present[m][rows] for m in ("text", "audio")},
            padding={"audio": padding.bool()[rows]},
        )
        torch.testing.assert_close(model.translate(sources, target="image"), got[rows])


def test_the_carry_leaves_the_shared_space_and_present_decoders_alone() -> None:
    """The soil states, and the decoded vectors of present modalities, are those of the same
    model without a carry, whatever the carry's weights; an untrained carry changes nothing."""
    model = IMPN(tiny_config(carry_dim=6)).eval()
    plain = IMPN(tiny_config()).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    inputs = tri_modal_inputs(4)
    given = {m: inputs[m] for m in ("text", "audio")}
    with torch.no_grad():
        for name, value in plain(given).decoded.items():
            torch.testing.assert_close(model(given).decoded[name], value)
        _randomise_reads(model)
        for carry in model.carries.values():
            carry.up.weight.normal_()  # type: ignore[union-attr, operator]
        for batch in (given, inputs):
            out, reference = model(batch), plain(batch)
            for name in DIMS:
                torch.testing.assert_close(out.soil[name], reference.soil[name])
            for name in batch:
                torch.testing.assert_close(out.decoded[name], reference.decoded[name])
        assert not torch.allclose(model(given).decoded["image"], plain(given).decoded["image"])


@pytest.mark.parametrize("detach", [False, True])
def test_the_translation_term_trains_the_carry_and_the_front_end_unless_detached(
    detach: bool,
) -> None:
    model = IMPN(tiny_config(carry_dim=5, carry_detach=detach, token_buckets={"text": 11}))
    with torch.no_grad():
        model.front_ends["text"].weight.normal_()  # type: ignore[union-attr, operator]
    inputs = tri_modal_inputs(6)
    tokens = {"text": torch.randint(0, 11, (6, 3))}
    batch = Batch.of(inputs, tokens=tokens)
    out = IMPNLoss(drop_rate=0.5)(model, batch, torch.Generator().manual_seed(0))
    out.terms["translation"].backward()
    grads = {name: p.grad for name, p in model.named_parameters()}

    def moved(name: str) -> bool:
        grad = grads[name]
        return grad is not None and bool(grad.abs().sum() > 0)

    # The reads start at zero: the first step trains them, and not yet the encoders.
    assert moved("carries.image.down.weight") and not moved("carries.text.up.weight")
    _randomise_reads(model)
    model.zero_grad()
    IMPNLoss(drop_rate=0.5)(model, batch, torch.Generator().manual_seed(0)).terms[
        "translation"
    ].backward()
    assert model.carries["text"].up.weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    # What the carry sends into the front end: none when detached.
    model.zero_grad()
    model._encode(batch, codes=True).codes["text"].sum().backward()
    grad = model.front_ends["text"].weight.grad
    assert (grad is None or not grad.any()) == detach


def test_a_carry_with_its_own_table_reads_it_and_not_the_soil_front_end() -> None:
    """``carry_front_end``: the code is that of the native vector plus the carry's own table's
    bag, and the soil space's table gets no gradient from it; the optimizer treats the
    carry's table as a front end."""
    from vallayz_train.config import TrainConfig
    from vallayz_train.trainer import parameter_groups

    config = tiny_config(carry_dim=5, carry_front_end=True, token_buckets={"text": 11})
    model = IMPN(config).double()
    with torch.no_grad():
        model.front_ends["text"].weight.normal_()  # type: ignore[union-attr, operator]
        model.carry_front_ends["text"].weight.normal_()  # type: ignore[union-attr, operator]
    x = tri_modal_inputs(4)["text"].double()
    tokens = torch.randint(0, 11, (4, 3))
    batch = Batch.of({"text": x}, tokens={"text": tokens})
    code = model._encode(batch, codes=True).codes["text"]
    bag = model.carry_front_ends["text"](tokens)
    real = torch.ones(4, 1, dtype=torch.bool)
    torch.testing.assert_close(code, _code_by_hand(model, (x + bag)[:, None], real, "text"))
    code.sum().backward()
    assert model.front_ends["text"].weight.grad is None
    assert model.carry_front_ends["text"].weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    groups = parameter_groups(model, TrainConfig(lr=1e-3, front_end_lr=3e-2))
    tables = next(g["params"] for g in groups if g["lr_scale"] == pytest.approx(30.0))
    assert any(p is model.carry_front_ends["text"].weight for p in tables)


def test_the_carry_is_saved_and_belongs_to_its_modality(tmp_path: Path) -> None:
    model = IMPN(tiny_config(carry_dim=4, carry_detach=True))
    _randomise_reads(model)
    model.save_pretrained(tmp_path)
    loaded = IMPN.from_pretrained(tmp_path).eval()
    assert (loaded.config.carry_dim, loaded.config.carry_detach) == (4, True)
    x = tri_modal_inputs(3)["text"]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.translate(x, source="text", target="image"),
            model.eval().translate(x, source="text", target="image"),
        )
    own = {id(p) for p in model.own_parameters("audio")}
    assert all(id(p) in own for p in model.carries["audio"].parameters())
    extended = model.extend({"depth": 3})
    trains = {name for name, p in extended.named_parameters() if p.requires_grad}
    assert {"carries.depth.up.weight", "carries.depth.down.weight"} <= trains
    assert not any(name.startswith("carries.") and ".depth." not in name for name in trains)


def test_decoding_from_the_carry_alone_reads_the_code_and_not_the_soil_state() -> None:
    """``decode_from="carry"``: an absent target's decoded vector is its carry's read of the
    sources' code, whatever its soil state; present targets decode their own state."""
    model = IMPN(tiny_config(carry_dim=5, decode_from="carry")).double().eval()
    summed = IMPN(tiny_config(carry_dim=5)).double().eval()
    _randomise_reads(model)
    summed.load_state_dict(model.state_dict())
    x = {m: v.double() for m, v in tri_modal_inputs(4).items()}
    given = {m: x[m] for m in ("text", "audio")}
    with torch.no_grad():
        out, reference = model(given), summed(given)
        own = summed.decoders["image"](reference.soil["image"])
        torch.testing.assert_close(out.decoded["image"], reference.decoded["image"] - own)
        for name in given:
            torch.testing.assert_close(out.decoded[name], reference.decoded[name])
        torch.testing.assert_close(model(x).decoded["image"], summed(x).decoded["image"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"decode_from": "carry"}, "set carry_dim"),
        ({"carry_front_end": True}, "set carry_dim"),
        ({"carry_dim": 4, "decode_from": "carry", "decode_detach": True}, "'sources' or 'both'"),
        ({"carry_dim": -1}, "carry_dim must be >= 0"),
        ({"carry_dim": 2.5}, "carry_dim must be an integer"),
        ({"carry_detach": True}, "set carry_dim"),
    ],
)
def test_bad_carry_settings_are_clear_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**fields)
