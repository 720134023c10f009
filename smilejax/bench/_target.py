"""The run config ``bench train`` measures: ``MODEL`` is a packaged config, a YAML file, or a model name.

The data section is replaced by the synthetic placeholder format (``_synthetic.FORMAT``): the study
feeds its own device-resident batches, so no reader (and no Grain) is imported.
"""

from __future__ import annotations

from smilejax import config, registry
from smilejax.bench import _synthetic
from smilejax.config import Config, ConfigError


def load_config(target: str, overrides: list[str] | tuple = ()) -> Config:
    try:
        tree = config.read_yaml(target)
    except ConfigError as err:
        try:  # a registered model with no config of that name: its defaults
            registry.model(target)
        except KeyError:
            raise err from None
        tree = {"model": {"name": target}}
    tree["data"] = {"format": _synthetic.FORMAT, "batch_size": tree.get("data", {}).get("batch_size", 32)}
    return config.load(tree, list(overrides))
