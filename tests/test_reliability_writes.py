"""Faults that could write outside a folder, lose a user's data, or answer from stale or broken
inputs: each is refused with one clear message (exit 2) and nothing is replaced.
RELIABILITY.md lists which test pins which fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import write_synthetic

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.errors import VallayzUserError


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- the Python writer


@pytest.mark.parametrize(
    "name",
    ["../escape", "/tmp/absolute", "a/b", "a\\b", "..", ".hidden", "", "x.present", "a b"],
)
def test_the_writer_refuses_a_modality_name_that_is_not_a_plain_file_name(
    tmp_path: Path, name: str
) -> None:
    victim = tmp_path / "escape.npy"
    np.save(victim, np.arange(3))
    data = tmp_path / "data"
    arrays = {"a": np.zeros((2, 3), np.float32), name: np.ones((2, 3), np.float32)}
    items = [{"id": "x"}, {"id": "y"}]
    with pytest.raises(VallayzUserError, match="cannot name a modality"):
        write_paired_embeddings(data, arrays, items)
    for masks in ("present", "padding", "tokens", "node_ids"):
        with pytest.raises(VallayzUserError, match="cannot name a modality"):
            write_paired_embeddings(
                data, {"a": arrays["a"]}, items, **{masks: {name: np.ones((2, 3), bool)}}
            )
    assert np.load(victim).tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape.npy"]


def _bad_inputs() -> dict[str, tuple[dict, list, dict]]:
    two = np.zeros((2, 3), np.float32)
    ok = [{"id": "x"}, {"id": "y"}]
    return {
        "duplicate ids": ({"a": two}, [{"id": "x"}, {"id": "x"}], {}),
        "rows disagree": ({"a": two, "b": np.zeros((3, 3), np.float32)}, ok, {}),
        "items and rows disagree": ({"a": two}, [{"id": "x"}], {}),
        "object array": ({"a": np.array([[1.0], [2.0]], dtype=object)}, ok, {}),
        "integer embeddings": ({"a": np.zeros((2, 3), np.int64)}, ok, {}),
        "a key missing": ({"a": two}, [{"id": "x", "text": "t"}, {"id": "y"}], {}),
        "an extra key": ({"a": two}, [{"id": "x"}, {"id": "y", "text": "t"}], {}),
        "no id": ({"a": two}, [{"name": "x"}, {"name": "y"}], {}),
        "bad split": ({"a": two}, [{"id": "x", "split": "tr"}, {"id": "y", "split": "val"}], {}),
        "carriage return": ({"a": two}, [{"id": "x\r"}, {"id": "y"}], {}),
        "mask of the wrong shape": ({"a": two}, ok, {"present": {"a": np.ones(3, bool)}}),
        "float mask": ({"a": two}, ok, {"present": {"a": np.array([0.5, 1.0])}}),
        "mask of an unknown modality": ({"a": two}, ok, {"present": {"b": np.ones(2, bool)}}),
        "a row absent everywhere": ({"a": two}, ok, {"present": {"a": np.array([True, False])}}),
        "NaN in a present row": ({"a": np.full((2, 3), np.nan, np.float32)}, ok, {}),
        "float token ids": ({"a": two}, ok, {"tokens": {"a": np.zeros((2, 2))}}),
        "token ids of other rows": ({"a": two}, ok, {"tokens": {"a": np.zeros((3, 2), int)}}),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_the_writer_refuses_what_check_refuses_and_keeps_the_old_folder(
    tmp_path: Path, case: str
) -> None:
    """Rows are checked as strictly as the loader (and so vallayz check) checks them; a
    valid folder is never replaced by one it would refuse, and nothing is left beside it."""
    data = write_synthetic(tmp_path / "data", rows=20, groups=5)
    before = _snapshot(data)
    embeddings, items, extra = _bad_inputs()[case]
    with pytest.raises(VallayzUserError):
        write_paired_embeddings(data, embeddings, items, **extra)
    assert _snapshot(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    PairedEmbeddings(data)
