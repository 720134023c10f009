"""The particleflow reference environment (PyTorch) that the MLPF parity, TFDS and bench tests run."""

from __future__ import annotations

import os
from pathlib import Path

from smilejax.models.mlpf import peer

from tests.conftest import ROOT

REF_ENV = Path(os.environ.get(peer.ENV_VAR) or ROOT / peer.ENV_DIR)
INSTALL = "bash launch/install_mlpf_reference.sh"
