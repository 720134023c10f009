"""GN2's PyTorch reference line of ``smilejax bench convergence --torch``: the peer (``torch_peer.GN2``
and its loss) trained on the batches the study wrote, evaluated on its held-out batches.

Run ONLY as a script by an interpreter that has torch (the bench runs it; it imports nothing of
smilejax)::

    .salt-ref/bin/python models/gn2/torch_train.py --work DIR --mode compile

DIR (written by ``smilejax.bench._convergence_torch``): ``run.json`` (model and loss settings, the
trained tasks among them as smilejax chose them, the learning rate of every step, AdamW's settings,
steps, eval_every, precision), ``train_KEY.npy`` [steps, B, ...] and ``eval_KEY.npy`` [batches, B, ...]
(the study's first variant's padded batches, in its order), ``weights.npz`` (smilejax's initial
parameters under the peer's names). Every batch is moved to the device once, before training (the peer
gets its batches for free). Writes ``points.json``: at step 0, every ``eval_every`` steps and the last,
the jets seen, the training seconds (steps only, synchronised before each evaluation; the compilation,
a first forward and backward pass on batch 0 whose gradients are dropped, timed apart as
``compile_s``), the validation loss (mean over the held-out batches, as smilejax's; one forward pass
per batch gives it and the jet logits) and ``eval-STEP.npz`` (per-jet flavour log-probabilities and
labels, as ``models/gn2/convergence.predict``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the peer next to this script, not a package
from torch_peer import GN2, loss_fn, sync

KEYS = ("tracks", "valid", "flavour", "track_origin", "track_vertex")


def load(work: Path, split: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Every batch of ``split`` on the device: [batches, B, ...] per key (labels as int64)."""
    out = {}
    for key in KEYS:
        path = work / f"{split}_{key}.npy"
        if path.exists():
            x = torch.from_numpy(np.load(path))
            out[key] = (x.bool() if key == "valid" else x if x.is_floating_point() else x.long()).to(device)
    return out


def at(batches: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in batches.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", required=True, help="the folder the bench wrote")
    parser.add_argument("--mode", choices=["compile", "eager"], default="compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    work = Path(args.work)
    run = json.loads((work / "run.json").read_text())
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = GN2(run["model"]).to(device)
    weights = np.load(work / "weights.npz")
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files}, strict=True)
    opt_cfg = run["optimizer"]
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=run["lr"][0],
        betas=(opt_cfg["b1"], opt_cfg["b2"]),
        eps=opt_cfg["eps"],
        weight_decay=opt_cfg["weight_decay"],
        fused=device.type == "cuda",
    )
    train, held_out = load(work, "train", device), load(work, "eval", device)
    options = run["model"]["loss"]  # the tasks included: smilejax chose them from the batch keys

    def compute(model: GN2, batch: dict) -> torch.Tensor:
        return loss_fn(model, batch, options)

    def score(model: GN2, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and jet logits of one forward pass: ``loss_fn`` calls the model it is given once,
        here a stand-in that returns this pass's outputs."""
        outputs = model(batch["tracks"], batch["valid"], tuple(options["tasks"]))
        return loss_fn(lambda *_: outputs, batch, options), outputs[0]

    if args.mode == "compile":
        compute, score = (torch.compile(f, dynamic=False) for f in (compute, score))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=run["precision"] == "bf16")
    batch_size, steps, every = run["batch_size"], run["steps"], run["eval_every"]

    def evaluate() -> tuple[float, dict[str, np.ndarray]]:
        model.eval()
        losses, log_probs = [], []
        with torch.no_grad(), autocast:
            for i in range(held_out["valid"].shape[0]):
                loss, jet_logits = score(model, at(held_out, i))
                losses.append(float(loss))
                log_probs.append(F.log_softmax(jet_logits.float(), -1).cpu().numpy())
        model.train()
        flavour = held_out["flavour"].reshape(-1).cpu().numpy()
        return sum(losses) / len(losses), {"log_probs": np.concatenate(log_probs), "flavour": flavour}

    # compilation: a forward and backward pass on batch 0, its gradients dropped
    t0 = time.perf_counter()
    with autocast:
        loss = compute(model, at(train, 0))
    loss.backward()
    opt.zero_grad(set_to_none=True)
    sync(device)
    compile_s = time.perf_counter() - t0

    points, train_s, t_mark = [], 0.0, time.perf_counter()
    for step in range(steps + 1):
        if step:
            for group in opt.param_groups:
                group["lr"] = run["lr"][step - 1]  # optax counts the first update as step 0
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = compute(model, at(train, step - 1))
            loss.backward()
            if opt_cfg["clip_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg["clip_norm"])
            opt.step()
        if step == 0 or step % every == 0 or step == steps:
            sync(device)
            if step:
                train_s += time.perf_counter() - t_mark
            t_eval = time.perf_counter()
            val_loss, outputs = evaluate()
            if not math.isfinite(val_loss):
                raise FloatingPointError(f"torch {args.mode}: validation loss {val_loss} at step {step}")
            np.savez(work / f"eval-{step}.npz", **outputs)
            point = {"step": step, "jets": step * batch_size, "train_s": train_s, "compile_s": compile_s}
            points.append({**point, "val_loss": val_loss, "eval_s": time.perf_counter() - t_eval})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
            t_mark = time.perf_counter()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"torch": torch.__version__, "device": device_name, "mode": args.mode, "points": points}
    (work / "points.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
