"""Jets of particle-flow particles (``fastjet``) matched to generator jets, as particleflow evaluates MLPF.

particleflow 3.1.0's CLIC jets (``mlpf.conf.JET_CONFIG``, ``mlpf.model.inference``): fastjet's
``ee_genkt_algorithm`` with R = 0.4 and p = -1 (anti-kt's ordering with e+e- distances) on the particles
of a collection whose class is not 0, four-vectors (pT cos phi, pT sin phi, pT sinh eta, E); jets with
pT > 5 GeV, and generator jets above the same cut. Each generator jet is matched to the closest reco jet
of its event in ΔR = sqrt(Δη² + Δφ²) (η the pseudorapidity) when that ΔR is < 0.1 (``match_jets`` of
``mlpf.jet_utils``: a reco jet may match several generator jets). The jet response is reco pT / gen pT
of the matched pairs.

``fastjet`` (and ``awkward``) are imported only when clustering: ``missing()`` names what is absent.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np

from smilejax import host

from .particles import Particles

INSTALL_HINT = host.pip_install("fastjet")  # awkward comes with it


@dataclasses.dataclass(frozen=True)
class JetDefinition:
    """A fastjet algorithm (name in the ``fastjet`` module), R, p (None for algorithms without one),
    the jet pT cut (GeV) and the matching ΔR."""

    algorithm: str = "ee_genkt_algorithm"
    r: float = 0.4
    p: float | None = -1.0
    pt_min: float = 5.0
    match_dr: float = 0.1

    def describe(self) -> dict:
        return dataclasses.asdict(self)


CLIC = JetDefinition()  # particleflow's CLIC / CLD configuration
CMS = JetDefinition("antikt_algorithm", 0.4, None, 3.0, 0.1)


@dataclasses.dataclass(frozen=True)
class Jets:
    """Jets of several events as flat arrays ordered by event (``event`` = row of the event)."""

    event: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    energy: np.ndarray

    def __len__(self) -> int:
        return int(self.event.size)


def missing() -> str | None:
    """Why jets cannot be clustered here (a missing package, with the install command), or None."""
    absent = [m for m in ("fastjet", "awkward") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(absent)} not installed ({INSTALL_HINT})" if absent else None


def from_padded(jets: np.ndarray, pt_min: float) -> Jets:
    """Jets given per event as [events, J, 4] rows of (pT, eta, phi, E), zero rows as padding; those
    with pT > ``pt_min`` (particleflow's cut on generator jets)."""
    jets = np.asarray(jets, np.float64)
    event, slot = np.nonzero(jets[..., 0] > pt_min)
    pt, eta, phi, energy = np.moveaxis(jets[event, slot], -1, 0)
    return Jets(event, pt, eta, phi, energy)


def cluster(particles: Particles, keep: np.ndarray, jetdef: JetDefinition = CLIC) -> Jets:
    """Jets of the ``keep`` particles of each event (``keep`` [events, elements])."""
    import awkward as ak
    import fastjet

    keep = np.asarray(keep, bool)
    if keep.ndim != 2:
        raise ValueError(f"keep must be [events, elements], got shape {keep.shape}")
    p4 = particles.p4()[keep]  # row-major: event by event
    if not p4.size:
        return _empty()
    vectors = ak.zip({"px": p4[:, 0], "py": p4[:, 1], "pz": p4[:, 2], "E": p4[:, 3]})
    algorithm = getattr(fastjet, jetdef.algorithm)
    extra = () if jetdef.p is None else (jetdef.p,)
    found = fastjet.ClusterSequence(
        ak.unflatten(vectors, keep.sum(axis=1)), fastjet.JetDefinition(algorithm, jetdef.r, *extra)
    )
    jets = found.inclusive_jets(min_pt=jetdef.pt_min)
    n = ak.to_numpy(ak.num(jets))
    px, py, pz, energy = (
        ak.to_numpy(ak.flatten(jets[k])).astype(np.float64) for k in ("px", "py", "pz", "E")
    )
    pt = np.hypot(px, py)
    return Jets(
        event=np.repeat(np.arange(n.size), n),
        pt=pt,
        eta=np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0)),
        phi=np.arctan2(py, px),
        energy=energy,
    )


def _empty() -> Jets:
    return Jets(np.zeros(0, np.int64), *(np.zeros(0) for _ in range(4)))


def delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.asarray(a) - np.asarray(b)
    return np.arctan2(np.sin(d), np.cos(d))


def match(gen: Jets, reco: Jets, n_events: int, max_dr: float) -> np.ndarray:
    """For each generator jet, the index (into ``reco``) of the closest reco jet of its event if their ΔR
    is < ``max_dr``, else -1."""
    out = np.full(len(gen), -1, np.int64)
    if not len(gen) or not len(reco):
        return out
    g_slot, g_eta, g_phi = _padded(gen, n_events)
    _, r_eta, r_phi = _padded(reco, n_events)
    dr = np.hypot(g_eta[:, :, None] - r_eta[:, None, :], delta_phi(g_phi[:, :, None], r_phi[:, None, :]))
    dr = np.where(np.isnan(dr), np.inf, dr)  # padded slots
    best = np.argmin(dr, axis=2)  # [events, gen slots]
    best_dr = np.take_along_axis(dr, best[..., None], axis=2)[..., 0]
    first_reco = np.searchsorted(reco.event, np.arange(n_events))  # reco is ordered by event
    gen_best = best[gen.event, g_slot]
    ok = best_dr[gen.event, g_slot] < max_dr
    out[ok] = first_reco[gen.event[ok]] + gen_best[ok]
    return out


def take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` as float64, NaN where ``index`` is -1 (an unmatched jet of ``match``)."""
    values, index = np.asarray(values, np.float64), np.asarray(index)
    out = np.full(index.shape, np.nan)
    out[index >= 0] = values[index[index >= 0]]
    return out


def _padded(jets: Jets, n_events: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each jet's slot in its event and (eta, phi) as [events, max jets] with NaN padding."""
    if np.any(np.diff(jets.event) < 0) or (
        len(jets) and not 0 <= jets.event.min() <= jets.event.max() < n_events
    ):
        raise ValueError(f"jets must be ordered by event, with event rows in 0..{n_events - 1}")
    counts = np.bincount(jets.event, minlength=n_events)
    slot = np.arange(len(jets)) - (np.cumsum(counts) - counts)[jets.event]
    eta = np.full((n_events, max(int(counts.max()), 1)), np.nan)
    phi = eta.copy()
    eta[jets.event, slot] = jets.eta
    phi[jets.event, slot] = jets.phi
    return slot, eta, phi
