"""Adding a modality to a trained model: only the new parts train, the old ones stay bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIMS, tiny_config
from synthetic import write_synthetic

from vallayz import IMPN, Batch
from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError
from vallayz.learned import BaselineConfig, ContrastiveHeads, build_model, load_pretrained
from vallayz.losses import LossSettings
from vallayz_train.cli import main

OLD = {"text": DIMS["text"], "audio": DIMS["audio"]}


def old_outputs(model: IMPN, x: dict[str, torch.Tensor], ids: torch.Tensor) -> list[torch.Tensor]:
    """Every way of reading the old modalities alone: isolated embeddings (with and without
    token nodes), fused, bridged and translated."""
    with torch.no_grad():
        return [
            model.embed(Batch.of({"text": x["text"]}, node_ids={"text": ids})),
            model.embed(x["audio"], "audio"),
            model.embed({"text": x["text"], "audio": x["audio"]}),
            model.embed(x["audio"], "audio", target="text"),
            model.translate(x["text"], "text", "audio"),
        ]


def train(model: torch.nn.Module, batch: Batch, steps: int = 5) -> None:
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    objective = model.objective(LossSettings())  # type: ignore[operator]
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        objective(batch, torch.Generator().manual_seed(step)).total.backward()
        optimizer.step()
    model.eval()


def test_extension_freezes_the_old_model_and_keeps_its_outputs_bit_for_bit() -> None:
    base = IMPN(tiny_config(modalities=dict(OLD), token_nodes={"text": 30})).eval()
    x = {"text": torch.randn(37, DIMS["text"]), "audio": torch.randn(37, DIMS["audio"])}
    ids = torch.randint(-1, 30, (37, 5))
    before = old_outputs(base, x, ids)
    extended = base.extend({"image": DIMS["image"]}, token_buckets={"image": 8})
    assert extended.names == ["text", "audio", "image"]
    assert not extended.training
    trainable = {k for k, p in extended.named_parameters() if p.requires_grad}
    assert trainable == extended._own_keys("image") - {"log_sigma.image"}
    assert all(k.split(".")[1] == "image" for k in trainable)
    assert any(k.startswith("front_ends.image") for k in trainable)
    after = old_outputs(extended, x, ids)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    frozen = {k: v.clone() for k, v in extended.state_dict().items() if k not in trainable}
    untrained = extended.adapters["image"].up.weight.detach().clone()
    image = torch.randn(37, DIMS["image"])
    present = {"text": torch.rand(37) < 0.7, "audio": torch.ones(37, dtype=torch.bool)}
    present["image"] = torch.ones(37, dtype=torch.bool)
    train(extended, Batch.of({**x, "image": image}, present, node_ids={"text": ids}))
    # The new parts learned something; nothing frozen moved, and the old outputs did not.
    assert not torch.equal(extended.adapters["image"].up.weight, untrained)
    assert all(torch.equal(extended.state_dict()[k], v) for k, v in frozen.items())
    after = old_outputs(extended, x, ids)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # The new modality is served both ways.
    assert extended.embed(image, "image").shape == (37, 16)
    assert extended.translate(image, "image", "text").shape == (37, DIMS["text"])


def test_extended_model_round_trips_frozen(tmp_path: Path) -> None:
    extended = IMPN(tiny_config(modalities=dict(OLD))).extend({"image": DIMS["image"]})
    extended.save_pretrained(tmp_path)
    loaded = IMPN.from_pretrained(tmp_path)
    assert loaded.config.frozen_modalities == ["text", "audio"]
    assert loaded.trainable_modalities == ["image"]
    assert [k for k, p in loaded.named_parameters() if p.requires_grad] == [
        k for k, p in extended.named_parameters() if p.requires_grad
    ]
    # A second extension freezes the first one's modality too.
    again = loaded.extend({"depth": 4})
    assert again.trainable_modalities == ["depth"]


def test_extension_loss_skips_terms_of_old_modalities_alone() -> None:
    extended = IMPN(tiny_config(modalities=dict(OLD))).extend({"image": DIMS["image"]})
    batch = Batch.of(
        {"text": torch.randn(8, 12), "audio": torch.randn(8, 6), "image": torch.randn(8, 16)}
    )
    terms = extended.objective()(batch, torch.Generator().manual_seed(0)).terms
    assert "contrastive/text-audio" not in terms
    assert {"contrastive/text-image", "contrastive/audio-image"} <= set(terms)
    # A batch of old modalities alone trains nothing and gives a loss without a gradient path
    # to anything but the new seed's messages: no contrastive, kNN or orthogonality term.
    old = Batch.of({"text": torch.randn(8, 12), "audio": torch.randn(8, 6)})
    terms = extended.objective()(old, torch.Generator().manual_seed(0)).terms
    assert float(terms["contrastive"]) == float(terms["knn"]) == 0.0


def test_extension_refuses_bad_input() -> None:
    base = IMPN(tiny_config(modalities=dict(OLD)))
    with pytest.raises(VallayzUserError, match="'audio' already exists"):
        base.extend({"audio": 6, "image": 16})
    with pytest.raises(VallayzUserError, match="at least one new modality"):
        base.extend({})
    with pytest.raises(VallayzUserError, match="not new modalities"):
        base.extend({"image": 16}, token_nodes={"text": 8})
    with pytest.raises(VallayzUserError, match="not usable as a key"):
        base.extend({"bad name": 4})
    with pytest.raises(ValueError, match="frozen"):
        base.extend({"image": 16}).set_gating(top_k=1)


@pytest.mark.parametrize(
    "architecture", ["contrastive-heads", "mlp-translator", "seq-heads", "fusemix"]
)
def test_baseline_extension_trains_only_the_new_modality(architecture: str) -> None:
    torch.manual_seed(0)
    base = build_model(architecture, dict(OLD), {"dim": 8, "hidden": 16}).eval()
    x = {"text": torch.randn(20, 12), "audio": torch.randn(20, 6)}

    def read(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            if architecture != "mlp-translator":
                return model.embed(x["text"], "text")  # type: ignore[operator]
            return model.translate(x["text"], "text", "audio")  # type: ignore[operator]

    before = read(base)
    extended = base.extend({"image": 16})
    trainable = [k for k, p in extended.named_parameters() if p.requires_grad]
    assert trainable and all("image" in k for k in trainable)
    batch = Batch.of({**x, "image": torch.randn(20, 16)})
    out = extended.objective()(batch)
    assert "contrastive/text-audio" not in out.terms and "translation/text-audio" not in out.terms
    train(extended, batch)
    assert torch.equal(read(extended), before)
    with pytest.raises(VallayzUserError, match="already exists"):
        extended.extend({"text": 12})


def test_extended_heads_round_trip(tmp_path: Path) -> None:
    base = ContrastiveHeads(BaselineConfig("contrastive-heads", dict(OLD), dim=8))
    base.extend({"image": 16}).save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.config.frozen_modalities == ["text", "audio"]
    assert [k for k, p in loaded.named_parameters() if p.requires_grad] == [
        "heads.image.weight",
        "heads.image.bias",
    ]


# ---------------------------------------------------------------------- the command line
TINY = {"model": {"soil_dim": 16, "heads": 2, "layers": 1, "gate_hidden": 8, "ffn_mult": 2}}


def fit_args(data: Path, out: Path, config: Path, *more: str) -> list[str]:
    steps = ["--max-steps", "8", "--batch-size", "32", "--quiet", "--config", str(config)]
    return ["fit", str(data), "--out", str(out), *steps, *more]


def without(data: Path, folder: Path, *names: str) -> Path:
    """A copy of the data folder ``data`` without the modalities ``names``."""
    shutil.copytree(data, folder)
    for name in names:
        for path in folder.glob(f"{name}.*npy"):
            path.unlink()
    return folder


def refused_inputs(root: Path, base: Path, data: Path) -> tuple[Path, Path]:
    """A copy of the run ``base`` that has not finished, and a copy of ``data`` whose text is
    13-d instead of 12-d."""
    unfinished = root / "unfinished"
    shutil.copytree(base, unfinished)
    (unfinished / "summary.json").unlink()
    wide = without(data, root / "wide")
    np.save(wide / "text.npy", np.zeros((240, 13), dtype=np.float32))
    return unfinished, wide


def assert_refused(
    cases: dict[str, list[Path | str]],
    out: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each case (the message, then the data folder and the options of ``fit``) exits with
    status 2 and that message on one line, and writes nothing at ``out``."""
    for message, (folder, *options) in cases.items():
        assert main(fit_args(Path(folder), out, config, *map(str, options))) == 2, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists(), message


