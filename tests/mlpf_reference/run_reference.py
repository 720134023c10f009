"""particleflow's own MLPF on given events: the reference side of tests/test_mlpf_parity.py.

Runs in the Python 3.11 reference environment (``launch/install_mlpf_reference.sh``), never in smilejax's::

    .mlpf-ref/bin/python tests/mlpf_reference/run_reference.py IN.npz OUT.npz

IN.npz: ``runs``, a JSON list of ``{"name", "mlpf": a particleflow MLPFConfig mapping, "seed",
"grad_case"}``, and per run and case i ``<name>/X_i`` [B, N, F], ``<name>/ytarget_i`` [B, N, 13]
(particleflow's layout, log-ratio targets). OUT.npz, per run: ``<name>/param/<state_dict key>`` for every
parameter; per case ``<name>/binary_logits_i``, ``pid_logits_i``, ``momentum_i`` and ``loss_i`` (values
in the order of ``loss_names``); ``<name>/grad/<key>``, the gradient of the total loss on case
``grad_case`` (none if it is -1). One process serves every run: torch is imported once.

The model is particleflow's ``mlpf.model.mlpf.MLPF`` built from the config, with its initialisation,
then every 1-D parameter (biases, LayerNorm weights, which start as constants) moved by N(0, 0.1^2) so
that no parameter is invisible to the comparison. Predictions and losses go through particleflow's
``unpack_predictions``, ``unpack_target`` and ``mlpf_loss``; the batch is particleflow's ``PFBatch``
(``mask = X[:, :, 0] != 0``), rebuilt here because ``mlpf.model.PFDataset`` imports tensorflow_datasets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ["TORCHDYNAMO_DISABLE"] = "1"  # particleflow's @torch.compile helpers run eagerly
sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))  # comet_ml, pandas: imported, never called

import numpy as np
import torch
from mlpf.conf import MLPFConfig
from mlpf.model.losses import mlpf_loss
from mlpf.model.mlpf import MLPF
from mlpf.model.utils import unpack_predictions, unpack_target


def _bench_reference():
    """smilejax's benchmark reference script (it imports nothing of smilejax), loaded by path."""
    path = Path(__file__).resolve().parents[2] / "models" / "mlpf" / "reference.py"
    spec = importlib.util.spec_from_file_location("_mlpf_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOSS_NAMES = _bench_reference().LOSS_NAMES  # particleflow's loss terms, in the order of the .npz


def build(config: dict, seed: int) -> MLPF:
    torch.manual_seed(seed)
    model = MLPF(MLPFConfig.model_validate(config))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def run_case(model: MLPF, X: np.ndarray, ytarget: np.ndarray, grad: bool) -> tuple[dict, dict]:
    X_t = torch.from_numpy(X)
    batch = SimpleNamespace(X=X_t, mask=X_t[:, :, 0] != 0, ytarget=torch.from_numpy(ytarget))
    model.zero_grad()
    with torch.set_grad_enabled(grad):
        raw = model(batch.X, batch.mask)
        ypred = unpack_predictions(raw)
        ytarget_d = unpack_target(batch.ytarget, model)
        loss_opt, losses = mlpf_loss(ytarget_d, ypred, batch)
        if grad:
            loss_opt.backward()
    out = {
        "binary_logits": raw[0].detach().numpy(),
        "pid_logits": raw[1].detach().numpy(),
        "momentum": raw[2].detach().numpy(),
        "loss": np.array([float(losses[name]) for name in LOSS_NAMES], np.float64),
    }
    grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters() if grad and p.grad is not None}
    return out, grads


def main(src: str, dst: str) -> None:
    data = np.load(src)
    result = {"loss_names": np.array(LOSS_NAMES)}
    for run in json.loads(str(data["runs"])):
        name = run["name"]
        model = build(run["mlpf"], run["seed"])
        result.update({f"{name}/param/{k}": v.detach().numpy() for k, v in model.state_dict().items()})
        n_cases = sum(1 for k in data.files if k.startswith(f"{name}/X_"))
        for i in range(n_cases):
            X, ytarget = data[f"{name}/X_{i}"], data[f"{name}/ytarget_{i}"]
            out, grads = run_case(model, X, ytarget, grad=i == run["grad_case"])
            result.update({f"{name}/{k}_{i}": v for k, v in out.items()})
            result.update({f"{name}/grad/{k}": v for k, v in grads.items()})
        n_params = sum(p.numel() for p in model.parameters())
        print(f"particleflow reference {name}: {n_params:,} parameters, {n_cases} cases")
    np.savez(dst, **result)
    print(f"particleflow reference: torch {torch.__version__}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} IN.npz OUT.npz")
    main(sys.argv[1], sys.argv[2])
