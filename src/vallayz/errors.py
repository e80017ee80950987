"""Exception types that tell a mistake in the user's input from a fault in vallayz.

:class:`VallayzUserError` marks input the user can fix: a data folder, a config file, a run
folder, a command-line option. The command line prints its message and exits with status 2;
any other exception is a bug and shows its traceback (status 1). It subclasses ``ValueError``
so that code catching ``ValueError`` around vallayz keeps working.
"""

from __future__ import annotations


class VallayzUserError(ValueError):
    """A problem in the user's input, with a message that names it and the fix."""


class DivergenceError(VallayzUserError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is kept.

    Attributes:
        step: The optimizer step whose loss (or gradient) was not finite.
        terms: The loss terms of that step.
    """

    def __init__(self, message: str, step: int, terms: dict[str, float]) -> None:
        super().__init__(message)
        self.step = step
        self.terms = terms
