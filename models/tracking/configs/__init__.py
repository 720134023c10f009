"""The tracking family's packaged configs (``smilejax train tracking-ign``), found through the
``smilejax.configs`` entry point."""
