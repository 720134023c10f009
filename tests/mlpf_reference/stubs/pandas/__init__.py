"""Stand-in for pandas in the MLPF reference environment.

particleflow's ``mlpf.model.utils`` imports pandas at module load for ``count_parameters``, which the
reference never calls (``unpack_predictions`` and ``unpack_target`` do not use pandas). Any use fails.
"""


def __getattr__(name: str):
    raise RuntimeError(f"pandas.{name}: pandas is a stub in the MLPF reference environment")
