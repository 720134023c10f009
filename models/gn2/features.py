"""GN2's optional features for ``smilejax doctor`` (entry-point group ``smilejax.features``)."""

from __future__ import annotations

import os
from pathlib import Path

from smilejax.features import Feature, Missing

# The PyTorch environment of the salt import test (tests/test_import_salt.py looks in the same places).
SALT_REF_VAR, SALT_REF_DIR = "SMILEJAX_SALT_REF", ".salt-ref"


def _salt_reference() -> str:
    root = Path(__file__).resolve().parents[2]  # the repository, in a source checkout
    where = Path(os.environ.get(SALT_REF_VAR) or root / SALT_REF_DIR)
    python = where / "bin" / "python"
    if not python.exists():
        raise Missing(
            f"no salt environment ({where})",
            "`make reference` (or `bash launch/install_salt_reference.sh [ENV_DIR]`)",
        )
    return str(python)


FEATURES = (Feature("salt-reference", "the salt import test (GN2 parity with salt)", _salt_reference),)
