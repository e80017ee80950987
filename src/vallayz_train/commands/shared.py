"""Checks several commands make of a run and the data they read with it."""

from __future__ import annotations

from typing import Any

from vallayz_train.options import UsageError


def load_run(run_dir: str, device: str = "cpu") -> Any:
    """The model of a run folder (or model folder).

    Args:
        run_dir: the folder of the run.
        device: where the model's parameters go.

    Returns:
        The loaded model.
    """
    from vallayz_train.run_folder import load_model

    return load_model(run_dir, device)


def check_modality(model: Any, name: str, option: str) -> None:
    """Raises :class:`UsageError` when ``name`` is not a modality of the model.

    Args:
        model: the run's model.
        name: the modality the option names.
        option: the option, as the error message names it.
    """
    known = list(model.config.modalities)
    if name not in known:
        raise UsageError(f"{option} {name!r} is not a modality of this model; use one of {known}")


def check_data_fits(model: Any, data: Any, folder: str) -> None:
    """Raises :class:`UsageError` when a modality of the data folder has embeddings of another
    width than the run's model reads.

    Args:
        model: the run's model.
        data: the data folder, loaded.
        folder: its path, as the error message names it.
    """
    wrong = [
        f"{name} is {data.modalities[name]}-d where the model reads {dim}-d"
        for name, dim in model.config.modalities.items()
        if name in data.modalities and data.modalities[name] != dim
    ]
    if wrong:
        raise UsageError(
            f"{folder} does not fit the run: {'; '.join(wrong)}; use data encoded by the "
            "encoders the run was trained on"
        )
