from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import write_synthetic

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz_train.cli import main


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "data", rows=60, groups=12)


def test_a_valid_directory_loads_with_memory_maps(data_dir: Path) -> None:
    data = PairedEmbeddings(data_dir)
    assert data.modalities == {"audio": 6, "image": 16, "text": 12}
    assert isinstance(data.arrays["text"], np.memmap)
    batch = data.batch([0, 5, 7])
    assert batch.embeddings["audio"].shape == (3, 3, 6)
    assert batch.padding["audio"].shape == (3, 3)
    splits = data.split_indices(0)
    groups = data.groups()
    seen = [{groups[i] for i in rows} for rows in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(r) for r in splits.values()) == 60


def test_safetensors_layout_is_read_too(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file(
        {"a": np.ones((4, 3), np.float32), "b": np.zeros((4, 2), np.float32)},
        str(tmp_path / "embeddings.safetensors"),
    )
    (tmp_path / "items.tsv").write_text("id\n" + "".join(f"r{i}\n" for i in range(4)))
    assert PairedEmbeddings(tmp_path).modalities == {"a": 3, "b": 2}


def _break(data_dir: Path, how: str) -> None:
    if how == "rows":
        np.save(data_dir / "image.npy", np.zeros((59, 16), np.float32))
    elif how == "nan":
        text = np.load(data_dir / "text.npy")
        text[7, 3] = np.nan
        np.save(data_dir / "text.npy", text)
    elif how == "garbage":
        (data_dir / "text.npy").write_bytes(b"not an array")
    elif how == "dtype":
        np.save(data_dir / "text.npy", np.zeros((60, 12), np.int64))
    elif how == "present-shape":
        np.save(data_dir / "audio.present.npy", np.ones(59, bool))
    elif how == "padding-dtype":
        np.save(data_dir / "audio.padding.npy", np.ones((60, 3), np.float32))
    elif how == "no-items":
        (data_dir / "items.tsv").unlink()
    elif how == "no-id":
        lines = (data_dir / "items.tsv").read_text().splitlines()
        (data_dir / "items.tsv").write_text("\n".join(["key\tgroup\ttext", *lines[1:]]) + "\n")
    elif how == "items-rows":
        lines = (data_dir / "items.tsv").read_text().splitlines()
        (data_dir / "items.tsv").write_text("\n".join(lines[:-1]) + "\n")
    elif how == "duplicate":
        lines = (data_dir / "items.tsv").read_text().splitlines()
        lines[3] = lines[2]
        (data_dir / "items.tsv").write_text("\n".join(lines) + "\n")
    elif how == "fields":
        lines = (data_dir / "items.tsv").read_text().splitlines()
        lines[4] += "\textra"
        (data_dir / "items.tsv").write_text("\n".join(lines) + "\n")
    elif how == "split":
        lines = (data_dir / "items.tsv").read_text().splitlines()
        lines = [lines[0] + "\tsplit"] + [line + "\tholdout" for line in lines[1:]]
        (data_dir / "items.tsv").write_text("\n".join(lines) + "\n")
    elif how == "empty":
        for path in data_dir.iterdir():
            path.unlink()
    elif how == "safetensors":
        (data_dir / "embeddings.safetensors").write_bytes(b"\x00\x01broken")


CASES = {
    "rows": "disagree on the number of rows",
    "nan": "text: row 7 .*NaN or Inf",
    "garbage": "text.npy is not a readable .npy",
    "dtype": "dtype int64",
    "present-shape": "audio.present.npy has shape",
    "padding-dtype": "audio.padding.npy has dtype",
    "no-items": "items.tsv is missing",
    "no-id": "no 'id' column",
    "items-rows": "has 59 rows but the arrays have 60",
    "duplicate": "appears on lines 3 and 4",
    "fields": "line 5 has a different number of fields",
    "split": "split 'holdout' is not one of",
    "empty": "holds no embeddings",
    "safetensors": "not a readable safetensors",
}


@pytest.mark.parametrize("how", list(CASES))
def test_every_file_of_the_format_is_validated(
    data_dir: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _break(data_dir, how)
    with pytest.raises(ValueError, match=CASES[how]):
        PairedEmbeddings(data_dir)
    # Through the command line: exit status 2 and one line, no traceback.
    assert main(["check", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("vallayz check: error:")


def test_nan_in_absent_rows_is_fine(data_dir: Path) -> None:
    # The synthetic audio array holds NaN exactly in its absent rows.
    data = PairedEmbeddings(data_dir)
    assert np.isnan(np.asarray(data.arrays["audio"])[~data.present["audio"]]).all()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        PairedEmbeddings(tmp_path / "nope")


def test_writer_rejects_tabs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tab or newline"):
        write_paired_embeddings(tmp_path, {"a": np.zeros((1, 2))}, [{"id": "x\ty"}])
