"""PyTorch Geometric peer of the tracking family's Interaction GNN (``smilejax.models.tracking.gnn``).

Run ONLY as a script by the interpreter of the PyG reference environment (``bash
launch/install_pyg_reference.sh``: torch + torch_geometric); it imports nothing of smilejax.

Two uses:

* ``--scores``: edge logits of given weights on given graphs (tests/test_tracking_parity.py)::

      python torch_peer.py --model '{"hidden": 16, ...}' --weights W.npz --graphs G.npz --scores OUT.npz

  ``W.npz`` holds the JAX model's ``nnx.Param`` leaves keyed by their path joined with ``/``
  (``node_encoder/dense/0/kernel``, ...); ``G.npz`` holds padded ``hits, hit_mask, edges, edge_mask``
  ([B, N, F], [B, N], [B, E, 2], [B, E]); ``OUT.npz`` gets ``edge_logits`` [B, E] (0 on padded edges).
* ``smilejax bench train``'s peer (``--batch --widths --steps --repeats --precision --modes --model
  --out``): trains on the batches ``smilejax.bench._synthetic.batch`` makes with seed 0 for each width
  (``max_edges``), rebuilt here with numpy in the same order of draws, so both frameworks see the same
  graphs; ``--graphs`` takes them from a file instead. Writes JSON rows: ms/step, graphs/s, peak memory.

The model is PyG's way of writing acorn's ``InteractionGNN``: a batch is one disjoint union of graphs
(``torch_geometric.data.Batch``: padding dropped, node indices offset), the node sums are a
``MessagePassing`` layer with ``aggr="sum"`` run on the edges and on the reversed edges (incoming and
outgoing), and the MLPs are acorn's ``make_mlp`` (Linear, LayerNorm, SiLU per layer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MessagePassing

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class AcornMLP(nn.Module):
    """acorn's ``make_mlp``; names follow the JAX model (``dense.i``, ``norms.i``) so weights map 1:1."""

    def __init__(self, widths: list[int], layernorm: bool, activation: str, final: bool):
        super().__init__()
        n = len(widths) - 1
        self.dense = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(n))
        keep = n if final else n - 1
        self.norms = nn.ModuleList(nn.LayerNorm(widths[i + 1]) for i in range(keep))
        self.layernorm = layernorm
        self.act = ACTIVATIONS[activation.lower()]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.dense):
            x = layer(x)
            if i < len(self.norms):
                x = self.act(self.norms[i](x) if self.layernorm else x)
        return x


class EdgeSum(MessagePassing):
    """Sum of edge features into their target nodes (``flow="source_to_target"``: ``edge_index[1]``)."""

    def __init__(self):
        super().__init__(aggr="sum")

    def forward(self, edge_attr: torch.Tensor, edge_index: torch.Tensor, n_nodes: int) -> torch.Tensor:
        return self.propagate(edge_index, edge_attr=edge_attr, size=(n_nodes, n_nodes))

    def message(self, edge_attr: torch.Tensor) -> torch.Tensor:
        return edge_attr


