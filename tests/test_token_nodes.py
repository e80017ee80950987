"""Token nodes: each id of a row's unit sequence (``Batch.node_ids``) becomes a node of its
modality, the table row of the id plus a learned position."""

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
from vallayz.losses import IMPNLoss

BUCKETS = 11


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Ids beyond the table (taken modulo), each row cut to a random length (-1 after it)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 5 * BUCKETS, (batch, length), generator=generator)
    cut = torch.randint(0, length + 1, (batch,), generator=generator)
    ids[torch.arange(length)[None, :] >= cut[:, None]] = -1
    return ids


def _model(**overrides: object) -> IMPN:
    model = IMPN(tiny_config(token_nodes={"text": BUCKETS}, **overrides)).double().eval()
    with torch.no_grad():
        model.token_nodes["text"].position.normal_()
    return model


def _inputs(batch: int) -> dict[str, torch.Tensor]:
    return {m: x.double() for m, x in tri_modal_inputs(batch).items()}


def test_token_nodes_follow_the_adapter_node_as_table_rows_plus_positions() -> None:
    model = _model()
    ids = _ids(6, 5)
    ids[0] = -1  # a present row without units keeps its adapter node alone
    present = {"text": torch.tensor([True, True, False, True, True, True])}
    batch = Batch.of(_inputs(6), present=present, node_ids={"text": ids})
    nodes = model._encode(batch)
    begin, end = nodes.spans["text"]
    assert end - begin == 1 + ids.shape[1]
    table = model.token_nodes["text"].table.weight
    position = model.token_nodes["text"].position
    embedding = model.modality_embedding["text"]
    adapter = model.adapters["text"](batch.embeddings["text"])
    for row in range(6):
        real = nodes.real[row, begin:end].tolist()
        if not present["text"][row]:  # an absent row: the seed node alone
            assert real == [True] + [False] * ids.shape[1]
            torch.testing.assert_close(nodes.states[row, begin], model.seeds["text"] + embedding)
            continue
        torch.testing.assert_close(nodes.states[row, begin], adapter[row] + embedding)
        for t in range(ids.shape[1]):
            unit = int(ids[row, t])
            assert real[1 + t] == (unit >= 0)
            if unit >= 0:
                want = table[unit % BUCKETS] + position[t] + embedding
                torch.testing.assert_close(nodes.states[row, begin + 1 + t], want)


def test_padding_columns_and_batch_neighbours_change_nothing() -> None:
    model = _model()
    inputs, ids = _inputs(5), _ids(5, 4)
    soil = model(Batch.of(inputs, node_ids={"text": ids})).soil
    padded = torch.cat([ids, torch.full((5, 3), -1)], dim=1)
    torch.testing.assert_close(model(Batch.of(inputs, node_ids={"text": padded})).soil, soil)
    alone = Batch.of({m: x[2:3] for m, x in inputs.items()}, node_ids={"text": ids[2:3]})
    for name, value in model(alone).soil.items():
        torch.testing.assert_close(value[0], soil[name][2])


def test_the_order_of_the_units_matters_once_positions_are_learned() -> None:
    model = _model()
    inputs = _inputs(1)
    ids = torch.tensor([[3, 7, 1, 9]])
    forward = model.embed(Batch.of(inputs, node_ids={"text": ids}))
    backward = model.embed(Batch.of(inputs, node_ids={"text": ids.flip(1)}))
    assert not torch.allclose(forward, backward)
    with torch.no_grad():
        model.token_nodes["text"].position.zero_()
    # Without positions, the within-modality attention and the mean over nodes are
    # indifferent to order.
    torch.testing.assert_close(
        model.embed(Batch.of(inputs, node_ids={"text": ids})),
        model.embed(Batch.of(inputs, node_ids={"text": ids.flip(1)})),
    )


def test_a_batch_without_node_ids_reads_the_adapter_alone() -> None:
    model = _model()
    plain = IMPN(tiny_config()).double().eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("token_nodes")}
    )
    inputs = _inputs(4)
    torch.testing.assert_close(model(inputs).soil, plain(inputs).soil)


def test_only_the_table_rows_of_present_ids_get_gradients() -> None:
    model = IMPN(tiny_config(token_nodes={"text": BUCKETS})).train()
    ids = torch.tensor([[1, 2, -1], [2, 4, 4], [5, -1, -1], [6, 7, 8]])
    present = {"text": torch.tensor([True, True, True, False])}
    batch = Batch.of(tri_modal_inputs(4), present=present, node_ids={"text": ids})
    IMPNLoss()(model, batch, generator=torch.Generator().manual_seed(0)).total.backward()
    grad = model.token_nodes["text"].table.weight.grad
    assert grad is not None
    touched = {int(i) for i in grad.abs().sum(1).nonzero().flatten()}
    assert touched == {1, 2, 4, 5}  # row 3 is absent: its ids 6, 7, 8 are never read


def test_checkpoints_keep_the_token_nodes(tmp_path: Path) -> None:
    model = _model().float()
    model.save_pretrained(tmp_path / "m")
    loaded = IMPN.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.token_nodes == {"text": BUCKETS}
    batch = Batch.of(tri_modal_inputs(3), node_ids={"text": _ids(3, 4)})
    torch.testing.assert_close(loaded(batch).soil["text"], model(batch).soil["text"])


