"""Whether a variant's validation-loss-versus-jets curve equals the reference's within seed spread
(``bench convergence``'s ``max |Δloss| / seed sd`` and ``within spread`` columns).

Definition, kept simple: at each evaluation index k that every seed of both variants reached (the same
step, hence the same jets seen, in every variant), Δ_k = mean over seeds of the variant's validation loss
minus the reference's (with the same seeds this is also the mean of the paired per-seed differences), and
sd_k = the standard deviation of the reference's validation loss over its seeds at k (sample sd, n - 1).
The ratio is max_k |Δ_k| / sd_k; the curve is *within spread* when that is at most 1: at no evaluation
does the variant's mean lie further from the reference's mean than one seed standard deviation. A point
with sd_k = 0 counts 0 if Δ_k = 0 too (the same weights), infinitely far otherwise; with fewer than two
reference seeds there is no spread and the verdict is None.
"""

from __future__ import annotations

import math
import statistics

LIMIT = 1.0  # within spread: |Δ| at most this many reference seed standard deviations at every evaluation


def curves(points: list[dict], variant: str, key: str = "val_loss") -> dict[int, list[float]]:
    """``key`` per seed of ``variant``, in evaluation order."""
    runs: dict[int, list[float]] = {}
    for p in points:
        if p["variant"] == variant:
            runs.setdefault(p["seed"], []).append(float(p[key]))
    return runs


def spread(points: list[dict], reference: str, variant: str, key: str = "val_loss") -> dict:
    """``max_delta`` (largest |Δ_k|), ``max_ratio`` (largest |Δ_k| / sd_k), ``at_step`` (the step of that
    largest ratio), ``within`` (max_ratio <= LIMIT; None without a spread) and ``evaluations`` compared."""
    ref, var = curves(points, reference, key), curves(points, variant, key)
    steps = [p["step"] for p in points if p["variant"] == reference and p["seed"] == min(ref, default=0)]
    n = min((len(c) for c in [*ref.values(), *var.values()]), default=0)
    result: dict = {"max_delta": None, "max_ratio": None, "at_step": None, "within": None, "evaluations": n}
    if n == 0 or not var or not ref:
        return result
    deltas, ratios = [], []
    for k in range(n):
        ref_k = [c[k] for c in ref.values()]
        delta = abs(statistics.fmean(c[k] for c in var.values()) - statistics.fmean(ref_k))
        deltas.append(delta)
        if len(ref_k) > 1:
            sd = statistics.stdev(ref_k)
            ratios.append(delta / sd if sd > 0 else (0.0 if delta == 0 else math.inf))
    result["max_delta"] = max(deltas)
    if ratios:
        worst = max(range(n), key=ratios.__getitem__)
        result.update(max_ratio=ratios[worst], at_step=steps[worst], within=ratios[worst] <= LIMIT)
    return result