class Interaction(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h, kw = c["hidden"], dict(layernorm=c["layernorm"], activation=c["hidden_activation"], final=True)
        self.node_net = AcornMLP([3 * h] + [h] * c["nb_node_layer"], **kw)
        self.edge_net = AcornMLP([3 * h] + [h] * c["nb_edge_layer"], **kw)


class IGN(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h, self.c = c["hidden"], c
        kw = dict(layernorm=c["layernorm"], activation=c["hidden_activation"])
        self.node_encoder = AcornMLP([c["n_features"]] + [h] * c["nb_node_layer"], final=True, **kw)
        self.edge_encoder = AcornMLP([2 * h] + [h] * c["nb_edge_layer"], final=True, **kw)
        n_blocks = 1 if c["recurrent"] else c["n_graph_iters"]
        self.blocks = nn.ModuleList(Interaction(c) for _ in range(n_blocks))
        widths = [3 * h] + [h] * (c["classifier_layers"] - 1) + [1]
        self.classifier = AcornMLP(widths, final=False, **kw)
        self.sum = EdgeSum()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Edge logits [E] of a (batched) graph: node features [N, F], edge_index [2, E] (senders first)."""
        s, r = edge_index
        reverse = edge_index.flip(0)
        n = x.shape[0]
        x = self.node_encoder(x)
        e = self.edge_encoder(torch.cat([x[s], x[r]], -1))
        for i in range(self.c["n_graph_iters"]):
            block = self.blocks[i % len(self.blocks)]
            agg = torch.cat([self.sum(e, edge_index, n), self.sum(e, reverse, n)], -1)
            x = x + block.node_net(torch.cat([x, agg], -1))
            e = e + block.edge_net(torch.cat([x[s], x[r], e], -1))
        return self.classifier(torch.cat([x[s], x[r], e], -1))[:, 0]


def load_weights(model: IGN, weights: dict[str, np.ndarray]) -> None:
    """The JAX model's parameters (``.../dense/i/kernel`` [in, out] -> ``weight`` [out, in]; LayerNorm
    ``scale`` -> ``weight``); every torch parameter must be given exactly once."""
    own = dict(model.named_parameters())
    seen = set()
    for key, value in weights.items():
        parts = key.split("/")
        leaf = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
        name = ".".join([*parts[:-1], leaf])
        if name not in own:
            raise SystemExit(f"torch_peer: weight {key!r} has no parameter {name!r} in the peer")
        tensor = torch.from_numpy(np.ascontiguousarray(value.T if parts[-1] == "kernel" else value))
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise SystemExit(
                f"torch_peer: {key} has shape {tuple(tensor.shape)}, "
                f"the peer's {name} {tuple(own[name].shape)}"
            )
        with torch.no_grad():
            own[name].copy_(tensor)
        seen.add(name)
    missing = sorted(set(own) - seen)
    if missing:
        raise SystemExit(f"torch_peer: no weights given for {missing}")


def to_batch(graphs: dict[str, np.ndarray], device: torch.device) -> tuple[Batch, list[np.ndarray]]:
    """Padded graphs as one PyG ``Batch`` of their real hits and edges, with each graph's real-edge
    positions (to put the scores back in the padded layout)."""
    data, kept = [], []
    for hits, hit_mask, edges, edge_mask in zip(
        graphs["hits"], graphs["hit_mask"], graphs["edges"], graphs["edge_mask"], strict=True
    ):
        index = np.cumsum(hit_mask) - 1  # padded slot -> position among the real hits
        real = np.flatnonzero(edge_mask)
        pairs = index[edges[real]].T
        if np.any(~hit_mask[edges[real]]):
            raise SystemExit("torch_peer: a real edge touches a padded hit")
        data.append(
            Data(
                x=torch.from_numpy(hits[hit_mask].astype(np.float32)),
                edge_index=torch.from_numpy(pairs.astype(np.int64)),
            )
        )
        kept.append(real)
    return Batch.from_data_list(data).to(device), kept


def scores(args: argparse.Namespace) -> int:
    c = json.loads(args.model)
    torch.manual_seed(0)
    model = IGN(c).eval()
    load_weights(model, dict(np.load(args.weights)))
    graphs = dict(np.load(args.graphs))
    batch, kept = to_batch(graphs, torch.device("cpu"))
    with torch.no_grad():
        logits = model(batch.x, batch.edge_index).numpy()
    out = np.zeros(graphs["edge_mask"].shape, np.float32)
    start = 0
    for row, real in enumerate(kept):
        out[row, real] = logits[start : start + real.size]
        start += real.size
    np.savez(args.scores, edge_logits=out)
    return 0


def synthetic(c: dict, batch: int, n_edges: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``smilejax.bench._synthetic.batch`` of the IGN (``input_spec`` then ``synthetic.ign_labels``),
    the same numpy draws in the same order: the graphs JAX trains on in ``bench train``."""
    rng = np.random.default_rng(seed)
    n, f = c["max_nodes"], c["n_features"]
    hits = rng.standard_normal((batch, n, f)).astype(np.float32)
    hit_mask = np.arange(n) < rng.integers(1, n + 1, size=(batch,))[:, None]
    edge_mask = np.arange(n_edges) < rng.integers(1, n_edges + 1, size=(batch,))[:, None]
    n_real = np.maximum(hit_mask.sum(1, keepdims=True), 1)
    particle = np.where(hit_mask, np.arange(n) // 8 + 1, 0)
    a = (rng.random(edge_mask.shape) * n_real).astype(np.int32)
    step = np.where(
        rng.random(edge_mask.shape) < 0.5, 1, (rng.random(edge_mask.shape) * n_real).astype(np.int32)
    )
    b = np.minimum(a + step, n_real - 1).astype(np.int32)
    edges = np.where(edge_mask[..., None], np.stack([a, b], -1), 0).astype(np.int32)
    rows = np.arange(batch)[:, None]
    y = (particle[rows, a] == particle[rows, b]) & (particle[rows, a] > 0) & edge_mask & (a != b)
    pt = np.where(hit_mask, rng.exponential(1.0, hit_mask.shape) + 0.1, 0).astype(np.float32)
    return {"hits": hits, "hit_mask": hit_mask, "edges": edges, "edge_mask": edge_mask, "edge_y": y, "pt": pt}


def targets(graphs: dict[str, np.ndarray], kept: list[np.ndarray], c: dict, device) -> tuple:
    """Edge truth and the loss weights of gnn.loss (true edges of pT >= pt_cut weigh true_weight)."""
    y = np.concatenate([graphs["edge_y"][i][k] for i, k in enumerate(kept)]).astype(np.float32)
    pt = np.concatenate([graphs["pt"][i][graphs["edges"][i][k, 0]] for i, k in enumerate(kept)]).astype(
        np.float32
    )
    w = np.where((y > 0) & (pt >= c.get("pt_cut", 1.0)), c.get("true_weight", 2.0), 1.0).astype(np.float32)
    return torch.from_numpy(y).to(device), torch.from_numpy(w).to(device)


def measure(c: dict, mode: str, width: int, args: argparse.Namespace, device: torch.device) -> dict:
    graphs = dict(np.load(args.graphs)) if args.graphs else synthetic(c, args.batch, width)
    batch, kept = to_batch(graphs, device)
    y, w = targets(graphs, kept, c, device)
    torch.manual_seed(0)
    model = IGN(c).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def loss_of(m, x, edge_index):
        with autocast:
            logits = m(x, edge_index).float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return (w * bce).sum() / y.numel()

    fn = torch.compile(loss_of) if mode == "compile" else loss_of

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fn(model, batch.x, batch.edge_index)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up (and compilation)
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        float(loss.detach())
        sync()
        times.append((time.perf_counter() - t0) / args.steps)
    ms = float(np.median(times)) * 1e3
    return {
        "impl": "torch",  # bench train compares against impl "torch" (eager: the ratio column)
        "mode": mode,
        "tracks": width,
        "ms_per_step": ms,
        "samples_per_s": args.batch / (ms / 1e3) if not args.graphs else len(kept) / (ms / 1e3),
        "edges": int(batch.edge_index.shape[1]),
        "nodes": int(batch.x.shape[0]),
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="JSON of the IGN config (gnn.IGNConfig's fields)")
    parser.add_argument("--weights", help="--scores: the JAX parameters (.npz, keys: paths joined by '/')")
    parser.add_argument(
        "--graphs", help="padded graphs (.npz: hits, hit_mask, edges, edge_mask[, edge_y, pt])"
    )
    parser.add_argument("--scores", help="write the edge logits of --weights on --graphs here (.npz)")
    parser.add_argument("--batch", type=int, default=1, help="graphs per step (synthetic graphs)")
    parser.add_argument("--widths", default="", help="comma-separated max_edges of the synthetic graphs")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args(argv)
    if args.scores:
        if not (args.weights and args.graphs):
            parser.error("--scores needs --weights and --graphs")
        return scores(args)
    if not args.out:
        parser.error("--out is required (or --scores)")
    c = json.loads(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    widths = [int(w) if w not in ("", "None") else c["max_edges"] for w in args.widths.split(",")]
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        for width in widths:
            rows.append(measure(c, mode, width, args, device))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result = {"torch": torch.__version__, "device": name, "python": sys.version.split()[0], "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
