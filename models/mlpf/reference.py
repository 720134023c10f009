"""particleflow's own MLPF training step, the reference side of ``smilejax bench train mlpf``.

Run ONLY as a script by the particleflow reference environment's interpreter (Python 3.11, torch,
particleflow 3.1.0: ``make reference``); it imports nothing of smilejax::

    .mlpf-ref/bin/python models/mlpf/reference.py --batches IN.npz --out OUT.json [--weights W.npz] \
        --config '{a particleflow MLPFConfig mapping}' --modes eager,compile --steps 20 --repeats 3 \
        --warmup 5 --precision bf16 --attention auto [--lr 1e-4 --weight-decay 0.01] [--device cuda]

IN.npz holds, per shape, ``<N>x<B>/X`` [K, B, N, 17] and ``<N>x<B>/ytarget`` [K, B, N, 13]: K padded
batches of B events of at most N elements, cycled through in order (each timed repeat starts again at
batch 0). OUT.json (also printed on stdout): torch, particleflow and Python versions, the device, the
parameter count, and one row per (mode, shape) with ms/step, the loss terms of the very first step
(untrained weights, batch 0) and peak device memory. W.npz: the initial weights as a numpy
``state_dict`` (the same for every mode: each starts from ``torch.manual_seed(0)``).

One step is particleflow's ``train_step`` (``mlpf/model/training.py``): gradients set to None, autocast,
``model(X, mask)``, ``unpack_predictions``, ``unpack_target``, the real ``mlpf_loss`` (with its NaN check,
which reads the loss back to the host every step), backward and ``optimizer.step`` through a GradScaler
(particleflow always makes one; it is enabled on CUDA only) and AdamW (particleflow's optimizer; lr and
weight decay as given, particleflow's defaults 1e-4 and 0.01). Modes: ``eager``, and ``compile``, which is
particleflow's ``--compile`` flag, ``torch.compile(model)``; the rest of the step runs eagerly in both
(particleflow wraps ``unpack_predictions`` in ``torch.compile``; here it runs unwrapped, so that the modes
differ only in the model). Other differences: autocast follows ``--precision`` on every device
(particleflow enables it on CUDA only), the batches are already on the device, and no learning-rate
schedule runs. ``--attention auto`` is particleflow's default (``flash``) on CUDA in bf16, ``efficient``
on CUDA in fp32 (flash needs 16-bit inputs) and ``math`` on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # the script's folder holds smilejax's own modules (model.py, loss.py, ...)

import argparse
import importlib.metadata
import importlib.util
import json
import math
import time
import types

import numpy as np
import torch

LOSS_NAMES = (
    "Total",
    "Classification_binary",
    "Classification",
    "Regression_pt",
    "Regression_eta",
    "Regression_sin_phi",
    "Regression_cos_phi",
    "Regression_energy",
)


def _import_particleflow() -> types.SimpleNamespace:
    """particleflow's model, loss and helpers. Its modules import comet_ml (``mlpf.utils``) and pandas
    (``mlpf.model.utils``) at load and never call them for the model and its loss: where those are not
    installed, stand-ins that fail on any use are importable while particleflow loads, and only then
    (torch looks the installed modules over when it loads, so it loads first)."""
    import torch._dynamo  # noqa: F401

    def refuse(name: str):
        def fail(*args, **kwargs):
            raise RuntimeError(f"{name} is a stub in the MLPF reference environment; it must not be used")

        return fail

    def pandas_attribute(attr: str):
        if attr.startswith("__"):  # hasattr(module, "__file__") and the like
            raise AttributeError(attr)
        refuse(f"pandas.{attr}")()

    stubs = {"comet_ml": {"Experiment": refuse("comet_ml"), "OfflineExperiment": refuse("comet_ml")}}
    stubs["pandas"] = {"__getattr__": pandas_attribute}
    stubs = {name: attrs for name, attrs in stubs.items() if importlib.util.find_spec(name) is None}
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    try:
        from mlpf.conf import MLPFConfig
        from mlpf.model.losses import mlpf_loss
        from mlpf.model.mlpf import MLPF
        from mlpf.model.utils import unpack_predictions, unpack_target
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(
        MLPFConfig=MLPFConfig,
        MLPF=MLPF,
        mlpf_loss=mlpf_loss,
        # the package wraps it in torch.compile; both modes run it eagerly, so that they differ only
        # in the model (torch.compile(model), particleflow's --compile)
        unpack_predictions=getattr(unpack_predictions, "_torchdynamo_orig_callable", unpack_predictions),
        unpack_target=unpack_target,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(pf, cfg, mode: str, batches: list, args, device: torch.device, weights: str | None) -> dict:
    """One (mode, shape): warm-up, then ``repeats`` timed runs of ``steps`` steps; the median counts."""
    torch._dynamo.reset()  # each shape compiles for its own static shapes
    torch.manual_seed(0)
    model = pf.MLPF(cfg).to(device)
    if weights:
        np.savez(weights, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    model.train()
    forward = torch.compile(model) if mode == "compile" else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def step(batch) -> dict:
        for p in model.parameters():
            p.grad = None
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
            ypred = pf.unpack_predictions(forward(batch.X, batch.mask))
            loss, losses = pf.mlpf_loss(pf.unpack_target(batch.ytarget, model), ypred, batch)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return losses

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    first = {k: float(v) for k, v in step(batches[0]).items()}
    for i in range(1, args.warmup):
        step(batches[i % len(batches)])
    _sync(device)
    warmup_s = time.perf_counter() - t0
    if not math.isfinite(first["Total"]):
        raise FloatingPointError(f"torch {mode}: the first loss is {first['Total']}")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(args.steps):
            last = step(batches[i % len(batches)])
        _sync(device)
        times.append((time.perf_counter() - t0) / args.steps)
    n, b = batches[0].X.shape[1], batches[0].X.shape[0]
    return {
        "mode": mode,
        "elements": n,
        "events": b,
        "ms_per_step": 1e3 * sorted(times)[len(times) // 2],
        "warmup_s": warmup_s,
        "first_loss": first["Total"],
        "first_losses": {k: first[k] for k in LOSS_NAMES},
        "last_loss": float(last["Total"]),
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "params": sum(p.numel() for p in model.parameters()),
    }


def load_batches(path: str, device: torch.device) -> dict[str, list[types.SimpleNamespace]]:
    """{shape: [particleflow ``PFBatch``-like batches on ``device``]}; mask = X[..., 0] != 0 as there."""
    data = np.load(path)
    shapes = list(dict.fromkeys(k.split("/")[0] for k in data.files))  # in the order written
    out = {}
    for shape in shapes:
        X, y = data[f"{shape}/X"], data[f"{shape}/ytarget"]
        out[shape] = []
        for k in range(X.shape[0]):
            x, target = torch.from_numpy(X[k]).to(device), torch.from_numpy(y[k]).to(device)
            out[shape].append(types.SimpleNamespace(X=x, mask=x[:, :, 0] != 0, ytarget=target))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", required=True, help=".npz of padded batches per shape")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--weights", help=".npz for the initial weights (numpy state_dict)")
    parser.add_argument("--config", required=True, help="particleflow MLPFConfig mapping as JSON")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (at least 1)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--attention", choices=["auto", "math", "efficient", "flash"], default="auto")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if min(args.steps, args.repeats, args.warmup) < 1:
        parser.error("--steps, --repeats and --warmup must be at least 1")

    pf = _import_particleflow()
    device = torch.device(args.device)
    if args.attention == "auto":  # flash needs 16-bit inputs
        cuda = "flash" if args.precision == "bf16" else "efficient"
        args.attention = cuda if device.type == "cuda" else "math"
    config = json.loads(args.config)
    config["model"]["attention"]["attention_type"] = args.attention
    cfg = pf.MLPFConfig.model_validate(config)
    if device.type == "cuda":  # JAX's float32 matmuls on NVIDIA GPUs use TF32 by default too
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = load_batches(args.batches, device)
    rows, weights = [], args.weights
    for mode in [m for m in args.modes.split(",") if m]:
        for shape in batches.values():
            rows.append(measure(pf, cfg, mode, shape, args, device, weights))
            weights = None  # every mode and shape starts from the same seed-0 weights
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "torch": torch.__version__,
        "particleflow": importlib.metadata.version("particleflow"),
        "python": sys.version.split()[0],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device_type": device.type,
        "attention": args.attention,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
