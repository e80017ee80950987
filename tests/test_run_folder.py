"""The run folder: what a run writes, and the search index saved in it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from synthetic import write_synthetic

from vallayz.index import SearchIndex
from vallayz_train.cli import main
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import index_dir, load_index, load_model
from vallayz_train.trainer import fit

SMALL = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trained")
    data = write_synthetic(root / "data", rows=60, groups=12)
    config = TrainConfig(max_steps=3, batch_size=16, warmup_steps=1, planner=False)
    fit(data, root / "run", dict(SMALL), config, progress=False)
    return data, root / "run"


def _retrieve(run: Path, data: Path, *extra: str) -> list[str]:
    args = ["retrieve", str(run), "--source", "text", "--target", "image"]
    return [*args, "--candidates", str(data), "--query-ids", "item0003", "item0010", *extra]


def test_retrieve_builds_the_index_once_and_reads_it_back(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, run = trained
    assert main(_retrieve(run, data, "--k", "4")) == 0
    first = capsys.readouterr().out
    saved = load_index(run, "image-exact")
    assert saved is not None and saved.kind == "exact"
    # The saved candidates are the model's own shared-space embeddings of the image rows.
    model = load_model(run)
    from vallayz.data import PairedEmbeddings

    loaded = PairedEmbeddings(data)
    rows = torch.from_numpy(loaded.present["image"]).nonzero().flatten().numpy()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.embed(loaded.batch(rows, ["image"])), dim=-1)
    torch.testing.assert_close(saved.candidates, expected)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the saved index should have been reused")

    monkeypatch.setattr(SearchIndex, "build", refuse)
    assert main(_retrieve(run, data, "--k", "4")) == 0
    assert capsys.readouterr().out == first


def test_a_saved_index_of_another_model_is_built_again(trained: tuple[Path, Path]) -> None:
    data, run = trained
    assert main(_retrieve(run, data)) == 0
    index = load_index(run, "image-exact")
    assert index is not None
    index.meta["model"] = [0]  # as if the run's model had changed since
    index.save(index_dir(run, "image-exact"))
    assert main(_retrieve(run, data)) == 0
    rebuilt = load_index(run, "image-exact")
    assert rebuilt is not None and rebuilt.meta["model"] != [0]


def test_approximate_index_without_faiss_is_a_user_error(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, run = trained
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert main(_retrieve(run, data, "--index", "hnsw")) == 2
    assert "pip install 'vallayz[index]'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_finds_the_exact_top_hit(
    kind: str, trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("faiss")
    data, run = trained
    assert main(_retrieve(run, data, "--k", "1")) == 0
    exact = capsys.readouterr().out
    assert main(_retrieve(run, data, "--k", "1", "--index", kind)) == 0
    found = capsys.readouterr().out
    assert [line.split("\t")[0] for line in found.splitlines()] == [
        line.split("\t")[0] for line in exact.splitlines()
    ]
    assert (index_dir(run, f"image-{kind}") / "approximate" / "index.faiss").is_file()


def test_retrieve_does_not_write_its_index_into_a_run_another_process_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    run = tmp_path / "run"
    config = TrainConfig(max_steps=2, batch_size=16, warmup_steps=1, planner=False)
    fit(data, run, dict(SMALL), config, progress=False)
    # Another process holds the run's lock (as a fit --resume would) while retrieve runs.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from vallayz_train.run_folder import lock_run\n"
            f"with lock_run(Path({str(run)!r})):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(_retrieve(run, data, "--k", "2")) == 0
    finally:
        holder.kill()
        holder.wait()
    captured = capsys.readouterr()
    assert "item" in captured.out  # the search itself ran
    assert "the index was not saved" in captured.err
    assert load_index(run, "image-exact") is None
