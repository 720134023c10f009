"""Performance studies, one module per study, each with ``register(subparsers)`` (``smilejax bench STUDY``).

Every study reports speeds as ratios against a baseline measured in the same run, writes JSON (and a
table and plots where they help) with the machine, date and command, and never runs inside tests'
timing assertions.
"""
