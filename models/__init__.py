"""Flax NNX ports of HEP models, one module each (see ``spec.ModelSpec``); installed as smilejax.models."""
