"""The relabelled data folder that the digits folds, the digits search and the re-ranker's
cross-fitting share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz_train.split_folder import read_items, write_split_folder


def small_folder(path: Path, with_split: bool) -> Path:
    items = [{"id": f"r{i}", "group": f"g{i % 3}", "text": f'say "{i}"'} for i in range(6)]
    if with_split:
        items = [{**item, "split": "train"} for item in items]
    embeddings = {"a": np.arange(24, dtype=np.float32).reshape(6, 4)}
    return write_paired_embeddings(path, embeddings, items)


@pytest.mark.parametrize("with_split", [False, True])
def test_rows_get_the_given_splits_and_keep_every_other_field(
    tmp_path: Path, with_split: bool
) -> None:
    data = small_folder(tmp_path / "data", with_split)
    splits = ["train", "val", "test", "train", "train", "test"]
    out = write_split_folder(data, tmp_path / "out", read_items(data), splits)
    header, rows = read_items(out)
    original_header, original = read_items(data)
    assert header[: len(original_header)] == original_header and header.count("split") == 1
    assert [r["split"] for r in rows] == splits
    assert [{k: v for k, v in r.items() if k != "split"} for r in rows] == [
        {k: v for k, v in r.items() if k != "split"} for r in original
    ]
    assert (out / "a.npy").is_symlink()
    folder = PairedEmbeddings(out)
    np.testing.assert_array_equal(folder.split_indices()["test"], [2, 5])
    np.testing.assert_array_equal(
        folder.batch(np.arange(6), ["a"]).pooled()["a"].numpy(),
        PairedEmbeddings(data).batch(np.arange(6), ["a"]).pooled()["a"].numpy(),
    )


def test_an_existing_folder_is_replaced_and_no_staging_is_left(tmp_path: Path) -> None:
    data = small_folder(tmp_path / "data", False)
    out = write_split_folder(data, tmp_path / "out", read_items(data), ["train"] * 6)
    (out / "stale.txt").write_text("old")
    write_split_folder(data, out, read_items(data), ["test"] * 6)
    assert not (out / "stale.txt").exists()
    assert not (tmp_path / "out.tmp").exists()
    assert {r["split"] for r in read_items(out)[1]} == {"test"}


@pytest.mark.parametrize(
    ("splits", "message"),
    [(["train"] * 5, "5 split labels for the 6 rows"), (["train"] * 5 + ["dev"], "unknown split")],
)
def test_bad_labels_are_refused_before_anything_is_written(
    tmp_path: Path, splits: list[str], message: str
) -> None:
    data = small_folder(tmp_path / "data", False)
    with pytest.raises(ValueError, match=message):
        write_split_folder(data, tmp_path / "out", read_items(data), splits)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
