"""Batch jobs on HPC systems: ``smilejax launch --system SYSTEM --nodes N CONFIG [key=value ...]``.

- ``systems``: a system is one small YAML file in the repository's ``launch/`` folder (resources,
  modules, environment, rank-to-GPU order, staging folder); adding a machine is adding a file.
- ``job``: the resolved request (nodes, processes, GPUs, time limit) checked against the system and
  the config, before anything is written or submitted.
- ``script``: the batch script, rendered from ``launch/templates/<scheduler>.sh``.
- ``submit``: writes the run's ``launch/`` folder and hands the script to ``sbatch`` or ``qsub``.
- ``stage``: runs inside the job (``python -m smilejax.launch.stage``), one task per node, copying the
  inputs to node-local storage.

Nothing here imports JAX at module level: the job-side ``stage`` step must start instantly.
"""
