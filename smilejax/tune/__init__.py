"""Hyperparameter optimisation: ``smilejax tune`` (see docs/HPO.md).

- ``space``: the search-space YAML, checked against the config before any trial runs;
- ``objective``: one trial = one normal smilejax run in ``STUDY_DIR/trial-XXXX``;
- ``optuna_backend`` / ``keras_tuner_backend``: who proposes the next trial and coordinates workers;
- ``vectorised``: K trials that differ only in shape-preserving values, trained in one ``jit(vmap)``;
- ``study``: the one interface that the CLI and the benchmark call.
"""
