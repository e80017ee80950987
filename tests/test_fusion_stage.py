"""``vallayz fit --fuse``: a second stage that trains a fused path with the run frozen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_extend import assert_refused, fit_args, refused_inputs, tiny_inputs, without

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz.learned import load_pretrained
from vallayz_train.cli import main
from vallayz_train.config import TrainConfig
from vallayz_train.fusion_stage import fused_pairs, stage_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic data (three modalities) and a finished IMPN run on it."""
    root = tmp_path_factory.mktemp("fuse")
    data, config, plain = tiny_inputs(root)
    assert main(fit_args(data, root / "base", config)) == 0
    return {"root": root, "data": data, "base": root / "base", "plain": plain, "tiny": config}


def test_fit_fuse_trains_the_fused_path_only_and_records_it(runs: dict[str, Path]) -> None:
    stage = runs["root"] / "stage"
    fuse = ["--fuse", str(runs["base"]), "--train", "fused_subsets=2"]
    assert main(fit_args(runs["data"], stage, runs["plain"], *fuse)) == 0
    run = json.loads((stage / "run.json").read_text())
    base, model = load_pretrained(runs["base"]), load_pretrained(stage)
    assert isinstance(model, IMPN) and model.config.fusion_stage
    record = run["fusion_stage"]
    assert record["base"] == str(runs["base"].resolve())
    assert (record["layers"], record["gate"]) == (True, True)
    assert record["trainable_parameters"] == sum(p.numel() for p in model.fusion_parameters())
    assert record["frozen_parameters"] == sum(p.numel() for p in base.parameters())
    # Only the combinatorial term trains, the planner off.
    weights = run["train"]["loss_weights"]
    assert weights["combinatorial"] == 1.0
    assert all(value == 0 for name, value in weights.items() if name != "combinatorial")
    assert run["train"]["planner"] is False
    # Every weight of the base run is unchanged; the fused path has moved.
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())
    data = PairedEmbeddings(runs["data"])
    rows = np.flatnonzero(data.present["text"] & data.present["image"])[:16]
    batch = data.batch(rows, ["text", "image"])
    with torch.no_grad():
        for name in ("text", "image"):
            alone = data.batch(rows, [name])
            assert torch.equal(base.eval().embed(alone), model.eval().embed(alone))
        assert not torch.allclose(base.fuse(batch), model.fuse(batch), atol=1e-5)
    # Validation scored the fused multi-source pairs only.
    logged = (stage / "metrics.csv").read_text()
    assert "val/R@1/audio+text->image" in logged and "val/R@1/text->image" not in logged
    # A fusion stage resumes as one.
    assert main(["fit", "--resume", str(stage), "--quiet"]) == 0


def test_fit_fuse_parts_gate_alone(runs: dict[str, Path]) -> None:
    stage = runs["root"] / "gate"
    fuse = ["--fuse", str(runs["base"]), "--fuse-parts", "gate"]
    assert main(fit_args(runs["data"], stage, runs["plain"], *fuse)) == 0
    model = load_pretrained(stage)
    assert isinstance(model, IMPN)
    assert model.fusion_layers is None and model.fusion_gate is not None
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fusion_gate.norm.weight",
        "fusion_gate.norm.bias",
        "fusion_gate.score.weight",
        "fusion_gate.score.bias",
    }


