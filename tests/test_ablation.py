"""Ablations: named variants run through the trainer into run folders, scored on validation."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic import write_synthetic

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.errors import VallayzUserError
from vallayz.eval import model_encoder, retrieval_table
from vallayz_train.bench.ablation import AblationSpec, Variant, run_ablation
from vallayz_train.cli import build_parser, main
from vallayz_train.run_folder import load_model
from vallayz_train.tibetan.ablations import REFERENCE, VARIANTS, NoSpeech
from vallayz_train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}


def _ablation_commands() -> list[list[str]]:
    """The argument lists of BENCHMARKS.md's ``vallayz ablate`` commands."""
    text = (ROOT / "BENCHMARKS.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.startswith("vallayz ablate "):
            words = shlex.split(line.removeprefix("vallayz ablate "), comments=True)
            commands.append([w.replace("$s", "1") for w in words])
    return commands


def test_every_variant_and_option_of_the_documented_ablations_still_parses() -> None:
    commands = _ablation_commands()
    assert len(commands) >= 10
    parser = build_parser()
    for words in commands:
        args = parser.parse_args(["ablate", *words])
        assert set(args.only or []) <= set(VARIANTS), set(args.only) - set(VARIANTS)


def test_variant_configs_change_only_what_they_name(tmp_path: Path) -> None:
    spec = AblationSpec(steps=40, base={"front_end_lr": 3e-2})
    train = spec.train_config()
    assert (train.max_steps, train.eval_every, train.warmup_steps) == (40, 40, 10)
    assert train.front_end_lr == 3e-2 and not train.planner
    defaults = {"soil_dim": 128, "token_buckets": {"bo": 2**16}}
    model, config = VARIANTS["no kNN term"].configs(defaults, train, tmp_path)
    assert model == defaults
    assert config.loss_weights == {**train.loss_weights, "knn": 0.0}
    model, config = VARIANTS["no message passing"].configs(defaults, train, tmp_path)
    off = {"translation": 0.0, "cycle": 0.0, "denoising": 0.0}
    assert model == defaults and config.loss_weights == {**train.loss_weights, **off}
    assert all(train.loss_weights[term] > 0 for term in off)  # the defaults pass messages
    heads = VARIANTS[f"{REFERENCE}, n-gram table 2^17"]
    model, config = heads.configs(defaults, train, tmp_path)
    assert heads.method == "contrastive-heads" and model == {"token_buckets": {"bo": 2**17}}
    data = write_synthetic(tmp_path / "data", rows=40, groups=8)
    model, _ = Variant(data=NoSpeech()).configs(defaults, train, data)
    assert model["modalities"] == {"text": 12, "audio": 6, "image": 16}  # no speech to drop
    with pytest.raises(VallayzUserError, match="unknown variant"):
        run_ablation(data, tmp_path / "out", spec, VARIANTS, ["no such variant"])


def test_a_variant_is_the_same_trainer_run_and_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_synthetic(tmp_path / "data", rows=120, groups=24)
    spec = AblationSpec(steps=4, batch_size=16, pairs=[(("text",), "image")], pool=5)
    variants = {
        "default": Variant(),
        "K=1": Variant({"variants": 1}),
        "heads (reference)": Variant(method="contrastive-heads"),
    }
    out = tmp_path / "ablate"
    table = run_ablation(data, out, spec, variants, model_defaults=SMALL, progress=False)
    assert [r["variant"] for r in table] == list(variants)
    assert all(0.0 <= r["val R@1"] <= 1.0 and r["pool"] == "5" for r in table)
    assert json.loads((out / "ablation.json").read_text()) == table
    assert json.loads((out / "K=1" / "config.json").read_text())["variants"] == 1
    assert json.loads((out / "heads-reference" / "run.json").read_text())["method"] == (
        "contrastive-heads"
    )
    # The default variant is exactly what vallayz fit trains with the same settings.
    fit(data, tmp_path / "direct", dict(SMALL), spec.train_config(), progress=False)
    ours = load_file(str(out / "default" / "model.safetensors"))
    direct = load_file(str(tmp_path / "direct" / "model.safetensors"))
    assert ours.keys() == direct.keys()
    for name, value in ours.items():
        assert torch.equal(value, direct[name]), name

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("finished variants should be reused")

    monkeypatch.setattr("vallayz_train.bench.runs.fit", refuse)
    again = run_ablation(data, out, spec, variants, model_defaults=SMALL, progress=False)
    assert [r["variant"] for r in again] == list(variants)
    assert [r["val R@1"] for r in again] == [r["val R@1"] for r in table]
    # The chosen variant reported on test: the same runs, scored on the test rows.
    test = run_ablation(
        data, out, replace(spec, split="test"), variants, model_defaults=SMALL, progress=False
    )
    assert all("test R@1" in r and "val R@1" not in r for r in test)
    # The validation table stays; the test table has its own file.
    assert json.loads((out / "ablation.json").read_text())[0]["val R@1"] == table[0]["val R@1"]
    assert json.loads((out / "ablation-test.json").read_text()) == test
    folder = PairedEmbeddings(data)
    rows = folder.split_indices(spec.train_config().split_seed)["test"]
    encoder = model_encoder(load_model(out / "K=1"), folder, "soil")
    want = retrieval_table(folder, rows, encoder, spec.pairs, spec.pool)
    assert test[1]["test R@1"] == next(r["R@1"] for r in want if r["pool"] == "5")


def test_each_variant_is_scored_on_the_paths_its_method_serves(tmp_path: Path) -> None:
    """IMPN on the soil and translation paths; the heads on soil alone; the pairwise MLPs, which
    have no shared space, on translation alone."""
    from vallayz_train.tibetan.ablations import MLP_REFERENCE

    data = write_synthetic(tmp_path / "data", rows=80, groups=16)
    spec = AblationSpec(
        steps=2, batch_size=16, pairs=[(("text",), "image")], pool=5, modes=("soil", "translate")
    )
    names = ["decode from the sources", REFERENCE, MLP_REFERENCE]
    variants = {name: VARIANTS[name] for name in names}
    table = run_ablation(
        data, tmp_path / "ab", spec, variants, model_defaults=SMALL, progress=False
    )
    assert [(r["variant"], r["mode"]) for r in table] == [
        (names[0], "soil"),
        (names[0], "translate"),
        (REFERENCE, "soil"),
        (MLP_REFERENCE, "translate"),
    ]
    config = json.loads((tmp_path / "ab" / "decode-from-the-sources" / "config.json").read_text())
    assert config["decode_from"] == "sources"


def test_vallayz_ablate_runs_named_variants_on_tibetan_shaped_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(120, 4))
    arrays = {
        "bo": (latent @ rng.normal(size=(4, 10))).astype(np.float32),
        "en": (latent @ rng.normal(size=(4, 8))).astype(np.float32),
        "speech": (latent @ rng.normal(size=(4, 6)))[:, None, :].repeat(3, 1).astype(np.float32),
    }
    items = [{"id": f"i{i}", "group": f"g{i % 30}", "text_en": f"e{i}"} for i in range(120)]
    tokens = {"bo": rng.integers(0, 50, size=(120, 5))}
    data = write_paired_embeddings(tmp_path / "data", arrays, items, tokens=tokens)
    assert main(["ablate", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == list(VARIANTS)
    args = ["ablate", str(data), "--out", str(tmp_path / "ab"), "--steps", "2", "--pool", "5"]
    options = ["--batch-size", "16", "--base", "bench", "--noisy-snr", "10", "--quiet"]
    assert main([*args, *options, "--only", "no speech", REFERENCE]) == 0
    table = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    assert [r["pair"] for r in table] == [
        "bo->en",
        "bo->en at 10 dB",
        "bo->en",
        "bo+speech->en",
        "bo->en at 10 dB",
        "bo+speech->en, bo at 10 dB",
        "bo->en (rows of bo+speech)",
        "speech->en (rows of bo+speech)",
    ]
    # Late (soil) and fused rows of the combinatorial variant; fused on bo+speech->en only.
    fused = [*args, *options, "--modes", "soil", "fused", "--only", "combinatorial term"]
    assert main(fused) == 0
    whole = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    # The file keeps the first call's rows and adds this call's.
    assert whole[: len(table)] == table
    table = whole[len(table) :]
    assert {r["variant"] for r in table} == {"combinatorial term"}
    assert [(r["pair"], r["mode"]) for r in table] == [
        ("bo->en", "soil"),
        ("bo+speech->en", "soil"),
        ("bo->en at 10 dB", "soil"),
        ("bo+speech->en, bo at 10 dB", "soil"),
        ("bo+speech->en", "fused"),
        ("bo+speech->en, bo at 10 dB", "fused"),
        ("bo->en (rows of bo+speech)", "soil"),
        ("speech->en (rows of bo+speech)", "soil"),
    ]
    train = json.loads((tmp_path / "ab" / "combinatorial-term" / "run.json").read_text())["train"]
    assert train["loss_weights"]["combinatorial"] == 1.0
    config = json.loads((tmp_path / "ab" / "no-speech" / "config.json").read_text())
    assert set(config["modalities"]) == {"bo", "en"}
    train = json.loads((tmp_path / "ab" / "no-speech" / "run.json").read_text())["train"]
    assert (train["max_steps"], train["front_end_lr"], train["planner"]) == (2, 3e-2, False)
    capsys.readouterr()
    assert main([*args, "--only", "no such variant"]) == 2
    assert "unknown variant" in capsys.readouterr().err


def test_encoder_variants_are_listed_and_the_old_script_maps_onto_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    from vallayz_train.tibetan.ablations import ENCODER_PARTS, ENCODER_PROBE

    assert main(["ablate", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for name, change in ENCODER_PARTS.items():
        assert name in listed and f"{ENCODER_PROBE}, {name}" in listed
        assert dict(VARIANTS[name].model) == change
        probe = VARIANTS[f"{ENCODER_PROBE}, {name}"]
        assert dict(probe.model) == {**change, "zero_init_residual": False}
        assert probe.train == VARIANTS["contrastive only"].train
    spec = importlib.util.spec_from_file_location(
        "ablate_encoder", ROOT / "scripts/ablate_encoder.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert set(script.KINDS.values()) <= set(listed)
    words = script.ablate_arguments(
        ["d", "--source", "bo", "--target", "en", "--val-rows", "7", "--kinds", "impn no-ffn"]
    )
    args = build_parser().parse_args(["ablate", *words])
    assert (args.data, args.pairs, args.pool) == ("d", ["bo->en"], 7)
    assert args.only == [f"{ENCODER_PROBE}, no bridge feed-forward"]
    with pytest.raises(SystemExit):
        script.ablate_arguments(["d", "--source", "bo", "--target", "en", "--kinds", "adapter"])


def test_a_fusion_stage_variant_trains_from_its_base_variants_run(tmp_path: Path) -> None:
    """A fusion stage is trained from the base variant's run (trained first when missing),
    keeps its single-source rows to the digit and is scored on the fused path."""
    data = write_synthetic(tmp_path / "data", rows=120, groups=24)
    pairs = [(("text",), "image"), (("text", "audio"), "image")]
    spec = AblationSpec(steps=4, batch_size=16, pairs=pairs, pool=5, modes=("soil", "fused"))
    names = ["fusion stage", "fusion stage, gate only", "default"]
    variants = {name: VARIANTS[name] for name in names}
    out = tmp_path / "ab"
    table = run_ablation(data, out, spec, variants, model_defaults=SMALL, progress=False)
    base = load_model(out / "default")
    for folder, parts in (("fusion-stage", "both"), ("fusion-stage-gate-only", "gate")):
        run = json.loads((out / folder / "run.json").read_text())
        assert run["fusion_stage"]["base"] == str((out / "default").resolve())
        assert (run["fusion_stage"]["layers"], run["fusion_stage"]["gate"]) == (
            parts == "both",
            True,
        )
        stage = load_model(out / folder)
        state = stage.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())

    def rows(variant: str) -> dict[tuple[str, str], float]:
        return {(r["pair"], r["mode"]): r["val R@1"] for r in table if r["variant"] == variant}

    # Every variant is scored on the shared space and on the fused path; a stage's shared
    # space is its base's (the weights above), so its rows are the base's.
    for name in names[:2]:
        assert rows(name).keys() == rows("default").keys()
        assert ("text+audio->image", "fused") in rows(name)
        for key in [("text->image", "soil"), ("text+audio->image", "soil")]:
            assert rows(name)[key] == rows("default")[key]
    # Each source of the multi-source pair is also scored alone on that pair's rows.
    folder = PairedEmbeddings(data)
    val = folder.split_indices(spec.train_config().split_seed)["val"]
    held = val[folder.present["audio"][val] & folder.present["image"][val]]
    encoder = model_encoder(base, folder, "soil")
    for source in ("text", "audio"):
        want = retrieval_table(folder, held, encoder, [((source,), "image")], spec.pool)
        got = rows("default")[(f"{source}->image (rows of text+audio)", "soil")]
        assert got == next(r["R@1"] for r in want if r["pool"] == "5")
    with pytest.raises(VallayzUserError, match="not a variant"):
        run_ablation(
            data, out, spec, {"s": Variant(fusion_stage_of="missing")}, model_defaults=SMALL
        )


def test_the_table_file_keeps_the_rows_of_variants_run_by_earlier_calls(tmp_path: Path) -> None:
    from vallayz_train.bench.ablation import write_table

    path = tmp_path / "ablation.json"
    first = [{"variant": "a", "val R@1": 0.1}, {"variant": "b", "val R@1": 0.2}]
    write_table(path, first, log=lambda *a: None)
    assert json.loads(path.read_text()) == first
    # Another variant adds to the table; a variant run again replaces its own rows.
    write_table(path, [{"variant": "c", "val R@1": 0.3}], log=lambda *a: None)
    write_table(path, [{"variant": "a", "val R@1": 0.5}], log=lambda *a: None)
    assert json.loads(path.read_text()) == [
        {"variant": "b", "val R@1": 0.2},
        {"variant": "c", "val R@1": 0.3},
        {"variant": "a", "val R@1": 0.5},
    ]
    # A file that is not a table is kept aside, not lost.
    path.write_text("not json")
    said: list[str] = []
    write_table(path, first, log=said.append)
    assert json.loads(path.read_text()) == first
    assert (tmp_path / "ablation.json.unreadable").read_text() == "not json"
    assert said and "not an ablation table" in said[0]
