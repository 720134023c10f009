"""Synthetic MLPF events in particleflow's CLIC dataset format (``mlpf_format``), made with numpy alone.

For tests and the README demo, not physics. An event is 2-4 jets of particles (60 on average, sizes
spread widely) around random axes; invisible particles balance their transverse momentum (``genmet``).
Each visible particle makes one element: charged hadrons, electrons and muons a track (elemtype 1: pT,
eta, sin/cos phi, p smeared by 1-2 %, plausible track columns), photons and neutral hadrons a cluster
(elemtype 2: energy smeared by 15 %/sqrt(E) or 50 %/sqrt(E), ECAL/HCAL share by type). About 8 % of
clusters are noise without a target particle. ``ytarget`` holds the particle, so the model has something
to learn (type from element type and ECAL/HCAL share, momentum from the smeared element); ``ycand`` is
the target with the detector's mistakes of a rule-based reconstruction (misidentified clusters, lost
electrons and muons, noise clusters kept). ``genjets`` and ``targetjets`` are the 4-momentum sums of
each jet's visible generator / target particles, (pT, eta, phi, E).

``generate(n_events, seed)`` returns events; ``default_dataset()`` writes a small set (configs 1 and
2 of ``clic_edm_qq_pf``) once into ``$SMILEJAX_CACHE`` and returns its data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from smilejax.inputs import mlpf_format as fmt
from smilejax.inputs.cache import cache_root, locked

VERSION = 2  # of this generator: part of the cache folder name
_PROB = np.array([0.55, 0.12, 0.27, 0.03, 0.03])  # 211, 130, 22, 11, 13 among visible particles
_MASS = np.array([0.1396, 0.4976, 0.0, 0.000511, 0.1057])
_CHARGED = np.array([True, False, False, True, True])


def _p4(pt, eta, phi, m):
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)], -1)


def _jet(p4: np.ndarray) -> np.ndarray:
    """(pT, eta, phi, E) of the summed four-momenta ``p4`` [n, 4]."""
    px, py, pz, e = p4.sum(0)
    pt = float(np.hypot(px, py))
    return np.array([pt, np.arcsinh(pz / pt) if pt > 0 else 0.0, np.arctan2(py, px), e], np.float32)


def event(rng: np.random.Generator, mean_particles: float = 60.0) -> dict[str, np.ndarray]:
    """One synthetic event in the dataset's feature layout."""
    n_jets = int(rng.integers(2, 5))
    axes_eta, axes_phi = rng.uniform(-1.5, 1.5, n_jets), rng.uniform(-np.pi, np.pi, n_jets)
    n = max(int(rng.poisson(mean_particles * rng.lognormal(0, 0.5))), n_jets)
    jet = rng.integers(0, n_jets, n)
    kind = rng.choice(5, n, p=_PROB)  # index into CLASSES[1:]
    pt = 0.3 + rng.exponential(4.0, n)
    eta = axes_eta[jet] + rng.normal(0, 0.12, n)  # jets narrower than R = 0.4
    phi = axes_phi[jet] + rng.normal(0, 0.12, n)
    p4 = _p4(pt, eta, phi, _MASS[kind])
    energy, p = p4[:, 3], np.linalg.norm(p4[:, :3], axis=1)
    charge = np.where(_CHARGED[kind], rng.choice([-1.0, 1.0], n), 0.0)
    track = _CHARGED[kind]

    x = np.zeros((n, fmt.N_X), np.float32)
    x[:, 0] = np.where(track, 1, 2)
    res_trk = 1 + rng.normal(0, 0.01 + 0.001 * pt)
    ecal = kind == 2  # photons
    res_cal = 1 + rng.normal(0, 1, n) * np.where(ecal, 0.15, 0.5) / np.sqrt(np.maximum(energy, 0.1))
    res = np.clip(np.where(track, res_trk, res_cal), 0.2, 3.0)
    x[:, 1] = pt * res
    x[:, 2] = eta + np.where(track, 0.0, rng.normal(0, 0.02, n))
    x[:, 3], x[:, 4] = np.sin(phi), np.cos(phi)
    x[:, 5] = np.where(track, p, energy) * res
    trk = _track_columns(rng, pt, eta, charge)
    cal = _cluster_columns(rng, x[:, 5], energy, eta, phi, ecal)
    x[track, 6:16] = trk[track]
    x[~track, 6:17] = cal[~track]

    y = np.zeros((n, fmt.N_Y), np.float32)
    y[:, 0] = kind + 1
    y[:, 1] = charge
    y[:, 2], y[:, 3], y[:, 4], y[:, 5], y[:, 6] = pt, eta, np.sin(phi), np.cos(phi), energy
    y[:, 8], y[:, 9] = 1, 1
    y[:, 10], y[:, 11] = np.where(track, 1, 0), np.where(track, 0, 1)
    y[:, 12] = jet

    x, y = _add_noise(rng, x, y)
    cand = _candidates(rng, x, y)
    genmet = np.hypot(*p4[:, :2].sum(0))  # invisible particles balance the visible ones
    target_p4 = _p4(y[:, 2], y[:, 3], np.arctan2(y[:, 4], y[:, 5]), 0.0)
    jets = [_jet(p4[jet == j]) for j in range(n_jets)]
    tjets = [_jet(target_p4[(y[:, 12] == j) & (y[:, 0] > 0)]) for j in range(n_jets)]
    perm = rng.permutation(len(x))  # elements come unordered, as tracks and clusters would not
    return {
        "X": x[perm],
        "ytarget": y[perm],
        "ycand": cand[perm],
        "genmet": np.float32(genmet),
        "genjets": np.array(jets, np.float32).reshape(-1, 4),
        "targetjets": np.array(tjets, np.float32).reshape(-1, 4),
    }