def test_fit_fuse_refuses_bad_input_and_writes_nothing(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, data, base, config = runs["root"], runs["data"], runs["base"], runs["plain"]
    out = root / "refused"
    unfinished, wide = refused_inputs(root, base, data)
    two = without(data, root / "two", "image")
    apart = without(data, root / "apart")
    np.save(apart / "image.present.npy", np.zeros(240, dtype=bool))
    heads = root / "heads"
    assert main(fit_args(two, heads, config, "--method", "contrastive-heads")) == 0
    cases = {
        "has not finished": [data, "--fuse", unfinished],
        "'image' of the run": [two, "--fuse", base],
        "dimension 13": [wide, "--fuse", base],
        "hold three or more": [apart, "--fuse", base],
        "late fusion only": [two, "--fuse", heads],
        "without --extend and --resume": [data, "--fuse", base, "--extend", base],
    }
    assert_refused(cases, out, config, capsys)
    # The model section cannot change a fusion stage's model.
    fuse = ["--fuse", str(base)]
    assert main(fit_args(data, out, runs["tiny"], *fuse)) == 2
    assert "keeps the run's model" in capsys.readouterr().err
    assert not out.exists()


def test_stage_config_keeps_a_positive_combinatorial_weight_and_zeroes_the_rest() -> None:
    weights = {**TrainConfig().loss_weights, "combinatorial": 0.3}
    config = stage_config(TrainConfig(loss_weights=weights, planner=True))
    assert config.loss_weights["combinatorial"] == 0.3 and not config.planner
    assert sum(config.loss_weights.values()) == 0.3
    assert stage_config(TrainConfig()).loss_weights["combinatorial"] == 1.0


def test_fused_pairs_are_every_subset_with_each_modality_outside_it() -> None:
    assert fused_pairs(["a", "b", "c"]) == [
        (("a", "b"), "c"),
        (("a", "c"), "b"),
        (("b", "c"), "a"),
    ]
    assert fused_pairs(["a", "b"]) == []


def test_retrieve_embeds_a_query_of_several_sources_late_or_fused(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    stage = runs["root"] / "retrieve-stage"
    assert main(fit_args(runs["data"], stage, runs["plain"], "--fuse", str(runs["base"]))) == 0
    model = load_pretrained(stage).eval()
    data = PairedEmbeddings(runs["data"])
    ids = {item["id"]: i for i, item in enumerate(data.items)}
    query = next(q for q, r in ids.items() if data.present["text"][r] and data.present["audio"][r])
    candidates = np.flatnonzero(data.present["image"])
    with torch.no_grad():
        images = model.embed(data.batch(candidates, ["image"]))
        images = torch.nn.functional.normalize(images, dim=-1)
        for fusion in ("late", "fused"):
            sources = data.batch(np.array([ids[query]]), ["text", "audio"])
            q = torch.nn.functional.normalize(model.embed(sources, fusion=fusion), dim=-1)
            best = float((q @ images.T).max())
            capsys.readouterr()
            args = ["retrieve", str(stage), "--source", "text+audio", "--target", "image"]
            more = ["--candidates", str(runs["data"]), "--query-ids", query, "--k", "1"]
            assert main([*args, *more, "--fusion", fusion]) == 0
            printed = capsys.readouterr().out.splitlines()[1].split("\t")
            assert float(printed[1]) == pytest.approx(best, abs=1e-4), fusion
    heads = runs["root"] / "heads-retrieve"
    assert main(fit_args(runs["data"], heads, runs["plain"], "--method", "contrastive-heads")) == 0
    refused = {
        "fuses late only": [str(heads), "--query-ids", query, "--fusion", "fused"],
        "drop --input and --rerank": [str(stage), "--input", "x.npy"],
    }
    for message, options in refused.items():
        args = ["retrieve", options[0], "--source", "text+audio", "--target", "image"]
        assert main([*args, "--candidates", str(runs["data"]), *options[1:]]) == 2
        assert message in capsys.readouterr().err
    args = ["retrieve", str(stage), "--source", "text+image", "--target", "image"]
    assert main([*args, "--candidates", str(runs["data"]), "--query-ids", query]) == 2
    assert "the target not among them" in capsys.readouterr().err


def test_fused_rows_scores_each_source_alone_on_the_rows_of_the_fused_pair(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    from vallayz.eval import model_encoder, retrieval_table

    stage = runs["root"] / "rows-stage"
    assert main(fit_args(runs["data"], stage, runs["plain"], "--fuse", str(runs["base"]))) == 0
    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "fused_rows.py"))
    capsys.readouterr()
    argv = [str(runs["data"]), str(stage), "--sources", "text", "audio", "--target", "image"]
    assert script["main"]([*argv, "--splits", "val"]) == 0
    printed = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in capsys.readouterr().out.splitlines()[2:]
    ]
    got = {(row[2], row[3]): row[5] for row in printed}
    # The text -> image row is the retrieval of text alone on the rows holding all three.
    data = PairedEmbeddings(runs["data"])
    model = load_pretrained(stage).eval()
    rows = data.split_indices(TrainConfig().split_seed)["val"]
    rows = rows[
        data.present["text"][rows] & data.present["audio"][rows] & data.present["image"][rows]
    ]
    table = retrieval_table(
        data, rows, model_encoder(model, data, "soil"), [(("text",), "image")], pool=len(rows)
    )
    whole = next(r for r in table if r["pool"] == "all")
    assert float(got[("text->image", "soil")]) == pytest.approx(float(whole["R@1"]), abs=1e-4)
    assert {("text+audio->image", "late"), ("text+audio->image", "fused")} <= got.keys()
    weights = [float(row[3]) for row in printed if row[2].startswith("gate weight")]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=2e-3)
