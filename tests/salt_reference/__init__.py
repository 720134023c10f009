"""The PyTorch reference side of the salt import test (run by the Python 3.11 env)."""
