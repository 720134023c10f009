"""Shared parts of the Pythia 8 dataset makers: the install check, starting a seeded Pythia, one Pythia batch
as flat numpy arrays, soft-QCD (minimum-bias) interactions for pile-up and their vertices along the beam line,
kinematics, pairing by group and per-worker seeds; and the ``pythia`` feature of ``smilejax doctor``.

Imports no generator at module level (``pythia8mc``, ``fastjet``, ``awkward`` are optional: ``.[pythia]``).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np

from smilejax import host
from smilejax.features import Feature, Missing

INSTALL_HINT = host.pip_install(".[pythia]")  # pythia8mc, fastjet
BEAMS_13TEV = ("Beams:eCM = 13000.",)
TTBAR = ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on")
# minimum bias: the inelastic soft-QCD processes (non-diffractive, single and double diffractive)
SOFT_QCD = ("SoftQCD:nonDiffractive = on", "SoftQCD:singleDiffractive = on", "SoftQCD:doubleDiffractive = on")
QUIET = ("Print:quiet = on", "Next:numberCount = 0", "Random:setSeed = on")


def require_generators() -> None:
    """Fail early, with the install command, when pythia8mc / fastjet are missing."""
    missing = [m for m in ("pythia8mc", "fastjet", "awkward") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"the Pythia dataset maker needs {', '.join(missing)}: {INSTALL_HINT}")


def start(settings: tuple[str, ...], seed: int):
    """An initialised ``pythia8mc.Pythia`` with ``settings`` and ``Random:seed = seed`` (1..9e8; Pythia
    would take 0 as "seed from the clock", so a reproducible run refuses it)."""
    import pythia8mc

    if not 1 <= int(seed) <= 900_000_000:
        raise ValueError(f"Pythia's Random:seed must be in 1..900000000 (0 seeds from the clock), got {seed}")
    pythia = pythia8mc.Pythia("", False)
    for line in (*settings, f"Random:seed = {int(seed)}"):
        if not pythia.readString(line):
            raise ValueError(f"Pythia rejected the setting {line!r}")
    if not pythia.init():
        raise RuntimeError("Pythia failed to initialise (see its output)")
    return pythia


def beam_spot(rng: np.random.Generator, n: int, sigma_z: float, sigma_xy: float) -> np.ndarray:
    """[n, 3] interaction vertices (mm) from a Gaussian luminous region centred on the origin."""
    return np.stack([rng.normal(0, sigma_xy, n), rng.normal(0, sigma_xy, n), rng.normal(0, sigma_z, n)], 1)


@dataclasses.dataclass
class Record:
    """Flat particle arrays of a batch of events; ``event`` is each particle's event (0..n-1)."""

    event: np.ndarray
    pid: np.ndarray
    status: np.ndarray
    parent: np.ndarray  # global index of the decaying particle for decay products (status 91-99), else -1
    p: np.ndarray  # [n, 4] px, py, pz, E (GeV)
    v: np.ndarray  # [n, 3] production vertex (mm)
    charge: np.ndarray
    tau0: np.ndarray  # mean proper lifetime cτ (mm)
    n_events: int


def record(events, particle_data, cache: dict[int, tuple[float, float]]) -> Record:
    """A batch of events (``pythia.nextBatch``) as flat arrays; ``cache`` keeps (charge, cτ) per PDG id."""
    import awkward as ak

    prt = events.prt
    counts = ak.to_numpy(ak.num(prt)).astype(np.int64)
    flat = {k: ak.to_numpy(ak.flatten(prt[k])) for k in ("id", "status", "mother1")}
    p = np.stack([ak.to_numpy(ak.flatten(prt.p[k])) for k in ("px", "py", "pz", "e")], axis=1)
    v = np.stack(
        [ak.to_numpy(ak.fill_none(ak.flatten(prt.vProd[k]), 0.0)) for k in ("px", "py", "pz")], axis=1
    )
    event = np.repeat(np.arange(counts.size), counts)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    status = np.abs(flat["status"])
    decay = (status >= 91) & (status <= 99)
    parent = np.where(decay, flat["mother1"] + start[event], -1)
    ids = np.unique(flat["id"])
    for i in ids.tolist():
        if i not in cache:
            cache[i] = (particle_data.charge(i), particle_data.tau0(i))
    lut = np.array([cache[i] for i in ids.tolist()]).reshape(-1, 2)
    k = np.searchsorted(ids, flat["id"])
    return Record(event, flat["id"], flat["status"], parent, p, v, lut[k, 0], lut[k, 1], int(counts.size))


class MinBias:
    """Soft-QCD interactions at 13 TeV from their own Pythia (the pile-up of the makers); ``cache`` as in
    ``record``."""

    def __init__(self, seed: int, cache: dict[int, tuple[float, float]] | None = None):
        """``seed``: the hard-scatter generator's; the soft-QCD generator draws from its own seed."""
        self.pythia = start((*BEAMS_13TEV, *SOFT_QCD, *QUIET), (seed * 7 + 3) % 900_000_000 + 1)
        self.cache = {} if cache is None else cache

    def __call__(self, n: int) -> Record:
        """``n`` interactions as one record (``event`` = 0..n-1, vertices relative to each interaction)."""
        return record(self.pythia.nextBatch(n), self.pythia.particleData, self.cache)


def kinematics(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pT, η, φ of [n, 4] momenta (η finite even along the beam)."""
    pt = np.hypot(p[:, 0], p[:, 1])
    eta = np.arcsinh(p[:, 2] / np.maximum(pt, 1e-9))
    return pt, eta, np.arctan2(p[:, 1], p[:, 0])


def wrap(dphi: np.ndarray) -> np.ndarray:
    """Angle differences into [-π, π)."""
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def cross(ga: np.ndarray, gb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j) with ga[i] == gb[j], for group ids sorted ascending in both."""
    n = int(max(ga.max(initial=-1), gb.max(initial=-1))) + 1
    nb = np.bincount(gb, minlength=n)
    first_b = np.r_[0, np.cumsum(nb)[:-1]]
    reps = nb[ga]
    i = np.repeat(np.arange(ga.size), reps)
    first_pair = np.r_[0, np.cumsum(reps)[:-1]]
    j = np.repeat(first_b[ga] - first_pair, reps) + np.arange(int(reps.sum()))
    return i, j


def seeds(seed: int, worker: int) -> tuple[int, tuple[int, ...]]:
    """(Pythia seed in 1..9e8, numpy seed) of a worker: independent streams per (seed, worker)."""
    pythia_seed = int(np.random.SeedSequence([seed, worker, 0x9717]).generate_state(1)[0]) % 900_000_000
    return pythia_seed + 1, (seed, worker, 0xF7A6)


def _probe() -> str:
    try:
        require_generators()
    except ImportError as err:
        raise Missing(str(err).partition(":")[0], INSTALL_HINT) from None
    versions = ((d, host.package_version(d)) for d in ("pythia8mc", "fastjet"))
    return ", ".join(f"{d} {v}" if v else d for d, v in versions)


FEATURES = (Feature("pythia", "data make ftag-pythia / mlpf-pythia", _probe),)
