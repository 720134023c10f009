"""Pile-up interactions and fake tracks for ``make_pythia``'s jets (the tracks; the jets come from the hard
scatter alone).

* pile-up: a Poisson number (mean ``mu``) of soft-QCD interactions per bunch crossing (``MinBias`` of
  ``generators.pythia``: non-diffractive, single and double diffractive), each at its own vertex drawn from
  the luminous region, z ~ N(0, 42 mm), x, y ~ N(0, 10 um); the hard scatter's vertex is drawn the same way
  and everything is shifted so that it sits at the origin (where the tracker measures impact parameters
  from), so a pile-up track's z0 is its vertex's distance in z from the hard scatter, about N(0, 59 mm).
  To keep the cost near that of the hard scatter, each generated interaction is overlaid ``REUSE`` times on
  average (on different crossings, each copy turned by a random azimuth and mirrored in z at random, as
  ATLAS's pile-up libraries reuse their minimum-bias events). Only charged final-state particles that can
  make a track in the selection (pT > 0.45 GeV, |η| < 2.6) are kept.
* fakes: tracks from random combinations of hits, made directly as measured tracks: a Poisson number per
  jet with mean ``FAKES_PER_MU`` x mu (hit combinatorics grow with the hit density, so fakes are a pile-up
  effect here: none at mu = 0); directions uniform in the jet's association cone; pT = 0.4 GeV + an
  exponential of mean 0.8 GeV (soft: random hit combinations look like low-momentum helices); d0 and
  z0 sinθ from Student-t distributions (2 degrees of freedom, scales 0.3 and 0.6 mm: wide tails, no
  lifetime sign), while the fit reports 1 to 2 times the nominal uncertainties; few, often shared, hits and
  more holes. The selection (``tracker.selected``) then drops many of them, as it does in ATLAS.
"""

from __future__ import annotations

import math

import numpy as np
from smilejax.generators.pythia import MinBias, Record, beam_spot, kinematics

from . import tracker

SIGMA_Z, SIGMA_XY = 42.0, 0.010  # luminous region (mm): ATLAS Run 2's length, inside 35-50 mm
REUSE = 4  # overlays per generated minimum-bias interaction (mean)
PT_KEEP, ETA_KEEP = 0.45, 2.6  # GeV; particles that cannot pass the track selection are dropped early
FAKES_PER_MU = 0.01  # mean fake-track candidates per jet per pile-up interaction


def overlay(rng: np.random.Generator, minbias: MinBias, n_crossings: int, mu: float) -> tuple[Record, dict]:
    """Pile-up particles of ``n_crossings`` bunch crossings: ``event`` is the crossing, vertices (mm) are
    relative to the crossing's hard-scatter vertex. Also returns per overlaid interaction its ``crossing``
    and vertex ``z`` (relative to the hard scatter)."""
    n_int = rng.poisson(mu, n_crossings)
    total = int(n_int.sum())
    n_gen = math.ceil(total / REUSE)
    crossing = np.repeat(np.arange(n_crossings), n_int)
    hs = beam_spot(rng, n_crossings, SIGMA_Z, SIGMA_XY)
    vertex = beam_spot(rng, total, SIGMA_Z, SIGMA_XY)
    vertex[:, 2] -= hs[crossing, 2]  # z0 from the hard scatter; d0 from the beam line (x = y = 0)
    info = {"crossing": crossing, "z": vertex[:, 2]}
    if total == 0:
        return _empty(n_crossings), info
    rec = minbias(n_gen)
    pt, eta, _ = kinematics(rec.p)
    keep = (rec.status > 0) & (rec.charge != 0) & (pt > PT_KEEP) & (np.abs(eta) < ETA_KEEP)
    counts = np.bincount(rec.event[keep], minlength=n_gen)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    source = rng.permutation(np.arange(total) % n_gen)  # generated interaction of each overlay
    reps = counts[source]
    idx = np.repeat(first[source] - np.r_[0, np.cumsum(reps)[:-1]], reps) + np.arange(int(reps.sum()))
    idx = np.flatnonzero(keep)[idx]
    k = np.repeat(np.arange(total), reps)  # overlay of each particle
    turn = rng.uniform(-np.pi, np.pi, total)[k]
    mirror = np.where(rng.random(total) < 0.5, -1.0, 1.0)[k]
    c, s = np.cos(turn), np.sin(turn)

    def move(x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[:, 0], out[:, 1] = c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]
        out[:, 2] = mirror * x[:, 2]
        return out

    p, v = move(rec.p[idx]), move(rec.v[idx]) + vertex[k]
    out = Record(
        crossing[k],
        rec.pid[idx],
        rec.status[idx],
        np.full(idx.size, -1),
        p,
        v,
        rec.charge[idx],
        rec.tau0[idx],
        n_crossings,
    )
    return out, info


