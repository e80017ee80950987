"""Training, planner–actor–critic, checkpoints and the ``vallayz`` command line.

This package sits on top of the :mod:`vallayz` library, which never imports it.
"""
