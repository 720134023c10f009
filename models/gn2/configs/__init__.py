"""GN2's packaged configs (``smilejax train gn2``); found through the ``smilejax.configs`` entry point."""
