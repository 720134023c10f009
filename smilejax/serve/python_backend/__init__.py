"""``model.py`` files for Triton's Python backend, copied into model repositories (never imported here:
they import ``triton_python_backend_utils``, which only exists inside the server's backend stub)."""
