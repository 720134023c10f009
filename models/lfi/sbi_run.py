"""The `sbi` package's NPE on given simulations: run by the sbi reference environment's Python (``make
reference``, launch/install_sbi_reference.sh), never imported by smilejax (``sbi_peer`` starts it).

    python sbi_run.py --data sims.npz --jobs jobs.json --out result.json --samples samples.npz

``sims.npz`` holds, per job KEY, ``KEY/theta`` [N, theta_dim] and ``KEY/x`` [N, x_dim] (the training
simulations) and ``KEY/observations`` [K, x_dim]. ``jobs.json``: ``{"settings": {...}, "jobs": [{"key":
KEY, "seed": S}, ...]}``; settings: ``density_estimator`` (maf, nsf), ``hidden_features``,
``num_transforms``, ``num_bins``, ``training_batch_size``, ``learning_rate``, ``validation_fraction``,
``stop_after_epochs``, ``max_num_epochs``, ``num_samples`` (draws per observation), ``threads``,
``device`` (auto: CUDA where torch has a GPU, else cpu).

Per job: sbi's ``NPE`` (no prior given: sbi's improper empirical prior; the caller applies the task's prior
support to these draws and smilejax's alike) trains on the simulations with sbi's own loop (z-scored
theta and x, Adam, validation-based early stopping), then draws ``num_samples`` from the flow for each
observation. ``result.json``: versions and per job the wall times (train, sample), epochs and the best
validation loss; ``samples.npz``: ``KEY/SEED/samples`` [K, num_samples, theta_dim].
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import sbi
import torch
from sbi.inference import NPE
from sbi.neural_nets import posterior_nn


def device(setting: str) -> str:
    """``auto``: CUDA where torch sees a GPU (a CUDA build of torch), else the CPU."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def run_job(data: np.lib.npyio.NpzFile, key: str, seed: int, s: dict) -> tuple[dict, np.ndarray]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    theta = torch.as_tensor(data[f"{key}/theta"], dtype=torch.float32)
    x = torch.as_tensor(data[f"{key}/x"], dtype=torch.float32)
    observations = torch.as_tensor(data[f"{key}/observations"], dtype=torch.float32)
    builder = posterior_nn(
        model=s["density_estimator"],
        hidden_features=s["hidden_features"],
        num_transforms=s["num_transforms"],
        num_bins=s.get("num_bins", 10),
    )
    on = device(s.get("device", "auto"))
    inference = NPE(density_estimator=builder, device=on, show_progress_bars=False)
    start = time.perf_counter()
    inference.append_simulations(theta, x)
    estimator = inference.train(
        training_batch_size=s["training_batch_size"],
        learning_rate=s["learning_rate"],
        validation_fraction=s["validation_fraction"],
        stop_after_epochs=s["stop_after_epochs"],
        max_num_epochs=s["max_num_epochs"],
        show_train_summary=False,
    )
    train_s = time.perf_counter() - start
    estimator.eval()
    start = time.perf_counter()
    with torch.no_grad():
        # [num_samples, K, theta_dim] -> [K, num_samples, theta_dim]
        condition = observations.to(on)
        draws = estimator.sample((s["num_samples"],), condition=condition).transpose(0, 1).cpu()
    sample_s = time.perf_counter() - start
    summary = inference.summary
    row = {
        "key": key,
        "seed": seed,
        "train_s": train_s,
        "sample_s": sample_s,
        "epochs": int(inference.epoch),
        "best_validation_loss": float(min(summary["validation_loss"])),
    }
    return row, draws.numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", required=True)
    args = parser.parse_args()
    with open(args.jobs) as f:
        spec = json.load(f)
    settings = spec["settings"]
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    data = np.load(args.data)
    rows, arrays = [], {}
    for job in spec["jobs"]:
        row, draws = run_job(data, job["key"], int(job["seed"]), settings)
        rows.append(row)
        arrays[f"{job['key']}/{job['seed']}/samples"] = draws
        print(
            f"sbi {job['key']} seed {job['seed']}: {row['train_s']:.1f} s, {row['epochs']} epochs", flush=True
        )
    np.savez(args.samples, **arrays)
    result = {
        "sbi": sbi.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device(settings.get("device", "auto")),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
