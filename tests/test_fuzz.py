"""Property tests of everything that reads user input: the data-folder loader, the config
loaders, the checkpoint reader and Batch. Each either accepts the input (and then what it
returns is usable) or raises one VallayzUserError / ValueError; never anything else.

A few hundred cases run with the tests; ``make fuzz`` (VALLAYZ_FUZZ=1) runs each property with
many more and prints the total.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vallayz import IMPN, IMPNConfig
from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError
from vallayz.types import Batch
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import read_state

FUZZ = bool(os.environ.get("VALLAYZ_FUZZ"))
CASES = {"count": 0}


def cases(quick: int, fuzz: int) -> settings:
    return settings(
        max_examples=fuzz if FUZZ else quick,
        deadline=None,
        derandomize=not FUZZ,  # the normal run is reproducible; fuzzing explores
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if FUZZ:
        print(f"\nfuzz: {CASES['count']} cases")


def _count() -> None:
    CASES["count"] += 1


# ---------------------------------------------------------------- data folder

FLOATS = st.sampled_from([np.float16, np.float32, np.float64])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, 1.0, -1.0, 1e300, 7e4]),
)
VALUES32 = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 3e38, 7e4]),
)


@st.composite
def folders(draw: st.DrawFn) -> dict[str, object]:
    rows = draw(st.integers(0, 6))
    spec: dict[str, object] = {"rows": rows, "modalities": {}}
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)):
        nodes = draw(st.sampled_from([None, 0, 1, 3]))
        dim = draw(st.integers(0, 3))
        shape = (draw(st.sampled_from([rows, rows, rows + 1])), dim)
        if nodes is not None:
            shape = (shape[0], nodes, dim)
        dtype = draw(st.one_of(FLOATS, st.sampled_from([np.int32, np.complex64, np.bool_])))
        values = draw(arrays(np.float64, shape, elements=VALUES))
        with np.errstate(over="ignore", invalid="ignore"):
            array = values.astype(dtype) if dtype != np.complex64 else values + 1j
        files: dict[str, object] = {"": array}
        if draw(st.booleans()):
            files[".present"] = draw(arrays(np.bool_, (draw(st.sampled_from([rows, 2])),)))
        if nodes is not None and draw(st.booleans()):
            files[".padding"] = draw(arrays(np.bool_, (rows, nodes)))
        if draw(st.booleans()):
            length = draw(st.integers(0, 2))
            files[".tokens"] = draw(
                arrays(draw(st.sampled_from([np.int32, np.float32])), (rows, length))
            )
        if draw(st.integers(0, 9)) == 0:  # a damaged file
            files[draw(st.sampled_from(list(files)))] = draw(st.binary(max_size=80))
        spec["modalities"][name] = files  # type: ignore[index]
    ids = [f"r{i}" for i in range(rows)]
    if rows > 1 and draw(st.booleans()):
        ids[-1] = ids[0]
    spec["items"] = draw(
        st.sampled_from(
            [
                "id\n" + "".join(f"{i}\n" for i in ids),
                "id\tsplit\n" + "".join(f"{i}\ttrain\n" for i in ids),
                "key\n" + "".join(f"{i}\n" for i in ids),
                "id\tsplit\n" + "".join(f"{i}\tnope\n" for i in ids),
            ]
        )
    )
    return spec


def _write(directory: Path, spec: dict[str, object]) -> None:
    for name, files in spec["modalities"].items():  # type: ignore[attr-defined]
        for suffix, content in files.items():
            path = directory / f"{name}{suffix}.npy"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                np.save(path, content)
    (directory / "items.tsv").write_text(spec["items"])  # type: ignore[arg-type]


@cases(quick=120, fuzz=4000)
@given(spec=folders())
def test_the_data_folder_loader_accepts_or_names_the_problem(spec: dict[str, object]) -> None:
    _count()
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), spec)
        try:
            data = PairedEmbeddings(tmp)
        except VallayzUserError as err:
            assert str(err) and "\n" not in str(err)
            return
        # Accepted: every row reads into a batch that a model of these modalities accepts.
        batch = data.batch(np.arange(data.size))
        for name, x in batch.embeddings.items():
            assert x.dtype == torch.float32 and torch.isfinite(x).all(), name
        if len(data.modalities) >= 2:
            batch.validate(IMPNConfig(modalities=data.modalities, soil_dim=4, heads=1))
        assert all(torch.isfinite(x).all() for x in batch.pooled().values())


# ---------------------------------------------------------------- config loaders

JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 10**6),
        st.floats(allow_nan=False, width=32),
        st.text(max_size=4),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
MODEL_FIELDS = sorted(IMPNConfig.__dataclass_fields__)
TRAIN_FIELDS = sorted(TrainConfig.__dataclass_fields__)


@cases(quick=100, fuzz=3000)
@given(
    data=st.dictionaries(
        st.sampled_from([*MODEL_FIELDS, "soil", "Layers"]),
        JSON | st.integers(1, 8) | st.dictionaries(st.sampled_from(["a", "b"]), st.integers(1, 8)),
        max_size=5,
    )
)
def test_the_model_config_loader_accepts_or_names_the_field(data: dict[str, object]) -> None:
    _count()
    try:
        config = IMPNConfig.from_dict(data)
    except VallayzUserError as err:
        assert str(err)
        return
    assert IMPNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@cases(quick=150, fuzz=3000)
@given(
    data=st.dictionaries(
        st.sampled_from([*TRAIN_FIELDS, "steps"]),
        JSON | st.integers(0, 500) | st.floats(0, 1),
        max_size=5,
    )
)
def test_the_training_config_loader_accepts_or_names_the_field(data: dict[str, object]) -> None:
    _count()
    try:
        TrainConfig.from_dict(data)
    except VallayzUserError as err:
        assert str(err)


# ---------------------------------------------------------------- checkpoint reader


@pytest.fixture(scope="module")
def state_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vallayz_train.run_folder import save_state

    run = tmp_path_factory.mktemp("run")
    model = IMPN(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters())
    batch = Batch.of({"text": torch.randn(3, 12), "image": torch.randn(3, 16)})
    model(batch).soil["text"].sum().backward()
    optimizer.step()
    scalars = {"best": 0.5, "bad_evals": 0, "loss_weights": {}, "planner": None}
    return save_state(run, 0, model, optimizer, scalars)


STATE_FILES = ["trainer_state.json", "optimizer.safetensors", "config.json", "model.safetensors"]


@cases(quick=60, fuzz=1500)
@given(
    name=st.sampled_from(STATE_FILES),
    how=st.sampled_from(["json", "bytes", "truncate", "delete"]),
    junk=JSON,
    raw=st.binary(max_size=64),
    cut=st.floats(0, 1),
)
def test_the_checkpoint_reader_reads_or_names_the_file(
    state_folder: Path, name: str, how: str, junk: object, raw: bytes, cut: float
) -> None:
    _count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "state-0"
        shutil.copytree(state_folder, folder)
        path = folder / name
        if how == "json":
            path.write_text(json.dumps(junk))
        elif how == "bytes":
            path.write_bytes(raw)
        elif how == "truncate":
            content = path.read_bytes()
            path.write_bytes(content[: int(cut * len(content))])
        else:
            path.unlink()
        try:
            model, optimizer_state, scalars = read_state(folder, "cpu")
        except VallayzUserError as err:
            assert folder.name in str(err) or name in str(err), err
            return
        assert isinstance(scalars["step"], int) and "param_groups" in optimizer_state
        assert isinstance(model, torch.nn.Module)


# ---------------------------------------------------------------- Batch


@st.composite
def batches(draw: st.DrawFn) -> tuple[dict, dict, dict]:
    rows = draw(st.integers(0, 4))
    embeddings, present, padding = {}, {}, {}
    for name, dim in (("text", 12), ("audio", 6), ("image", 16)):
        if not draw(st.booleans()):
            continue
        nodes = draw(st.sampled_from([None, 1, 3]))
        shape = (
            draw(st.sampled_from([rows, rows, rows + 1])),
            *(() if nodes is None else (nodes,)),
            draw(st.sampled_from([dim, dim, dim + 1])),
        )
        elements = st.one_of(st.floats(-3, 3, width=32), VALUES32)
        embeddings[name] = torch.from_numpy(draw(arrays(np.float32, shape, elements=elements)))
        if draw(st.booleans()):
            present[name] = torch.from_numpy(draw(arrays(np.bool_, (shape[0],))))
            if draw(st.booleans()):  # absent rows may hold NaN
                embeddings[name][~present[name]] = float("nan")
        elif draw(st.booleans()):
            present[name] = torch.from_numpy(np.arange(shape[0]) % 2 == 0)
            embeddings[name][1::2] = float("nan")
        if nodes is not None and draw(st.booleans()):
            padding[name] = torch.from_numpy(draw(arrays(np.bool_, shape[:2])))
    if draw(st.booleans()):  # a clean modality on every row, so that more batches are valid
        clean = arrays(np.float32, (rows, 16), elements=st.floats(-3, 3, width=32))
        embeddings["image"] = torch.from_numpy(draw(clean))
        present.pop("image", None)
    return embeddings, present, padding


@pytest.fixture(scope="module")
def model() -> IMPN:
    return IMPN(tiny_config()).eval()


def _largest_kept(batch: Batch) -> float:
    """The largest magnitude among the values a model reads (present rows, real nodes)."""
    largest = 0.0
    for name, x in batch.embeddings.items():
        keep = batch.present[name]
        if x.dim() == 3:
            keep = keep[:, None] & batch.padding[name]
        if bool(keep.any()):
            largest = max(largest, float(x[keep].abs().max()))
    return largest


@cases(quick=100, fuzz=2000)
@given(parts=batches())
def test_batch_accepts_or_names_the_problem_and_ignores_absent_values(
    model: IMPN, parts: tuple[dict, dict, dict]
) -> None:
    _count()
    embeddings, present, padding = parts
    try:
        batch = Batch.of(embeddings, present, padding)
        batch.validate(model.config)
    except ValueError as err:
        assert str(err)
        return
    if _largest_kept(batch) > 1e4:
        return  # larger embeddings can overflow (a sum of nodes); vallayz check warns of them
    # Whatever absent rows and padding hold, pooling and the model leave them out.
    assert all(torch.isfinite(x).all() for x in batch.pooled().values())
    with torch.no_grad():
        out = model(batch)
    assert all(torch.isfinite(x).all() for x in out.soil.values())