def _track_columns(
    rng: np.random.Generator, pt: np.ndarray, eta: np.ndarray, charge: np.ndarray
) -> np.ndarray:
    """X's track columns 6..15 of every element (kept on tracks only)."""
    n = pt.size
    # track columns: chi2, ndf, dEdx, dEdxError, radiusOfInnermostHit, tanLambda, D0, omega, Z0, time
    return np.stack(
        [
            rng.chisquare(10, n),
            np.full(n, 10.0),
            rng.normal(3, 0.3, n),
            np.full(n, 0.1),
            rng.uniform(30, 40, n),
            np.sinh(eta),
            rng.normal(0, 0.02, n),
            charge * 1.5e-3 / np.maximum(pt, 0.1),
            rng.normal(0, 0.03, n),
            rng.normal(0, 0.1, n),
        ],
        -1,
    )


def _cluster_columns(
    rng: np.random.Generator,
    e_cal: np.ndarray,
    energy: np.ndarray,
    eta: np.ndarray,
    phi: np.ndarray,
    ecal: np.ndarray,
) -> np.ndarray:
    """X's cluster columns 6..16 of every element (kept on clusters only); ``e_cal`` the measured energy."""
    n = e_cal.size
    # cluster columns: position x, y, z, iTheta, energy_ecal, energy_hcal, energy_other, num_hits,
    # sigma x, y, z
    share = np.where(ecal, rng.uniform(0.9, 1.0, n), rng.uniform(0.0, 0.3, n))
    r = 1500.0
    return np.stack(
        [
            r * np.cos(phi),
            r * np.sin(phi),
            r * np.sinh(eta),
            2 * np.arctan(np.exp(-eta)),
            e_cal * share,
            e_cal * (1 - share),
            np.zeros(n),
            rng.poisson(5 + 3 * np.sqrt(energy)).astype(float),
            rng.uniform(5, 20, n),
            rng.uniform(5, 20, n),
            rng.uniform(5, 20, n),
        ],
        -1,
    )


def _add_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calorimeter noise clusters: elements without a target particle (class 0, jet index -1)."""
    k = rng.binomial(len(x), 0.08)
    noise = np.zeros((k, fmt.N_X), np.float32)
    noise[:, 0] = 2
    e = rng.exponential(0.5, k) + 0.1
    eta, phi = rng.uniform(-2.5, 2.5, k), rng.uniform(-np.pi, np.pi, k)
    noise[:, 1], noise[:, 2], noise[:, 3], noise[:, 4] = e / np.cosh(eta), eta, np.sin(phi), np.cos(phi)
    noise[:, 5], noise[:, 11] = e, e  # energy; energy_hcal
    empty = np.zeros((k, fmt.N_Y), np.float32)
    empty[:, 12] = -1
    return np.concatenate([x, noise]), np.concatenate([y, empty])


def _candidates(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A rule-based reconstruction's view of ``y``: the element's own measurement, a class from the
    element type and its ECAL share, electrons/muons identified 80 % of the time."""
    cand = y.copy()
    cls = y[:, 0].astype(int)
    track = x[:, 0] == 1
    lepton = np.isin(cls, (4, 5)) & (rng.uniform(size=len(x)) < 0.8)
    ecal_share = x[:, 10] / np.maximum(x[:, 5], 1e-6)
    cls_cand = np.where(track, np.where(lepton, cls, 1), np.where(ecal_share > 0.6, 3, 2))
    cls_cand[(~track) & (x[:, 5] < 0.3)] = 0  # below the cluster threshold
    cand[:, 0] = cls_cand
    cand[:, 2], cand[:, 6] = x[:, 1], x[:, 5]
    cand[:, 3], cand[:, 4], cand[:, 5] = x[:, 2], x[:, 3], x[:, 4]
    cand[cls_cand == 0, 1:] = 0
    return cand


def generate(n_events: int, seed: int = 0, mean_particles: float = 60.0) -> list[dict[str, np.ndarray]]:
    if n_events < 1:
        raise ValueError(f"n_events must be at least 1, got {n_events}")
    rng = np.random.default_rng(seed)
    return [event(rng, mean_particles) for _ in range(n_events)]


def make(
    data_dir: str | os.PathLike,
    n_events: int,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    name: str = "clic_edm_qq_pf",
    config: int = 1,
    mean_particles: float = 60.0,
    overwrite: bool = False,
) -> Path:
    """Write ``n_events`` synthetic events as train/test splits of ``name`` config ``config``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not overwrite:
        fmt.claim(data_dir, name, config)  # fail before generating
    events = generate(n_events, seed, mean_particles)
    n_test = max(1, round(n_events * test_fraction))
    return fmt.write(
        data_dir,
        name,
        {"train": events[n_test:], "test": events[:n_test]},
        config=config,
        overwrite=overwrite,
    )


DEFAULT_EVENTS = {1: (2500, 1), 2: (2500, 2)}  # builder config -> (events, seed)


def default_dataset(cache_dir: str | os.PathLike | None = None) -> str:
    """Data directory of the small default set (configs 1 and 2 of ``clic_edm_qq_pf``, 2,000 train and
    500 test events each), made on first use by one process while the others of a job wait."""
    root = cache_root(cache_dir) / f"mlpf_synthetic_v{VERSION}"
    with locked(root / ".lock"):
        for config, (n, seed) in DEFAULT_EVENTS.items():
            done = root / "clic_edm_qq_pf" / str(config) / fmt.VERSION / "dataset_info.json"
            if not done.exists():
                make(root, n, seed=seed, config=config, overwrite=True)  # a left-over partial write
    return str(root)