def tiny_inputs(root: Path) -> tuple[Path, Path, Path]:
    """The synthetic data folder, a config file of a tiny model and an empty config file."""
    data = write_synthetic(root / "data")
    config = root / "config.json"
    config.write_text(json.dumps(TINY))
    plain = root / "plain.json"
    plain.write_text("{}")
    return data, config, plain


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic data, a copy without its images, and a finished text+audio run."""
    root = tmp_path_factory.mktemp("extend")
    data, config, plain = tiny_inputs(root)
    old = without(data, root / "old", "image")
    assert main(fit_args(old, root / "base", config)) == 0
    return {"root": root, "data": data, "old": old, "base": root / "base", "plain": plain}


def test_fit_extend_trains_the_new_modality_and_records_what_it_froze(
    runs: dict[str, Path],
) -> None:
    new = runs["root"] / "new"
    assert main(fit_args(runs["data"], new, runs["plain"], "--extend", str(runs["base"]))) == 0
    record = json.loads((new / "run.json").read_text())["extend"]
    base, model = load_pretrained(runs["base"]), load_pretrained(new)
    assert record["base"] == str(runs["base"].resolve())
    assert (sorted(record["base_modalities"]), record["new_modalities"]) == (
        ["audio", "text"],
        ["image"],
    )
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert record["trainable_parameters"] == trained
    assert record["frozen_parameters"] == sum(p.numel() for p in base.parameters())
    assert json.loads((new / "run.json").read_text())["train"]["planner"] is False
    # The old modalities' weights and embeddings are the base run's, bit for bit.
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())
    data = PairedEmbeddings(runs["data"])
    for name in ("text", "audio"):
        batch = data.batch(np.flatnonzero(data.present[name]), [name])
        assert torch.equal(base.eval().embed(batch), model.eval().embed(batch))
    # Validation scored the pairs of the new modality only.
    logged = (new / "metrics.csv").read_text()
    assert "val/R@1/text->image" in logged and "val/R@1/text->audio" not in logged
    # An extension run resumes as one (its trainable parameters only in the optimizer).
    assert main(["fit", "--resume", str(new), "--quiet"]) == 0


def test_fit_extend_of_the_contrastive_heads(runs: dict[str, Path]) -> None:
    root = runs["root"]
    heads = ["--method", "contrastive-heads"]
    config = root / "heads.json"
    config.write_text(json.dumps({"model": {"dim": 8}}))
    assert main(fit_args(runs["old"], root / "heads", config, *heads)) == 0
    out = root / "heads-new"
    # The model section may give the new modality a front end, nothing else.
    assert main(fit_args(runs["data"], out, config, "--extend", str(root / "heads"))) == 2
    assert not out.exists()
    assert main(fit_args(runs["data"], out, runs["plain"], "--extend", str(root / "heads"))) == 0
    model = load_pretrained(out)
    assert isinstance(model, ContrastiveHeads)
    assert model.trainable_modalities == ["image"]


@pytest.mark.parametrize("method", ["seq-heads", "fusemix"])
def test_fit_extend_of_the_sequence_aware_heads_and_fusemix(
    runs: dict[str, Path], method: str
) -> None:
    root = runs["root"]
    config = root / f"{method}.json"
    config.write_text(json.dumps({"model": {"dim": 8, "hidden": 16}}))
    base, out = root / method, root / f"{method}-new"
    assert main(fit_args(runs["old"], base, config, "--method", method)) == 0
    assert main(fit_args(runs["data"], out, runs["plain"], "--extend", str(base))) == 0
    model, before = load_pretrained(out), load_pretrained(base)
    assert model.trainable_modalities == ["image"]
    data = PairedEmbeddings(runs["data"])
    for name in ("text", "audio"):
        batch = data.batch(np.flatnonzero(data.present[name]), [name])
        assert torch.equal(before.eval().embed(batch), model.eval().embed(batch))


def test_fit_extend_by_infonce_alone_skips_the_passes_with_dropped_modalities(
    runs: dict[str, Path],
) -> None:
    out = runs["root"] / "infonce"
    weights = 'loss_weights={"translation": 0, "cycle": 0, "denoising": 0}'
    extend = ["--extend", str(runs["base"]), "--train", weights]
    assert main(fit_args(runs["data"], out, runs["plain"], *extend)) == 0
    terms: dict[str, list[float]] = {}
    for line in (out / "metrics.csv").read_text().splitlines()[1:]:
        _, name, value = line.split(",")
        terms.setdefault(name, []).append(float(value))
    # The new modality's contrastive terms train; the terms of the skipped passes read 0.
    assert min(terms["train/contrastive"]) > 0
    for name in ("translation", "cycle", "denoising"):
        assert terms[f"train/{name}"] and set(terms[f"train/{name}"]) == {0.0}


def test_fit_extend_refuses_bad_input_and_writes_nothing(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, data, base, config = runs["root"], runs["data"], runs["base"], runs["plain"]
    out = root / "refused"
    unfinished, wide = refused_inputs(root, base, data)
    apart = without(data, root / "apart", "audio")
    half = np.arange(240) < 120
    np.save(apart / "text.present.npy", half)
    np.save(apart / "image.present.npy", ~half)
    cases = {
        "already exists in the run": [data, "--extend", base, "--add", "text"],
        "every modality of": [runs["old"], "--extend", base],
        "no row of": [apart, "--extend", base],
        "dimension 13": [wide, "--extend", base],
        "has not finished": [data, "--extend", unfinished],
        "pass one of them": [data, "--extend", base, "--resume", base],
    }
    assert_refused(cases, out, config, capsys)


def test_a_node_reader_starts_as_the_identity_and_ignores_padding() -> None:
    from vallayz.layers import NodeReader

    torch.manual_seed(0)
    reader = NodeReader(8, 2).double()
    states = torch.randn(4, 5, 8, dtype=torch.float64)
    real = torch.tensor([[True] * 5, [True, True, False, False, False]] * 2)
    assert torch.equal(reader(states, real), states)
    torch.nn.init.normal_(reader.attention.out_proj.weight)
    moved = states.clone()
    moved[~real] = 100.0  # what the padded nodes hold must not reach the real ones
    read, read_moved = reader(states, real), reader(moved, real)
    assert not torch.allclose(read, states)
    torch.testing.assert_close(read[real], read_moved[real])


def test_a_pooling_reader_starts_as_the_mean_of_the_real_nodes_and_ignores_padding() -> None:
    from vallayz.layers import PoolingReader

    torch.manual_seed(0)
    reader = PoolingReader(8, 2, positions=6).double()
    states = torch.randn(4, 5, 8, dtype=torch.float64)
    real = torch.tensor([[True] * 5, [True, True, False, False, False]] * 2)
    means = torch.stack([states[i][real[i]].mean(dim=0) for i in range(4)])
    torch.testing.assert_close(reader(states, real), means)
    for parameter in (reader.position, reader.query, reader.attention.out_proj.weight):
        torch.nn.init.normal_(parameter)
    moved = states.clone()
    moved[~real] = 100.0
    read = reader(states, real)
    assert not torch.allclose(read, means)
    torch.testing.assert_close(read, reader(moved, real))
    with pytest.raises(ValueError, match="positions for 6"):
        reader(torch.randn(1, 7, 8, dtype=torch.float64), torch.ones(1, 7, dtype=torch.bool))


def test_an_added_sequence_with_a_pooling_reader_enters_the_bridge_as_one_node() -> None:
    torch.manual_seed(0)
    base = IMPN(tiny_config(modalities=dict(OLD))).eval()
    x = {"text": torch.randn(37, DIMS["text"]), "audio": torch.randn(37, DIMS["audio"])}
    before = old_outputs(base, x, torch.full((37, 5), -1))
    extended = base.extend({"image": DIMS["image"]}, pooling_readers=["image"])
    assert extended.config.pooling_readers == ["image"]
    trainable = {k for k, p in extended.named_parameters() if p.requires_grad}
    assert any(k.startswith("pooling_readers.image.") for k in trainable)
    frames = torch.randn(37, 6, DIMS["image"])
    padding = torch.arange(6)[None, :] < torch.randint(1, 7, (37, 1))
    batch = Batch.of({**x, "image": frames}, padding={"image": padding})
    train(extended, batch)
    assert not extended.training
    for old, new in zip(before, old_outputs(extended, x, torch.full((37, 5), -1)), strict=True):
        assert torch.equal(old, new)
    with torch.no_grad():
        out = extended(Batch.of({"image": frames}, padding={"image": padding}), isolate=True)
        assert out.node_mask["image"].shape == (37, 1)
        # What the padded frames hold does not reach the embedding.
        moved = torch.where(padding[..., None], frames, torch.full_like(frames, 50.0))
        torch.testing.assert_close(
            extended.embed(Batch.of({"image": frames}, padding={"image": padding})),
            extended.embed(Batch.of({"image": moved}, padding={"image": padding})),
        )
    with pytest.raises(VallayzUserError, match="not new modalities"):
        base.extend({"image": DIMS["image"]}, pooling_readers=["text"])
    with pytest.raises(ValueError, match="one reader"):
        tiny_config(node_readers=["text"], pooling_readers=["text"])


def test_fit_extend_gives_an_added_sequence_a_reader_of_its_own(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = runs["root"]
    old = without(runs["data"], root / "no-audio", "audio")
    base = root / "base-no-audio"
    config = root / "config.json"
    assert main(fit_args(old, base, config)) == 0
    new = root / "with-audio"
    plain = runs["plain"]
    reader = ["--model", 'node_readers=["audio"]']
    assert main(fit_args(runs["data"], new, plain, "--extend", str(base), *reader)) == 0
    model, before = load_pretrained(new), load_pretrained(base)
    assert model.config.node_readers == ["audio"]
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert any(k.startswith("readers.audio.") for k in trainable)
    assert all(k.split(".")[1] == "audio" for k in trainable)
    data = PairedEmbeddings(runs["data"])
    for name in ("text", "image"):
        batch = data.batch(np.flatnonzero(data.present[name]), [name])
        assert torch.equal(before.eval().embed(batch), model.eval().embed(batch))
    # A reader for an old modality, or written as a bare name, is refused before training.
    for bad, message in [
        ('node_readers=["text"]', "not new modalities"),
        ("node_readers=audio", "a list"),
    ]:
        out = root / "bad"
        assert main(fit_args(runs["data"], out, plain, "--extend", str(base), "--model", bad)) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
