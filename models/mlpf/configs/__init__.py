"""MLPF's packaged configs (``smilejax train mlpf``); found through the ``smilejax.configs`` entry point."""