def _empty(n_events: int) -> Record:
    z = np.zeros(0)
    return Record(
        z.astype(np.int64),
        z.astype(np.int64),
        z.astype(np.int64),
        z.astype(np.int64),
        np.zeros((0, 4)),
        np.zeros((0, 3)),
        z,
        z,
        n_events,
    )


def combine(hard: Record, above: np.ndarray, soft: Record) -> tuple[Record, np.ndarray, np.ndarray]:
    """One record of the hard scatter's and the pile-up's particles, ordered by event (as ``tracker`` needs),
    with the hard scatter's ancestry flags ``above`` carried along (0 for pile-up) and the pile-up mask."""
    fields = ("event", "pid", "status", "parent", "p", "v", "charge", "tau0")
    cat = {f: np.concatenate([getattr(hard, f), getattr(soft, f)]) for f in fields}
    order = np.argsort(cat["event"], kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(order.size)
    cat = {f: x[order] for f, x in cat.items()}
    cat["parent"] = np.where(cat["parent"] >= 0, where[np.maximum(cat["parent"], 0)], -1)
    mask = np.r_[np.zeros(hard.pid.size, bool), np.ones(soft.pid.size, bool)][order]
    flags = np.r_[above, np.zeros(soft.pid.size, above.dtype)][order]
    return Record(**cat, n_events=hard.n_events), flags, mask


def fakes(rng: np.random.Generator, jets: dict[str, np.ndarray], mu: float) -> dict[str, np.ndarray] | None:
    """Measured fake-track candidates of ``jets`` (``tracker.tracks``'s fields, ``jet`` = index), or None."""
    n = rng.poisson(FAKES_PER_MU * mu, jets["pt"].size)
    m = int(n.sum())
    if m == 0:
        return None
    jet = np.repeat(np.arange(n.size), n)
    cone = tracker.association_cone(jets["pt"][jet])
    r, a = cone * np.sqrt(rng.random(m)), rng.uniform(-np.pi, np.pi, m)
    deta, dphi = r * np.cos(a), r * np.sin(a)
    eta = jets["eta"][jet] + deta
    pt = 0.4 + rng.exponential(0.8, m)  # GeV
    sin_t = 1 / np.cosh(eta)
    sigma = tracker.resolution(pt, sin_t, np.ones(m))
    widen = rng.uniform(1.0, 2.0, m)
    d0 = 0.3 * rng.standard_t(2, m)
    z0s = 0.6 * rng.standard_t(2, m)
    sd0, sz0 = tracker.signed_significances(d0, z0s, sigma["d0"] * widen, sigma["z0"] * widen, dphi, deta)
    p_mev = pt * np.cosh(eta) * 1e3
    qop = rng.choice([-1.0, 1.0], m) / p_mev
    pix = rng.integers(1, 5, m)  # hits on 1-4 pixel layers, the innermost ones less often missing
    ibl = (rng.random(m) < 0.8).astype(int)
    return {
        "jet": jet,
        "d0": d0,
        "z0SinTheta": z0s,
        "dphi": dphi,
        "deta": deta,
        "qOverP": qop,
        "IP3D_signed_d0_significance": sd0,
        "IP3D_signed_z0_significance": sz0,
        "phiUncertainty": sigma["phi"] * widen,
        "thetaUncertainty": sigma["theta"] * widen,
        "qOverPUncertainty": np.abs(qop) * 0.03 * widen,
        "pt": pt * 1e3,
        "eta": eta,
        "numberOfPixelHits": pix,
        "numberOfSCTHits": rng.integers(4, 10, m),
        "numberOfInnermostPixelLayerHits": np.minimum(ibl, pix),
        "numberOfNextToInnermostPixelLayerHits": (rng.random(m) < 0.7).astype(int),
        "numberOfPixelHoles": rng.poisson(0.6, m),
        "numberOfSCTHoles": rng.poisson(0.6, m),
        "numberOfPixelSharedHits": rng.poisson(0.5, m),
        "numberOfPixelSplitHits": rng.poisson(0.1, m),
        "numberOfInnermostPixelLayerSharedHits": (rng.random(m) < 0.2).astype(int),
        "numberOfInnermostPixelLayerSplitHits": (rng.random(m) < 0.05).astype(int),
        "numberOfSCTSharedHits": rng.poisson(0.5, m),
    }
