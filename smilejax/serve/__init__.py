"""Inference as a service: export a trained model, lay out a Triton model repository, serve it, query it.

- ``export``: the model's forward pass as a ``jax.export`` StableHLO artifact (symbolic batch, and a
  symbolic element count where the model allows it) and as ONNX (``jax2onnx``), each checked against
  the in-process model before it is written;
- ``repository``: the Triton model repository (``config.pbtxt`` per model, metadata);
- ``server``: starts and stops a real Triton Inference Server on a repository;
- ``client``: ``tritonclient`` over HTTP or gRPC, fed with the batches the input pipeline makes;
- ``load``: concurrent clients with latency percentiles (used by tests and ``smilejax bench serve``);
- ``python_backend/``: the ``model.py`` files the repository copies in for Triton's Python backend.
"""
