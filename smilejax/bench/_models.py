"""What ``bench train`` needs to know of a model beyond its ``ModelSpec`` and its synthetic labels
(``_synthetic.LABELS``): which config field sets the padded set length, and its PyTorch peer (a script
run by another interpreter), or the module of a study of its own. A model without an entry is timed at
its configured shapes, without buckets and without a peer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Adapter:
    length_field: str | None = None  # model config field: the padded set length (None: no bucketing)
    torch_script: Path | None = None  # PyTorch peer, run as a script (``--help`` gives its arguments)
    torch_config: Callable[[Any], dict] | None = None  # model config -> the peer's --model JSON
    study: str | None = None  # module whose ``run(cfg, args)`` replaces the generic study


def _gn2_torch_config(cfg: Any) -> dict:
    keys = ("track_features", "embed", "init_hidden", "layers", "heads", "ff", "out", "registers")
    keys += ("head_hidden", "jet_classes", "origin_classes", "activation")
    return {k: getattr(cfg, k) for k in keys}


ADAPTERS: dict[str, Adapter] = {
    "gn2": Adapter(
        length_field="max_tracks",
        torch_script=Path(__file__).with_name("_torch_gn2.py"),
        torch_config=_gn2_torch_config,
    ),
    "mlpf": Adapter(study="smilejax.bench._train_mlpf"),  # shapes, valid elements, particleflow itself
}


def adapter(model_name: str) -> Adapter:
    return ADAPTERS.get(model_name, Adapter())
