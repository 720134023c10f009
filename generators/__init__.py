"""Event generators' shared parts for the dataset makers (``smilejax data make``); installed as
``smilejax.generators``. The makers themselves live in their model family's package."""
