"""salt's GN2 (ATLAS's PyTorch framework) as smilejax's GN2: its training YAML as a config, its weights
as parameters (``GN2`` / ``smilejax import salt``).

What is read:

* the checkpoint: a Lightning ``.ckpt`` of salt's ``ModelWrapper`` (``state_dict`` keys ``model.*`` and
  the input normalisation ``norm.<input>_means`` / ``_stds``) or a plain ``SaltModel.state_dict()``
  ``.pt``; both through ``torch_files`` (no torch);
* the config: salt's training YAML, best the resolved ``config.yaml`` salt writes next to its
  checkpoints (``logs/<run>/config.yaml``, with class names and class weights filled in). Without
  ``--config`` it is looked for next to the checkpoint and one folder up.

The config must describe a GN2: one constituent input (tracks) with the jet variables attached, one
init net, a ``Transformer`` (pre-LayerNorm, non-gated feed-forward, at least one register kept in the
pooling, an output projection and final norm), ``GlobalAttentionPooling``, and the jet classification,
track classification (origin) and vertexing tasks with the same hidden widths and one activation.
Anything else is refused, every problem named at once.

Differences of layout, all exact:

* salt's init net reads ``[jet variables, track variables]``, smilejax's ``[track variables, jet
  variables]``: the first kernel's rows are reordered;
* smilejax's jet classes are b, c, light, tau (``JET_CLASSES``, the data loader's order): salt's
  ``class_names`` (``bjets``, ``cjets``, ``ujets``, ``taujets``, any order, any prefix of those four
  flavours) reorder the jet head's last layer and the class weights;
* PyTorch's ``Linear.weight`` is ``[out, in]``, the fused q/k/v projection ``[3 * embed, embed]``.

The norm dict is written into the run directory (``norm_dict.yaml``, groups ``jets`` and ``tracks``):
from the checkpoint's normalisation buffers when it has them (the values the model was trained with),
else from the config's ``data.norm_dict`` file.

This module reads the files; the config translation is ``salt_config``'s, the weight conversion
``salt_weights``'s (both re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml

from .. import torch_files
from ..spec import Imported
from .salt_config import SaltLayout, Translation, translate
from .salt_weights import convert_salt_state_dict, load_salt_state_dict

__all__ = [
    "SaltLayout",
    "Translation",
    "convert_salt_state_dict",
    "find_config",
    "import_salt",
    "load_salt_state_dict",
    "norm_dict",
    "read_checkpoint",
    "split_state",
    "translate",
]


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(model state dict, normalisation buffers ``{name: array}``, Lightning metadata) of a salt
    checkpoint file: a Lightning ``.ckpt`` or a plain state dict (``split_state``)."""
    obj = torch_files.load(path)
    meta: dict = {}
    if isinstance(obj, Mapping) and "state_dict" in obj:
        meta = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path}: neither a Lightning checkpoint nor a state dict of tensors")
    return (*split_state(obj), meta)


def split_state(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(SaltModel's state dict, InputNorm's buffers) of a state dict: ``ModelWrapper``'s (keys ``model.*``
    and ``norm.*``) or ``SaltModel``'s own. ``torch.compile``'s ``_orig_mod.`` (salt's ``compile``
    option wraps the model) is dropped from the keys."""
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if not any(k.startswith("model.") for k in state):
        return state, {}
    model = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    norm = {k.removeprefix("norm."): v for k, v in state.items() if k.startswith("norm.")}
    return model, norm


def find_config(checkpoint: Path) -> Path:
    """salt's config.yaml for ``checkpoint``: next to it or one folder up (``logs/<run>/ckpts/``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(
        f"no salt config.yaml next to {checkpoint} or one folder up; pass it with --config"
    )


def norm_dict(tr: Translation, buffers: Mapping[str, np.ndarray], where: str) -> dict:
    """smilejax's norm dict ``{jets|tracks: {var: {mean, std}}}``: from the checkpoint's buffers, else
    from salt's norm dict file."""
    variables = {"jets": tr.sections["data"]["jet_vars"], "tracks": tr.sections["data"]["track_vars"]}
    if buffers:
        out = {}
        for group, names in variables.items():
            name = tr.inputs[group]
            if not names:
                continue
            means, stds = buffers.get(f"{name}_means"), buffers.get(f"{name}_stds")
            if means is None or stds is None or len(means) != len(names) or len(stds) != len(names):
                raise ValueError(
                    f"{where}: normalisation buffers norm.{name}_means/_stds do not hold {len(names)} values "
                    f"for {names}"
                )
            out[group] = {
                v: {"mean": float(m), "std": float(s)} for v, m, s in zip(names, means, stds, strict=True)
            }
        return out
    if not tr.norm_dict or not Path(tr.norm_dict).is_file():
        raise FileNotFoundError(
            f"{where} holds no normalisation and the config's data.norm_dict ({tr.norm_dict}) is not a file"
        )
    source = yaml.safe_load(Path(tr.norm_dict).read_text()) or {}
    out = {}
    for group, names in variables.items():
        table = source.get(tr.norm_groups[group]) or {}
        missing = [v for v in names if v not in table]
        if missing:
            raise ValueError(f"norm dict {tr.norm_dict} has no {tr.norm_groups[group]}/{missing}")
        out[group] = {v: {"mean": float(table[v]["mean"]), "std": float(table[v]["std"])} for v in names}
    return out


def import_salt(checkpoint: Path, config_path: Path | None, run_dir: Path) -> Imported:
    """``smilejax import salt``: salt's checkpoint and config as a GN2 run's config and weights; writes
    the norm dict into ``run_dir``."""
    checkpoint = Path(checkpoint)
    config_path = Path(config_path) if config_path else find_config(checkpoint)
    salt_cfg = yaml.safe_load(config_path.read_text())
    if not isinstance(salt_cfg, Mapping):
        raise ValueError(f"{config_path}: not a salt config (a YAML mapping)")
    tr = translate(salt_cfg)
    state_dict, buffers, meta = read_checkpoint(checkpoint)
    norm = norm_dict(tr, buffers, str(checkpoint))
    run_dir.mkdir(parents=True, exist_ok=True)
    norm_path = run_dir / "norm_dict.yaml"
    norm_path.write_text(yaml.safe_dump(norm, sort_keys=False))
    sections = {**tr.sections, "data": {**tr.sections["data"], "norm_dict": str(norm_path.absolute())}}
    source = {
        "format": "salt",
        "checkpoint": str(checkpoint.absolute()),
        "config": str(config_path.absolute()),
        "name": salt_cfg.get("name"),
        "norm": "checkpoint buffers" if buffers else str(tr.norm_dict),
        **{k: v for k, v in meta.items() if isinstance(v, int | str)},
    }
    return Imported(
        config=sections,
        params=lambda model: convert_salt_state_dict(model, state_dict, tr.layout),
        source=source,
    )
