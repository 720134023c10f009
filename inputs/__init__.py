"""Data formats, readers and Grain pipelines, one module each (see ``spec.DatasetSpec``); installed as
``smilejax.inputs``. No JAX here: everything yields numpy."""
