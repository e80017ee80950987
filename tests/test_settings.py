"""Each data set's benchmark settings are spelled once: the command line's defaults are those of
its settings dataclass, and the Python entry point takes the dataclass."""

from __future__ import annotations

import dataclasses
import inspect
from types import ModuleType
from typing import Any

import pytest

from vallayz_train.cli import build_parser
from vallayz_train.digits import command as digits
from vallayz_train.digits.settings import DigitsSettings
from vallayz_train.emoji import command as emoji
from vallayz_train.emoji.settings import EmojiSettings
from vallayz_train.stitch import command as stitch
from vallayz_train.stitch.settings import StitchSettings
from vallayz_train.tibetan import command as tibetan
from vallayz_train.tibetan.settings import TibetanSettings

COMMANDS: list[tuple[ModuleType, type[Any]]] = [
    (tibetan, TibetanSettings),
    (digits, DigitsSettings),
    (emoji, EmojiSettings),
    (stitch, StitchSettings),
]


@pytest.mark.parametrize(("command", "settings"), COMMANDS, ids=lambda c: getattr(c, "NAME", ""))
def test_the_command_line_defaults_are_the_settings_defaults(
    command: ModuleType, settings: type[Any]
) -> None:
    assert command.SETTINGS is settings
    args = build_parser().parse_args(["bench", command.NAME, "--out", "x"])
    built = command.settings(args)
    assert type(built) is settings
    assert built == settings()


@pytest.mark.parametrize(("command", "settings"), COMMANDS, ids=lambda c: getattr(c, "NAME", ""))
def test_a_setting_given_on_the_command_line_reaches_the_settings(
    command: ModuleType, settings: type[Any]
) -> None:
    argv = ["bench", command.NAME, "--out", "x", "--pool", "7", "--pools", "3"]
    built = command.settings(build_parser().parse_args([*argv, "--seed-eval", "4"]))
    assert (built.pool, built.pools, built.seed_eval) == (7, 3, 4)
    assert dataclasses.is_dataclass(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.pool = 8


def test_the_tibetan_command_line_builds_its_settings() -> None:
    def parsed(*extra: str) -> TibetanSettings:
        args = build_parser().parse_args(["bench", "tibetan", "--out", "x", *extra])
        return tibetan.settings(args)

    assert parsed("--full").max_pairs is None
    assert parsed("--methods", "impn", "seq-heads").methods == ("impn", "seq-heads")
    with pytest.raises(SystemExit):
        parsed("--methods", "no-such-method")
    assert parsed("--pairs", "300").max_pairs == 300
    assert parsed("--speech", "0.5", "--speech-features", "oww").speech_items == 0.5
    assert parsed("--speech-nodes", "8", "--speech-pooling", "pick").speech_pooling == "pick"
    # --speech-nodes 0 keeps the default, as it always has.
    assert parsed("--speech-nodes", "0").speech_nodes == TibetanSettings.speech_nodes
    assert parsed("--token-buckets", "0", "--matched-dropout") == TibetanSettings(
        token_buckets=0, matched_dropout=True
    )


def test_the_other_command_lines_build_their_settings() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "digits", "--out", "x", "--speakers", "george", "jackson"])
    assert digits.settings(args).speakers == ("george", "jackson")
    args = parser.parse_args(["bench", "emoji", "--out", "x", "--closed-form", "ortho", "cca"])
    assert emoji.settings(args).closed_form == ("ortho", "cca")
    args = parser.parse_args(["bench", "stitch", "--out", "x", "--full", "--no-control"])
    assert stitch.settings(args) == StitchSettings(max_pairs=None, control=False)


def test_every_field_has_a_one_line_comment() -> None:
    for _, settings in COMMANDS:
        source = inspect.getsource(settings).splitlines()
        for field in dataclasses.fields(settings):
            line = next(i for i, text in enumerate(source) if text.startswith(f"    {field.name}:"))
            assert source[line - 1].startswith("    # "), (settings.__name__, field.name)
            assert not source[line - 2].startswith("    #"), (settings.__name__, field.name)


def test_the_benchmark_functions_take_the_settings_and_no_setting_of_their_own() -> None:
    from vallayz_train.digits.bench import bench_digits
    from vallayz_train.emoji.bench import bench_emoji
    from vallayz_train.stitch.bench import bench_stitch
    from vallayz_train.tibetan.bench import bench_tibetan

    for function in (bench_tibetan, bench_digits, bench_emoji, bench_stitch):
        parameters = list(inspect.signature(function).parameters)
        assert parameters == ["out", "settings", "train", "model_overrides", "progress", "log"]


def test_bench_data_takes_its_defaults_from_the_bench_spec() -> None:
    from vallayz_train.bench.spec import BenchSpec
    from vallayz_train.cli import build_parser

    args = build_parser().parse_args(["bench", "data", "folder", "--out", "x"])
    spec = BenchSpec()
    assert (args.pool, args.pools, args.seed_eval, args.matched_dropout) == (
        spec.pool,
        spec.pools,
        spec.seed,
        spec.matched_dropout,
    )
