"""The PyTorch reference side of the MLPF parity test (run by the Python 3.11 env) and shared test events."""