def test_sequences_longer_than_the_positions_are_refused() -> None:
    model = IMPN(tiny_config(token_nodes={"text": BUCKETS}, token_node_positions=3))
    batch = Batch.of(tri_modal_inputs(2), node_ids={"text": torch.zeros(2, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="raise token_node_positions"):
        model(batch)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token_nodes": {"video": 8}}, "token_nodes names modality 'video'"),
        ({"token_nodes": {"text": 0}}, r"token_nodes\['text'\] must be a positive integer"),
        ({"token_node_positions": 0}, "token_node_positions must be a positive integer"),
    ],
)
def test_bad_token_node_settings_are_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IMPNConfig(modalities=dict(DIMS), **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("node_ids", "message"),
    [
        ({"text": torch.zeros(4, 3)}, "node_ids for modality 'text' must be an integer"),
        ({"text": torch.zeros(3, 3, dtype=torch.long)}, r"expected \[4, length\]"),
        ({"video": torch.zeros(4, 3, dtype=torch.long)}, "no embeddings are"),
    ],
)
def test_bad_node_ids_are_rejected(node_ids: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batch.of({"text": torch.randn(4, DIMS["text"])}, node_ids=node_ids)


def test_data_folders_carry_node_ids_and_noise_withholds_them(tmp_path: Path) -> None:
    ids = _ids(10, 6).numpy()
    directory = write_paired_embeddings(
        tmp_path / "data",
        {
            "text": np.random.default_rng(0).normal(size=(10, 12)).astype(np.float32),
            "image": np.random.default_rng(1).normal(size=(10, 16)).astype(np.float32),
        },
        [{"id": f"r{i}"} for i in range(10)],
        node_ids={"text": ids},
    )
    data = PairedEmbeddings(directory)
    batch = data.batch([4, 0, 9])
    assert batch.node_ids["text"].dtype == torch.int64
    np.testing.assert_array_equal(batch.node_ids["text"].numpy(), ids[[4, 0, 9]])
    assert "image" not in batch.node_ids and not batch.tokens
    assert "text" not in PerturbedView(data, noisy=("text",), snr_db=0.0).batch([0]).node_ids
    assert "text" in PerturbedView(data, absent={"text": np.ones(10, bool)}).batch([0]).node_ids
    np.save(directory / "text.node_ids.npy", np.zeros((10, 6), np.float32))
    with pytest.raises(ValueError, match=r"text.node_ids.npy has dtype float32"):
        PairedEmbeddings(directory)


def test_syllable_ids_keep_order_and_repeats() -> None:
    from vallayz_train.tibetan.encoders import TibetanEncoder, syllables

    encoder = TibetanEncoder(buckets=1 << 20)
    line = "ཨོཾ་མ་ཎི་པདྨེ་ཧཱུྃ། ཨོཾ་མ་"
    ids = encoder.syllable_ids([line, ""], length=5)
    units = syllables(line)
    assert len(units) == 7 and units[0] == units[5]
    assert ids.shape == (2, 5) and bool((ids[1] == -1).all())
    assert len(set(ids[0].tolist())) == 5  # five distinct syllables, cut after five
    again = encoder.syllable_ids([" ".join(units[:2])], length=5)[0]
    assert again[:2].tolist() == ids[0, :2].tolist() and bool((again[2:] == -1).all())
    repeat = encoder.syllable_ids([line], length=7)[0]
    assert repeat[5] == repeat[0] and repeat[6] == repeat[1]


def test_fit_trains_token_nodes_from_a_data_folder(tmp_path: Path) -> None:
    from synthetic import write_synthetic

    from vallayz_train.cli import main

    data_dir = write_synthetic(tmp_path / "data", rows=60, groups=12)
    data = PairedEmbeddings(data_dir)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, size=(data.size, 5)).astype(np.int32)
    ids[:, 3:][rng.random((data.size, 2)) < 0.5] = -1
    np.save(data_dir / "text.node_ids.npy", ids)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model": {"soil_dim": 16, "heads": 2, "token_nodes": {"text": 40}},
                "train": {"max_steps": 3, "batch_size": 16, "warmup_steps": 0, "planner": False},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["fit", str(data_dir), "--out", str(run), "--config", str(config), "--quiet"]) == 0
    model = IMPN.from_pretrained(run).eval()
    assert model.token_nodes["text"].table.weight.shape == (40, 16)
    # The trained model reads the folder's unit ids: with them its text embeddings move.
    batch = PairedEmbeddings(data_dir).batch(np.arange(8), ["text"])
    assert batch.node_ids["text"].shape == (8, 5)
    without = Batch(batch.embeddings, batch.present, batch.padding)
    assert not torch.allclose(model.embed(batch), model.embed(without))


def test_the_pooled_state_averages_token_nodes_only_when_asked() -> None:
    ids = _ids(6, 5)
    inputs = _inputs(6)
    for in_pool in (True, False):
        model = _model(token_nodes_in_pool=in_pool)
        out = model(Batch.of(inputs, node_ids={"text": ids}))
        nodes, real = out.nodes["text"], out.node_mask["text"]
        for row in range(6):
            keep = [t for t in range(nodes.shape[1]) if real[row, t] and (in_pool or t == 0)]
            want = torch.stack([nodes[row, t] for t in keep]).mean(0)
            torch.testing.assert_close(out.soil["text"][row], want)
    with pytest.raises(ValueError, match="token_nodes_in_pool must be true or false"):
        IMPNConfig(modalities=dict(DIMS), token_nodes_in_pool="no")  # type: ignore[arg-type]
