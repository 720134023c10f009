"""Stand-in for comet_ml in the MLPF reference environment.

particleflow's ``mlpf.utils`` imports ``Experiment`` and ``OfflineExperiment`` at module load; the model and
its loss never call them. Using either one is an error, so the stub can never hide real work.
"""


class _NotInstalled:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("comet_ml is a stub in the MLPF reference environment; it must not be called")


class Experiment(_NotInstalled):
    pass


class OfflineExperiment(_NotInstalled):
    pass
