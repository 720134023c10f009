"""salt's own GN2 on given jets: the reference side of tests/test_import_salt.py.

Runs in the Python 3.11 reference environment (``launch/install_salt_reference.sh``), never in smilejax's::

    .salt-ref/bin/python tests/salt_reference/run_reference.py SALT.yaml JETS.h5 OUT_DIR SEED

Builds salt's ``SaltModel`` and ``InputNorm`` from the salt config as salt's CLI does (the init net gets
the data variables and global object; each ``{class_path, init_args}`` node is instantiated, loss
weights as tensors), seeds torch with SEED, then moves every 1-D parameter and the register tokens by
N(0, 0.1^2), so that none (the zero q/k/v bias, the 1e-4 registers) is invisible to the comparison.
It writes into OUT_DIR (also ``tensors.pt`` / ``.npz`` for the torch-free reader, see ``save_tensor_kinds``):

* ``state_dict.pt``: ``SaltModel.state_dict()``;
* ``model.ckpt``: a checkpoint in the layout of salt's Lightning ``ModelWrapper`` (``state_dict`` with
  ``model.*`` and the ``norm.*`` buffers of ``InputNorm``, ``epoch``, ``global_step``, hyperparameters),
  written with ``torch.save`` since Lightning is not installed here;
* ``out.npz``: on the jets of JETS.h5 (``jets`` and ``tracks`` datasets, ``valid`` mask, raw variables),
  in evaluation mode with attention ``torch-math``: ``jet_probs`` [B, C] (softmax, salt's class order),
  ``origin_probs`` [B, T, 8] (salt's masked softmax: 0 on padded tracks), ``vertex_logits`` [B, T, T]
  (salt's compressed edge logits put back at their (i, j), 0 off valid pairs i != j).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml
from salt.models import InputNorm, SaltModel


def instantiate(node):
    """jsonargparse's ``{class_path, init_args}`` nodes as objects, recursively."""
    if isinstance(node, list):
        return [instantiate(x) for x in node]
    if not isinstance(node, dict):
        return node
    if "class_path" not in node:
        return {k: instantiate(v) for k, v in node.items()}
    module, _, name = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = {k: instantiate(v) for k, v in (node.get("init_args") or {}).items()}
    if "weight" in args and isinstance(args["weight"], list):  # a loss's class weights
        args["weight"] = torch.tensor(args["weight"])
    if "modules" in args and cls is torch.nn.ModuleList:
        return cls(args["modules"])
    return cls(**args)


def build(cfg: dict, seed: int) -> tuple[SaltModel, InputNorm]:
    data = cfg["data"]
    torch.manual_seed(seed)
    args = dict(cfg["model"]["model"]["init_args"])
    for net in args["init_nets"]:
        net["variables"] = data["variables"]
        net["global_object"] = data["global_object"]
    model = SaltModel(**{k: instantiate(v) for k, v in args.items()})
    for task in model.tasks:  # what salt's ModelWrapper sets
        task.global_object = data["global_object"]
        task.model_name = cfg.get("name", "salt")
    norm = InputNorm(data["norm_dict"], data["variables"], data["global_object"], data.get("input_map"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("registers"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), norm


def read_jets(path: str, data: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """salt's inputs ``{global: [B, n_jet], tracks: [B, T, n_track]}`` and padding mask (True = padded)."""
    glob = data["global_object"]
    trk = next(k for k in data["variables"] if k != glob)
    names = data.get("input_map") or {glob: glob, trk: trk}
    with h5py.File(path, "r") as f:
        jets, tracks = f[names[glob]][:], f[names[trk]][:]

    def stack(arr, variables):
        return torch.from_numpy(np.stack([arr[v].astype(np.float32) for v in variables], axis=-1))

    inputs = {glob: stack(jets, data["variables"][glob]), trk: stack(tracks, data["variables"][trk])}
    return inputs, torch.from_numpy(~tracks["valid"])


def save_tensor_kinds(out: Path) -> None:
    """``tensors.pt``: tensors of other dtypes and layouts than a state dict's (a transposed view, a slice
    at an offset of a shared storage, bfloat16, int64, bool), and ``tensors.npz``: their values."""
    torch.manual_seed(0)
    base = torch.randn(6, 4)
    tensors = {
        "transposed": base.t(),
        "offset": base.view(-1)[5:17].view(3, 4),
        "bfloat16": torch.randn(5).to(torch.bfloat16),
        "int64": torch.arange(-3, 9),
        "bool": torch.tensor([True, False, True]),
    }
    torch.save({"tensors": tensors, "step": 7}, out / "tensors.pt")
    np.savez(
        out / "tensors.npz",
        **{k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in tensors.items()},
    )


def main(config_path: str, jets_path: str, out_dir: str, seed: str) -> None:
    cfg = yaml.safe_load(Path(config_path).read_text())
    data = cfg["data"]
    out = Path(out_dir)
    model, norm = build(cfg, int(seed))
    torch.save(model.state_dict(), out / "state_dict.pt")
    wrapper_state = {f"model.{k}": v for k, v in model.state_dict().items()}
    wrapper_state |= {f"norm.{k}": v for k, v in norm.state_dict().items()}
    hparams = {"name": cfg.get("name"), "global_object": data["global_object"], "model": model}
    torch.save(
        {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "2.6.1",
            "state_dict": wrapper_state,
            "hyper_parameters": hparams,
        },
        out / "model.ckpt",
    )

    save_tensor_kinds(out)

    inputs, pad = read_jets(jets_path, data)
    trk = next(k for k in data["variables"] if k != data["global_object"])
    with torch.no_grad():
        preds, _ = model(norm(dict(inputs)), {trk: pad.clone()})
    tasks = {t.name: t for t in model.tasks}
    jet_task = next(t for t in model.tasks if t.input_name == data["global_object"])
    origin_task = next(t for t in model.tasks if t.input_name == trk and hasattr(t, "class_names"))
    vertex_task = next(t for t in model.tasks if t.name not in (jet_task.name, origin_task.name))
    jet_logits = preds[data["global_object"]][jet_task.name]
    origin_logits = preds[trk][origin_task.name]
    edges = preds[trk][vertex_task.name][:, 0]
    b, n = pad.shape
    valid = ~pad
    adjacency = valid[:, :, None] & valid[:, None, :] & ~torch.eye(n, dtype=torch.bool)
    vertex = torch.zeros(b, n, n)
    vertex[adjacency] = edges  # salt's edge order: row-major over (jet, i, j)
    assert set(tasks) == {jet_task.name, origin_task.name, vertex_task.name}
    np.savez(
        out / "out.npz",
        jet_probs=jet_task.run_inference(jet_logits).numpy(),
        origin_probs=origin_task.run_inference(origin_logits, pad).numpy(),
        vertex_logits=vertex.numpy(),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
