"""The subcommands of ``vallayz``, one module each.

Each module has ``add_parser(subparsers)``, which adds its command and options to the parser
of :mod:`vallayz_train.cli`, and the function the command runs (``run``; ``bench`` has one per
subcommand). A module imports nothing heavy until its command runs, and none imports the
command line itself.
"""
