"""smilejax: train, tune and serve HEP models with JAX."""

__version__ = "0.1.0"
