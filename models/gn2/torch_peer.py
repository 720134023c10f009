"""PyTorch peer of GN2 for ``smilejax bench train gn2``: the same shapes, tasks, losses and optimizer.

Run ONLY as a script by an interpreter that has torch (smilejax never imports it; it imports nothing of
smilejax either)::

    python torch_peer.py --batch 4000 --widths 40,24 --steps 50 --precision bf16 \
        --modes eager,compile --model '{"embed": 256, ...}' --out result.json

It mirrors ``smilejax.models.gn2.model`` layer for layer (salt's GN2: affine-free pre-LN encoder with a
register token, global attention pooling, jet / track-origin / track-pair vertex heads, the heads' first
layer applied piecewise so that the pair tensor is never built at full width), trains with AdamW on a
synthetic device-resident batch (bf16 autocast, float32 parameters) and writes one JSON row per
(mode, width): ms/step, jets/s, peak memory, parameter count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}
HEAVY_FLAVOUR = (3, 4, 5)  # fromB, fromBC, fromC
FAKE = 1
TASKS = ("jet", "origin", "vertex")


class MLP(nn.Module):
    """Linear layers with activations between; the first layer can be applied to input pieces."""

    def __init__(self, widths: list[int], activation: str):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.act = ACTIVATIONS[activation.lower()]()

    def project_first(self, *parts: torch.Tensor) -> list[torch.Tensor]:
        weight, out, start = self.layers[0].weight, [], 0
        for p in parts:
            n = p.shape[-1]
            out.append(p @ weight[:, start : start + n].t())
            start += n
        return out

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.layers[0].bias
        for layer in self.layers[1:]:
            h = layer(self.act(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.project_first(x)[0])


class EncoderLayer(nn.Module):
    def __init__(self, embed: int, heads: int, ff: int, activation: str):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(embed, 3 * embed)
        self.out = nn.Linear(embed, embed)
        self.ff = nn.Sequential(nn.Linear(embed, ff), ACTIVATIONS[activation.lower()](), nn.Linear(ff, embed))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        h = F.layer_norm(x, (e,))
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        x = x + self.out(a.transpose(1, 2).reshape(b, t, e))
        return x + self.ff(F.layer_norm(x, (e,)))


class GN2(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        act = c["activation"]
        self.init_net = MLP([c["track_features"], *c["init_hidden"], c["embed"]], act)
        self.registers = nn.Parameter(1e-4 * torch.randn(c["registers"], c["embed"]))
        self.layers = nn.ModuleList(
            EncoderLayer(c["embed"], c["heads"], c["ff"], act) for _ in range(c["layers"])
        )
        self.out_proj = nn.Linear(c["embed"], c["out"])
        self.gate = nn.Linear(c["out"], 1)
        hidden = list(c["head_hidden"])
        self.jet_head = MLP([c["out"], *hidden, c["jet_classes"]], act)
        self.origin_head = MLP([2 * c["out"], *hidden, c["origin_classes"]], act)
        self.vertex_head = MLP([3 * c["out"], *hidden, 1], act)

    def forward(self, tracks: torch.Tensor, valid: torch.Tensor, tasks: tuple[str, ...] = TASKS):
        """(jet, origin, vertex) logits; None for a head not in ``tasks``."""
        b, t, _ = tracks.shape
        x = self.init_net(torch.where(valid[..., None], tracks, 0))  # padding may hold anything (NaN)
        reg = self.registers.expand(b, -1, -1).to(x.dtype)
        x = torch.cat([x, reg], 1)
        valid_all = torch.cat([valid, valid.new_ones(b, reg.shape[1])], 1)
        for layer in self.layers:
            x = layer(x, valid_all)
        x = self.out_proj(x)
        x = F.layer_norm(x, (x.shape[-1],))
        scores = self.gate(x)[..., 0].float().masked_fill(~valid_all, -1e30)
        weights = torch.softmax(scores, -1)
        jet = torch.einsum("bt,btd->bd", weights, x.float()).to(x.dtype)
        trk = x[:, :t]
        jet_logits = self.jet_head(jet)
        origin_logits = vertex_logits = None
        if "origin" in tasks:
            c, h = self.origin_head.project_first(jet, trk)
            origin_logits = self.origin_head.finish(h + c[:, None])
        if "vertex" in tasks:
            c, xi, xj = self.vertex_head.project_first(jet, trk, trk)
            pairs = c[:, None, None] + xi[:, :, None] + xj[:, None, :]
            vertex_logits = self.vertex_head.finish(pairs)[..., 0]
        return jet_logits, origin_logits, vertex_logits


# smilejax GN2Config's loss fields (``torch_train.py`` passes a run's own)
LOSS_DEFAULTS = {
    "tasks": list(TASKS),
    "task_weights": [1.0, 0.5, 1.5],
    "vertex_origin_weighting": True,
    "vertex_loss_norm": "matches",
    "class_weights": {},
}


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def _cross_entropy(logits, labels, mask, class_weights) -> torch.Tensor:
    """Mean CE over ``mask`` and labels in range; with class weights, sum(w_y * l) / sum(w_y)."""
    n = logits.shape[-1]
    mask = mask & (labels >= 0) & (labels < n)
    safe = torch.where(mask, labels, 0)
    nll = F.cross_entropy(logits.float().reshape(-1, n), safe.reshape(-1), reduction="none")
    w = mask.float().reshape(-1)
    if class_weights:
        w = w * torch.tensor(class_weights, device=logits.device)[safe.reshape(-1)]
    return _safe_div((w * nll).sum(), w.sum())


def loss_fn(model: GN2, batch: dict, options: dict | None = None) -> torch.Tensor:
    """As ``smilejax.models.gn2.model.loss``: jet CE + 0.5 origin CE + 1.5 weighted vertex BCE over pairs,
    divided by the matching pairs (salt's normalisation); ``options`` (``LOSS_DEFAULTS``'s keys) as a
    GN2Config sets them."""
    o = {**LOSS_DEFAULTS, **(options or {})}
    tasks, (w_jet, w_origin, w_vertex), cw = tuple(o["tasks"]), o["task_weights"], o["class_weights"]
    valid = batch["valid"]
    jet_logits, origin_logits, vertex_logits = model(batch["tracks"], valid, tasks)
    flavour = batch["flavour"]
    loss = w_jet * _cross_entropy(
        jet_logits, flavour, torch.ones_like(flavour, dtype=torch.bool), cw.get("jet")
    )
    origin = batch.get("track_origin")
    if "origin" in tasks:
        loss = loss + w_origin * _cross_entropy(origin_logits, origin, valid, cw.get("origin"))
    if "vertex" in tasks:
        vertex = batch["track_vertex"]
        t = vertex.shape[1]
        eye = torch.eye(t, dtype=torch.bool, device=vertex.device)
        pairs = valid[:, :, None] & valid[:, None, :] & ~eye
        target = (vertex[:, :, None] == vertex[:, None, :]) & (vertex[:, :, None] >= 0)
        weight = pairs.float()
        if o["vertex_origin_weighting"] and origin is not None:
            heavy = torch.isin(origin, torch.tensor(HEAVY_FLAVOUR, device=origin.device)).int()
            w = heavy - (origin == FAKE).int()
            weight = weight * (1 + (w[:, :, None] & w[:, None, :])).float()
        bce = F.binary_cross_entropy_with_logits(vertex_logits.float(), target.float(), reduction="none")
        norm = pairs & target if o["vertex_loss_norm"] == "matches" else pairs
        loss = loss + w_vertex * _safe_div((weight * bce).sum(), norm.sum().float())
    return loss


def synthetic_batch(batch: int, width: int, features: int, device: torch.device, seed: int = 0) -> dict:
    """Random jets with 1..width valid tracks at the front, labels for all three tasks."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, width + 1, (batch,), generator=g)
    valid = torch.arange(width)[None, :] < counts[:, None]
    tracks = torch.randn(batch, width, features, generator=g) * valid[..., None]
    origin = torch.where(valid, torch.randint(0, 8, (batch, width), generator=g), -1)
    vertex = torch.where(valid, torch.randint(-1, 4, (batch, width), generator=g), -1)
    out = {
        "tracks": tracks,
        "valid": valid,
        "flavour": torch.randint(0, 4, (batch,), generator=g),
        "track_origin": origin,
        "track_vertex": vertex,
    }
    return {k: v.to(device) for k, v in out.items()}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings end here)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model_cfg: dict, mode: str, width: int, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = GN2(model_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5, fused=device.type == "cuda")
    batch = synthetic_batch(args.batch, width, model_cfg["track_features"], device)
    compute = torch.compile(loss_fn, dynamic=False) if mode == "compile" else loss_fn
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = compute(model, batch)
        loss.backward()
        opt.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    if not math.isfinite(float(loss.detach())):
        raise FloatingPointError(f"torch {mode} width {width}: loss is {float(loss.detach())}")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        times.append((time.perf_counter() - t0) / args.steps)
    per_step = sorted(times)[len(times) // 2]
    return {
        "impl": "torch",
        "mode": mode,
        "tracks": width,
        "ms_per_step": 1e3 * per_step,
        "samples_per_s": args.batch / per_step,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "warmup_s": warmup_s,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4000)
    parser.add_argument("--widths", default="40", help="comma-separated track widths")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--model", default="{}", help="GN2 hyperparameters as JSON (smilejax GN2Config)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)

    model_cfg = {
        "track_features": 21,
        "embed": 256,
        "init_hidden": [256],
        "layers": 4,
        "heads": 8,
        "ff": 512,
        "out": 128,
        "registers": 1,
        "head_hidden": [128, 64, 32],
        "jet_classes": 4,
        "origin_classes": 8,
        "activation": "relu",
        **json.loads(args.model),
    }
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        for width in [int(w) for w in args.widths.split(",")]:
            rows.append(measure(model_cfg, mode, width, args, device))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"torch": torch.__version__, "device": name, "python": sys.version.split()[0], "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
