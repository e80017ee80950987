"""The command line's lists of method names agree with the library's and the benchmarks'."""

from __future__ import annotations

from vallayz import baselines, learned, multiway
from vallayz_train.bench.spec import CLOSED_FORM, LEARNED, BenchSpec
from vallayz_train.names import (
    CLOSED_FORM_METHODS,
    LEARNED_METHODS,
    MULTIWAY_CLOSED_FORM,
    PAIRWISE_CLOSED_FORM,
)


def test_the_learned_methods_are_impn_and_the_library_baselines() -> None:
    assert ("impn", *learned.ARCHITECTURES) == LEARNED_METHODS
    assert tuple(LEARNED) == LEARNED_METHODS
    assert BenchSpec().methods == LEARNED_METHODS


def test_the_closed_forms_are_the_library_maps() -> None:
    assert set(PAIRWISE_CLOSED_FORM) == set(baselines.METHODS)
    assert MULTIWAY_CLOSED_FORM == multiway.MULTIWAY_METHODS
    assert tuple(CLOSED_FORM) == CLOSED_FORM_METHODS
    assert BenchSpec().closed_form == CLOSED_FORM_METHODS


def test_the_closed_form_option_offers_every_closed_form() -> None:
    import argparse

    from vallayz_train.options import closed_form_option

    parser = argparse.ArgumentParser()
    closed_form_option(parser, CLOSED_FORM_METHODS, "all")
    (action,) = [a for a in parser._actions if a.dest == "closed_form"]
    assert tuple(action.choices or ()) == CLOSED_FORM_METHODS
