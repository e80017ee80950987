"""The trainable embedding-bag front end over hashed feature ids (``Batch.tokens``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIMS, tiny_config, tri_modal_inputs

from vallayz import IMPN, Batch, IMPNConfig
from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.eval import PerturbedView
from vallayz.functional import hashed_bag_mean
from vallayz.learned import BaselineConfig, ContrastiveHeads, load_pretrained
from vallayz.losses import IMPNLoss


def _ids(batch: int, length: int, buckets: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10 * buckets, (batch, length), generator=generator)
    cut = torch.randint(0, length + 1, (batch,), generator=generator)
    ids[torch.arange(length)[None, :] >= cut[:, None]] = -1
    return ids


def test_hashed_bag_mean_matches_a_float64_loop() -> None:
    table = torch.randn(7, 5, dtype=torch.float64)
    ids = _ids(6, 9, buckets=7)
    ids[0] = -1  # a row without features
    got = hashed_bag_mean(table, ids)
    for row in range(ids.shape[0]):
        real = [int(i) % 7 for i in ids[row] if i >= 0]
        want = torch.stack([table[i] for i in real]).mean(0) if real else torch.zeros(5).double()
        torch.testing.assert_close(got[row], want)


def test_an_untrained_front_end_changes_nothing() -> None:
    config = tiny_config(token_buckets={"text": 32})
    with_bag = IMPN(config).eval()
    plain = IMPN(tiny_config()).eval()
    plain.load_state_dict(
        {k: v for k, v in with_bag.state_dict().items() if not k.startswith("front_ends")}
    )
    inputs = tri_modal_inputs(4)
    tokens = {"text": _ids(4, 6, 32)}
    torch.testing.assert_close(
        with_bag(Batch.of(inputs, tokens=tokens)).soil["text"], plain(inputs).soil["text"]
    )


def test_tokens_reach_the_adapter_and_train() -> None:
    model = IMPN(tiny_config(token_buckets={"text": 32}))
    with torch.no_grad():
        model.front_ends["text"].weight.normal_()
    inputs = tri_modal_inputs(6)
    batch = Batch.of(inputs, tokens={"text": _ids(6, 5, 32, seed=1)})
    other = Batch.of(inputs, tokens={"text": _ids(6, 5, 32, seed=2)})
    model.eval()
    assert not torch.allclose(model(batch).soil["text"], model(other).soil["text"])
    # Equal to adding the bag's output to the native input by hand.
    by_hand = {**inputs, "text": inputs["text"] + model.front_ends["text"](batch.tokens["text"])}
    torch.testing.assert_close(model(batch).soil["text"], model(by_hand).soil["text"])
    model.train()
    loss = IMPNLoss()(model, batch, generator=torch.Generator().manual_seed(0)).total
    loss.backward()
    grad = model.front_ends["text"].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_contrastive_heads_use_the_front_end_and_round_trip(tmp_path: Path) -> None:
    config = BaselineConfig("contrastive-heads", dict(DIMS), dim=8, token_buckets={"text": 16})
    model = ContrastiveHeads(config)
    with torch.no_grad():
        model.front_ends["text"].weight.normal_()
    inputs = tri_modal_inputs(5)
    batch = Batch.of({"text": inputs["text"]}, tokens={"text": _ids(5, 4, 16)})
    assert not torch.allclose(model.embed(batch), model.embed({"text": inputs["text"]}))
    model.save_pretrained(tmp_path / "heads")
    loaded = load_pretrained(tmp_path / "heads")
    torch.testing.assert_close(loaded.embed(batch), model.embed(batch))  # type: ignore[operator]


def test_checkpoint_round_trip_keeps_the_table(tmp_path: Path) -> None:
    model = IMPN(tiny_config(token_buckets={"image": 8})).eval()
    with torch.no_grad():
        model.front_ends["image"].weight.normal_()
    model.save_pretrained(tmp_path / "m")
    loaded = IMPN.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.token_buckets == {"image": 8}
    batch = Batch.of(tri_modal_inputs(3), tokens={"image": _ids(3, 4, 8)})
    torch.testing.assert_close(loaded(batch).soil["image"], model(batch).soil["image"])


@pytest.mark.parametrize(
    ("buckets", "message"),
    [({"video": 8}, "not one of"), ({"text": 0}, "positive integer"), ([8], "must be {")],
)
def test_bad_token_buckets_are_rejected(buckets: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IMPNConfig(modalities=dict(DIMS), token_buckets=buckets)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"text": torch.zeros(4, 3)}, "integer torch.Tensor"),
        ({"text": torch.zeros(3, 3, dtype=torch.long)}, r"expected \[4, length\]"),
        ({"video": torch.zeros(4, 3, dtype=torch.long)}, "no embeddings are"),
    ],
)
def test_bad_tokens_are_rejected(tokens: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batch.of({"text": torch.randn(4, DIMS["text"])}, tokens=tokens)


def _data(tmp_path: Path, ids: np.ndarray) -> Path:
    rows = ids.shape[0]
    return write_paired_embeddings(
        tmp_path / "data",
        {
            "text": np.random.default_rng(0).normal(size=(rows, 12)).astype(np.float32),
            "image": np.random.default_rng(1).normal(size=(rows, 16)).astype(np.float32),
        },
        [{"id": f"r{i}"} for i in range(rows)],
        tokens={"text": ids},
    )


def test_data_directories_carry_tokens_into_batches(tmp_path: Path) -> None:
    ids = _ids(10, 7, 50).numpy()
    data = PairedEmbeddings(_data(tmp_path, ids))
    batch = data.batch([3, 1, 8])
    assert batch.tokens["text"].dtype == torch.int64
    np.testing.assert_array_equal(batch.tokens["text"].numpy(), ids[[3, 1, 8]])
    assert "image" not in batch.tokens
    # Noise on a modality withholds its tokens; absence alone does not.
    assert "text" not in PerturbedView(data, noisy=("text",), snr_db=0.0).batch([0, 1]).tokens
    assert "text" in PerturbedView(data, absent={"text": np.ones(10, bool)}).batch([0]).tokens


def test_malformed_token_files_are_named(tmp_path: Path) -> None:
    directory = _data(tmp_path, _ids(10, 7, 50).numpy())
    np.save(directory / "text.tokens.npy", np.zeros((10, 7), np.float32))
    with pytest.raises(ValueError, match=r"text.tokens.npy has dtype float32"):
        PairedEmbeddings(directory)
    np.save(directory / "text.tokens.npy", np.zeros((9, 7), np.int32))
    with pytest.raises(ValueError, match=r"expected integer ids of shape \[10, length\]"):
        PairedEmbeddings(directory)


def test_a_model_on_a_subset_of_the_data_modalities_trains_and_validates(tmp_path: Path) -> None:
    from synthetic import write_synthetic

    from vallayz import IMPN
    from vallayz.learned import load_pretrained
    from vallayz_train.config import TrainConfig
    from vallayz_train.trainer import fit

    data_dir = write_synthetic(tmp_path / "data", rows=60, groups=12)
    overrides = {"modalities": {"text": 12, "image": 16}, "soil_dim": 16, "heads": 2}
    config = TrainConfig(max_steps=2, batch_size=16, eval_every=1, warmup_steps=0, planner=False)
    summary = fit(data_dir, tmp_path / "run", overrides, config, progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["modalities"] == {
        "text": 12,
        "image": 16,
    }
    # Validation scored exactly the model's two directions, never the data's audio.
    pairs = {k for k in summary if k.startswith("val/R@1/")}
    assert pairs == {"val/R@1/text->image", "val/R@1/image->text"}
    assert summary["steps"] == 2 and not summary["early_stopped"]
    model = load_pretrained(tmp_path / "run")
    assert isinstance(model, IMPN) and model.names == ["text", "image"]


def test_token_dropout_withholds_real_ids_only_and_keeps_one_per_row() -> None:
    from vallayz.masking import drop_tokens

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (400, 30), generator=generator)
    ids[:, 20:] = -1  # padding
    ids[0, 1:] = -1  # a row with a single id
    ids[1] = -1  # a row with none
    assert torch.equal(drop_tokens(ids, 0.0), ids)
    out = drop_tokens(ids, 0.3, generator)
    changed = out != ids
    assert bool((out[changed] == -1).all()) and bool((ids[changed] >= 0).all())
    assert torch.equal(out[:, 20:], ids[:, 20:])
    # About 30 % of the real ids are withheld (binomial sd about 0.5 % here).
    assert abs(changed.sum().item() / (ids >= 0).sum().item() - 0.3) < 0.03
    harsh = drop_tokens(ids, 0.99, generator)
    had = (ids >= 0).any(dim=1)
    assert torch.equal((harsh >= 0).any(dim=1), had)
    assert harsh[0, 0] == ids[0, 0] and bool((harsh[1] == -1).all())
    with pytest.raises(ValueError, match=r"token drop rates must lie in \[0, 1\)"):
        drop_tokens(ids, 1.0)


def test_row_token_dropout_empties_about_that_share_of_rows() -> None:
    from vallayz.masking import drop_tokens

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (2000, 8), generator=generator)
    out = drop_tokens(ids, 0.0, generator, row_rate=0.25)
    emptied = (out == -1).all(dim=1)
    assert abs(emptied.float().mean().item() - 0.25) < 0.03
    # Rows that were not drawn are untouched when no single id is dropped.
    assert torch.equal(out[~emptied], ids[~emptied])
    with pytest.raises(ValueError, match="token drop rates"):
        drop_tokens(ids, 0.0, row_rate=1.0)
