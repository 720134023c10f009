"""ATLAS flavour-tagging jets from Pythia 8 tt̄ events, in the training-dataset-dumper HDF5 layout.

The same file format as ``make_synthetic`` (its ``JET_DTYPE`` / ``TRACK_DTYPE``: what ``ftag_h5``, salt and
atlas-ftag-tools read; MeV and mm), but the physics comes from an event generator instead of a caricature:

* events: ``pythia8mc`` tt̄ (gg and qq̄) at √s = 13 TeV, Monash tune with MPI, hadronisation and all decays
  of particles with cτ up to metres (K0S, Λ, ... decay in the generator; K0L and charged π/K are stable).
  Decay vertices are the generator's (mm). The primary vertex is at the origin, no pileup.
* jets: anti-kt R = 0.4 (``fastjet``) of the visible final state (neutrinos and e/μ without a hadron
  ancestor, e.g. from W decays, are left out), pT > 20 GeV, |η| < 2.5. ``pt`` / ``pt_btagJes`` are the
  truth-jet pT smeared by a jet-energy resolution, ``eta`` / ``eta_btagJes`` the truth η.
* labels: ``HadronConeExclTruthLabelID`` as ATLAS defines it: weakly decaying b hadrons (pT > 5 GeV) are
  matched to the closest jet within ΔR < 0.3 first (5), then c hadrons (4), then τ leptons (15), else 0;
  ``flavour_label`` 0..3 = b, c, light, τ.
* tracks: charged final-state particles with pT > 0.5 GeV and |η| < 2.5, associated to the closest jet
  within ATLAS's pT-dependent cone (ΔR < 0.239 + exp(-1.22 - 1.64e-5 pT/MeV): 0.45 at 20 GeV, 0.26 at
  200 GeV). Measured with a simple barrel detector:

  - hits: pixel layers at r = 33.25 (IBL), 50.5, 88.5, 122.5 mm and SCT double layers at 299, 371, 443,
    514 mm; a layer gives a hit (99 % efficient, 10 % overlap doubles) only when the particle is produced
    inside it, so decay products of K0S/Λ lose their pixel hits; a missed crossed layer is a hole. Two
    tracks closer than 0.25 mm on a pixel layer share the cluster (60 % of those split by the cluster
    network instead).
  - resolution: σ(d0) = 10 μm ⊕ 70 μm/(pT√sinθ), σ(z0 sinθ) = 20 μm ⊕ 90 μm/(pT√sinθ) (pT in GeV),
    scaled by (radius of the first hit)/(IBL radius); angles and q/p with multiple-scattering and
    curvature terms; 3 % of tracks get 3× wider impact-parameter errors (hadronic interactions, wrong
    hits) while reporting the nominal uncertainty.
  - impact parameters from the truth production vertex with straight lines (no helix): d0 > 0 when the
    point of closest approach is at φ_track + π/2, z0 at that point. The IP3D significances are
    lifetime-signed: + when the track crosses the jet axis in front of the primary vertex
    (sign of d0·sin(φ_jet - φ) and z0·(η_jet - η)).
  - selection as GN2's: pT > 0.5 GeV, |η| < 2.5, |d0| < 3.5 mm, |z0 sinθ| < 5 mm, ≥ 7 silicon hits,
    ≤ 2 silicon holes, ≤ 1 pixel hole. Up to 40 tracks per jet, sorted by |d0|/σ(d0), descending (the
    dumper's ``absSd0sort``); valid tracks fill the first slots.

* track truth: ``ftagTruthOriginLabel`` from the decay ancestry with InDetTrackTruthOriginTool's exclusive
  priority: FromB (a b hadron, no c hadron), FromBC (c hadron from b), FromC, FromTau, OtherSecondary (a
  long-lived ancestor, cτ > 1 mm: K0S, Λ, Σ, Ξ, Ω), else Primary. No Pileup or Fake tracks here.
  ``ftagTruthVertexIndex`` as FlavorTagDiscriminants' TrackTruthDecoratorAlg numbers it, but over each
  jet's selected tracks (salt only compares indices within a jet), in increasing pT: 0 when the
  production vertex is within 0.1 mm of the primary vertex, else the index (1, 2, ...) of the first seen
  vertex within 0.1 mm, else a new index.

Parallel: ``make(path, n_jets, seed, workers)`` starts ``workers`` processes (spawned, so a parent that
imported JAX is safe); worker k seeds Pythia and numpy from (seed, k), makes its share of the jets into a
temporary part file and reports progress; the parent shows a tqdm bar of jets and merges the parts, in
worker order, into one contiguous file (then removes them). The file is the same for the same seed and
worker count. Spawned workers re-import the main module: call ``make`` from a script under
``if __name__ == "__main__":``. Speed: about 90 tt̄ events (≈ 430 jets) per CPU-second.
"""

from __future__ import annotations

import os

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import logging
import shutil
import time
import traceback
import uuid
from pathlib import Path

import h5py
import numpy as np
from smilejax.generators import workers as workers_mod
from smilejax.generators.pythia import Record, cross, kinematics, record, require_generators, seeds, wrap

from .make_synthetic import (
    FLAVOUR_NAMES,
    FROM_B,
    FROM_BC,
    FROM_C,
    FROM_TAU,
    JET_DTYPE,
    MAX_TRACKS,
    OTHER,
    PRIMARY,
    TRACK_DTYPE,
    TRUTH_LABEL_ID,
)

log = logging.getLogger(__name__)

VERSION = 1
PYTHIA_SETTINGS = (
    "Beams:eCM = 13000.",
    "Top:gg2ttbar = on",
    "Top:qqbar2ttbar = on",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
)
BATCH_EVENTS = 20  # events per Pythia batch: the unit of progress (part of the seed -> file mapping)

# jets and labels
JET_PT_MIN, JET_ETA_MAX, JET_R = 20.0, 2.5, 0.4  # GeV
LABEL_DR, LABEL_PT_MIN = 0.3, 5.0  # GeV
# detector (mm)
PIXEL_R = np.array([33.25, 50.5, 88.5, 122.5])
SCT_R = np.array([299.0, 371.0, 443.0, 514.0])
HIT_EFF, OVERLAP = 0.99, 0.10
MERGE_MM, P_SPLIT = 0.25, 0.6  # pixel clusters of two tracks closer than this merge; split fraction
TAIL_FRAC, TAIL_SCALE = 0.03, 3.0
VERTEX_MERGE_MM = 0.1  # TrackTruthDecoratorAlg's truthVertexMergeDistance
LONG_LIVED_MM = 1.0  # ancestors with a longer cτ make OtherSecondary tracks (cτ of b/c hadrons < 0.5 mm)
# track selection (GN2)
TRK_PT_MIN, TRK_ETA_MAX, D0_MAX, Z0_MAX = 0.5, 2.5, 3.5, 5.0
MIN_SI_HITS, MAX_SI_HOLES, MAX_PIX_HOLES = 7, 2, 1

_B, _C, _TAU, _LONG, _HADRON = 1, 2, 4, 8, 16  # ancestry flags


# --------------------------------------------------------------------------------------------------
# event record: one Pythia batch as flat numpy arrays


def _heavy_quark(pid: np.ndarray) -> np.ndarray:
    """The heaviest quark of a hadron's PDG id (0 for non-hadrons and diquarks)."""
    a = np.abs(pid)
    q1, q2, q3 = (a // 1000) % 10, (a // 100) % 10, (a // 10) % 10
    hadron = (a > 100) & (a < 1_000_000) & (q3 > 0)
    return np.where(hadron, np.maximum(np.maximum(q1, q2), q3), 0)


def _ancestry(rec: Record) -> tuple[np.ndarray, np.ndarray]:
    """(own flags, OR of the flags of all decay ancestors) per particle."""
    heavy = _heavy_quark(rec.pid)
    own = (
        _B * (heavy == 5)
        + _C * (heavy == 4)
        + _TAU * (np.abs(rec.pid) == 15)
        + _LONG * ((heavy > 0) & (rec.tau0 > LONG_LIVED_MM))
        + _HADRON * (heavy > 0)
    )
    above = np.zeros_like(own)
    a = rec.parent.copy()
    while (live := a >= 0).any():  # pointer jumping up the decay chains (a few steps)
        above[live] |= own[a[live]]
        a[live] = rec.parent[a[live]]
    return own, above


def _closest(ga, eta_a, phi_a, gb, eta_b, phi_b, max_dr) -> np.ndarray:
    """For each a, the index of the closest b of its group with ΔR < max_dr (per b), else -1."""
    i, j = cross(ga, gb)
    dr = np.hypot(eta_a[i] - eta_b[j], wrap(phi_a[i] - phi_b[j]))
    ok = dr < np.broadcast_to(max_dr, eta_b.shape)[j]
    i, j, dr = i[ok], j[ok], dr[ok]
    order = np.lexsort((dr, i))
    i, j = i[order], j[order]
    first = np.r_[True, i[1:] != i[:-1]] if i.size else np.zeros(0, bool)
    out = np.full(ga.size, -1, np.int64)
    out[i[first]] = j[first]
    return out


# --------------------------------------------------------------------------------------------------
# jets and labels


def _cluster(rec: Record, above: np.ndarray) -> dict[str, np.ndarray]:
    """Anti-kt jets of each event's visible final state, pT > 20 GeV, |η| < 2.5, ordered by event."""
    import awkward as ak
    import fastjet

    apid = np.abs(rec.pid)
    prompt_lepton = np.isin(apid, (11, 13)) & ~(above & _HADRON).astype(bool)
    visible = (rec.status > 0) & ~np.isin(apid, (12, 14, 16)) & ~prompt_lepton
    ev = rec.event[visible]
    p = rec.p[visible]
    parts = ak.zip({"px": p[:, 0], "py": p[:, 1], "pz": p[:, 2], "E": p[:, 3]})
    parts = ak.unflatten(parts, np.bincount(ev, minlength=rec.n_events))
    found = fastjet.ClusterSequence(parts, fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R))
    jets = found.inclusive_jets(JET_PT_MIN)
    n = ak.to_numpy(ak.num(jets))
    jp = np.stack([ak.to_numpy(ak.flatten(jets[k])) for k in ("px", "py", "pz", "E")], axis=1)
    jp = jp.reshape(-1, 4)
    pt, eta, phi = kinematics(jp)
    keep = np.abs(eta) < JET_ETA_MAX
    event = np.repeat(np.arange(rec.n_events), n)
    mass = np.sqrt(np.maximum(jp[:, 3] ** 2 - (jp[:, :3] ** 2).sum(1), 0))
    return {"event": event[keep], "pt": pt[keep], "eta": eta[keep], "phi": phi[keep], "mass": mass[keep]}


def _truth_labels(rec: Record, own: np.ndarray, jets: dict[str, np.ndarray]) -> np.ndarray:
    """HadronConeExclTruthLabelID: b hadrons first, then c hadrons, then τ, each to its closest jet."""
    is_child = rec.parent >= 0
    child_flags = np.zeros_like(own)
    np.bitwise_or.at(child_flags, rec.parent[is_child], own[is_child])
    has_child = np.zeros(own.size, bool)
    has_child[rec.parent[is_child]] = True
    pt, eta, phi = kinematics(rec.p)
    label = np.zeros(jets["pt"].size, np.int32)
    for flag, value in ((_TAU, 15), (_C, 4), (_B, 5)):  # later, heavier labels overwrite
        # the weakly decaying ones: no hadron of the same flavour among the decay products
        final = (own & flag).astype(bool) & has_child & ~(child_flags & flag).astype(bool)
        final &= pt > LABEL_PT_MIN
        idx = np.flatnonzero(final)
        jet = _closest(rec.event[idx], eta[idx], phi[idx], jets["event"], jets["eta"], jets["phi"], LABEL_DR)
        label[jet[jet >= 0]] = value
    return label


# --------------------------------------------------------------------------------------------------
# tracks: association, detector response, selection


def _hits(rng: np.random.Generator, r_prod: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel/SCT hits and holes from the production radius; ``first_r`` = radius of the first hit."""
    m = r_prod.size
    crossed_pix = r_prod[:, None] < PIXEL_R[None, :] - 1.0
    hit_pix = crossed_pix & (rng.random((m, 4)) < HIT_EFF)
    overlap_pix = hit_pix & (rng.random((m, 4)) < OVERLAP)
    crossed_sct = r_prod[:, None] < SCT_R[None, :] - 1.0
    hit_sct = crossed_sct[:, :, None] & (rng.random((m, 4, 2)) < HIT_EFF)
    overlap_sct = crossed_sct & (rng.random((m, 4)) < OVERLAP)
    first_pix = np.where(hit_pix.any(1), PIXEL_R[np.argmax(hit_pix, 1)], np.inf)
    first_sct = np.where(hit_sct.any((1, 2)), SCT_R[np.argmax(hit_sct.any(2), 1)], np.inf)
    return {
        "hit_pix": hit_pix,
        "numberOfPixelHits": hit_pix.sum(1) + overlap_pix.sum(1),
        "numberOfSCTHits": hit_sct.sum((1, 2)) + 2 * overlap_sct.sum(1),
        "numberOfInnermostPixelLayerHits": hit_pix[:, 0].astype(int),
        "numberOfNextToInnermostPixelLayerHits": hit_pix[:, 1].astype(int),
        "numberOfPixelHoles": (crossed_pix & ~hit_pix).sum(1),
        "numberOfSCTHoles": (crossed_sct[:, :, None] & ~hit_sct).sum((1, 2)),
        "first_r": np.minimum(first_pix, first_sct),
    }


def _shared(rng, jet, eta, phi, r_prod, hit_pix) -> dict[str, np.ndarray]:
    """Shared/split pixel clusters: two tracks of a jet closer than MERGE_MM on a layer where both hit."""
    order = np.argsort(jet, kind="stable")
    i, j = cross(jet[order], jet[order])
    i, j = order[i], order[j]
    i, j = i[i != j], j[i != j]
    dr = np.hypot(eta[i] - eta[j], wrap(phi[i] - phi[j]))
    # their distance on layer L grows from where the later-produced one starts
    gap = (PIXEL_R[None, :] - np.maximum(r_prod[i], r_prod[j])[:, None]) * dr[:, None]
    close = (gap < MERGE_MM) & hit_pix[i] & hit_pix[j]
    merged = np.zeros(hit_pix.shape, bool)
    np.logical_or.at(merged, i, close)
    split = merged & (rng.random(merged.shape) < P_SPLIT)
    shared = merged & ~split
    return {
        "numberOfPixelSharedHits": shared.sum(1),
        "numberOfPixelSplitHits": split.sum(1),
        "numberOfInnermostPixelLayerSharedHits": shared[:, 0].astype(int),
        "numberOfInnermostPixelLayerSplitHits": split[:, 0].astype(int),
        "numberOfSCTSharedHits": np.zeros(jet.size, int),  # strips 80 μm apart at r > 299 mm: negligible
    }


def _origin(above: np.ndarray) -> np.ndarray:
    """ftagTruthOriginLabel from the ancestry flags (InDetTrackTruthOriginTool's exclusive priority)."""
    b, c = (above & _B).astype(bool), (above & _C).astype(bool)
    return np.select(
        [b & ~c, b & c, c, (above & _TAU).astype(bool), (above & _LONG).astype(bool)],
        [FROM_B, FROM_BC, FROM_C, FROM_TAU, OTHER],
        PRIMARY,
    )


def _vertex_index(jet: np.ndarray, pt: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per jet, in increasing track pT: 0 near the primary vertex, else the first seen vertex within
    0.1 mm, else a new index (TrackTruthDecoratorAlg's numbering, restricted to the jet)."""
    out = np.zeros(jet.size, np.int64)
    displaced = np.linalg.norm(v, axis=1) >= VERTEX_MERGE_MM
    for k in np.unique(jet[displaced]).tolist():
        idx = np.flatnonzero((jet == k) & displaced)
        seen: list[np.ndarray] = []
        for t in idx[np.argsort(pt[idx], kind="stable")].tolist():
            near = [s for s, pos in enumerate(seen) if np.linalg.norm(v[t] - pos) < VERTEX_MERGE_MM]
            if near:
                out[t] = near[0] + 1
            else:
                seen.append(v[t])
                out[t] = len(seen)
    return out


def _tracks(rng, rec: Record, above: np.ndarray, jets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Measured, selected tracks of the jets: flat arrays with ``jet`` (index into ``jets``)."""
    pt_t, eta_t, phi_t = kinematics(rec.p)
    cand = np.flatnonzero(
        (rec.status > 0) & (rec.charge != 0) & (pt_t > TRK_PT_MIN) & (np.abs(eta_t) < TRK_ETA_MAX + 0.1)
    )
    cone = 0.239 + np.exp(-1.22 - 1.64e-5 * jets["pt"] * 1e3)
    jet = _closest(rec.event[cand], eta_t[cand], phi_t[cand], jets["event"], jets["eta"], jets["phi"], cone)
    cand, jet = cand[jet >= 0], jet[jet >= 0]
    m = cand.size
    p, v, q = rec.p[cand], rec.v[cand], rec.charge[cand]
    pt, phi = pt_t[cand], phi_t[cand]
    sin_t = pt / np.linalg.norm(p[:, :3], axis=1)
    theta = np.arctan2(pt, p[:, 2])
    r_prod = np.hypot(v[:, 0], v[:, 1])

    hits = _hits(rng, r_prod)
    # ---- truth impact parameters: straight line from the production vertex, PV at the origin
    d0_true = (v[:, 1] * p[:, 0] - v[:, 0] * p[:, 1]) / pt
    z0_true = v[:, 2] - (v[:, 0] * p[:, 0] + v[:, 1] * p[:, 1]) / pt * (p[:, 2] / pt)
    # ---- resolutions (pT in GeV), worse when the first hit is further out
    lever = np.maximum(hits["first_r"] / PIXEL_R[0], 1.0)
    lever = np.where(np.isfinite(lever), lever, 10.0)
    sqrt_s = np.sqrt(sin_t)
    sigma_d0 = np.hypot(0.010, 0.070 / (pt * sqrt_s)) * lever
    sigma_z0 = np.hypot(0.020, 0.090 / (pt * sqrt_s)) * lever
    sigma_phi = np.hypot(7e-5, 1.0e-3 / (pt * sqrt_s))
    sigma_theta = np.hypot(1.5e-4, 1.0e-3 / pt) * sin_t
    p_mev = np.linalg.norm(p[:, :3], axis=1) * 1e3
    qop_true = q / p_mev
    sigma_qop = np.abs(qop_true) * np.hypot(0.012, 5e-4 * pt)
    tails = np.where(rng.random(m) < TAIL_FRAC, TAIL_SCALE, 1.0)
    gauss = rng.standard_normal((m, 5))
    d0 = d0_true + sigma_d0 * tails * gauss[:, 0]
    z0s = z0_true * sin_t + sigma_z0 * tails * gauss[:, 1]
    phi_m = wrap(phi + sigma_phi * gauss[:, 2])
    theta_m = np.clip(theta + sigma_theta * gauss[:, 3], 1e-3, np.pi - 1e-3)
    qop = qop_true + sigma_qop * gauss[:, 4]
    eta_m = -np.log(np.tan(theta_m / 2))
    pt_m = np.sin(theta_m) / np.maximum(np.abs(qop), 1e-12)  # MeV
    jet_eta, jet_phi = jets["eta"][jet], jets["phi"][jet]
    sd0 = np.abs(d0) / sigma_d0 * np.where(d0 * np.sin(jet_phi - phi_m) >= 0, 1, -1)
    sz0 = np.abs(z0s) / sigma_z0 * np.where(z0s * (jet_eta - eta_m) >= 0, 1, -1)

    values = {
        "jet": jet,
        "d0": d0,
        "z0SinTheta": z0s,
        "dphi": wrap(phi_m - jet_phi),
        "deta": eta_m - jet_eta,
        "qOverP": qop,
        "IP3D_signed_d0_significance": sd0,
        "IP3D_signed_z0_significance": sz0,
        "phiUncertainty": sigma_phi,
        "thetaUncertainty": sigma_theta,
        "qOverPUncertainty": sigma_qop,
        "pt": pt_m,
        "eta": eta_m,
        **{k: h for k, h in hits.items() if k.startswith("number")},
        **_shared(rng, jet, eta_t[cand], phi, r_prod, hits["hit_pix"]),
        "ftagTruthOriginLabel": _origin(above[cand]),
    }
    si_hits = values["numberOfPixelHits"] + values["numberOfSCTHits"]
    keep = (
        (pt_m > TRK_PT_MIN * 1e3)
        & (np.abs(eta_m) < TRK_ETA_MAX)
        & (np.abs(d0) < D0_MAX)
        & (np.abs(z0s) < Z0_MAX)
        & (si_hits >= MIN_SI_HITS)
        & (values["numberOfPixelHoles"] + values["numberOfSCTHoles"] <= MAX_SI_HOLES)
        & (values["numberOfPixelHoles"] <= MAX_PIX_HOLES)
    )
    out = {k: x[keep] for k, x in values.items()}
    out["ftagTruthVertexIndex"] = _vertex_index(jet[keep], pt[keep], v[keep])  # over the selected tracks
    return out


# --------------------------------------------------------------------------------------------------
# one batch of events -> jets and tracks arrays


def _pack(
    rng, jets: dict[str, np.ndarray], label: np.ndarray, trk: dict[str, np.ndarray], first_event: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``jets`` [n] and ``tracks`` [n, 40] structured arrays (make_synthetic's dtypes)."""
    n = label.size
    order = np.lexsort((-np.abs(trk["IP3D_signed_d0_significance"]), trk["jet"]))
    jet = trk["jet"][order]
    start = np.r_[0, np.cumsum(np.bincount(jet, minlength=n))[:-1]]
    slot = np.arange(jet.size) - start[jet]
    keep = slot < MAX_TRACKS
    rows, cols, src = jet[keep], slot[keep], order[keep]

    tracks = np.zeros((n, MAX_TRACKS), TRACK_DTYPE)
    for name in TRACK_DTYPE.names:
        dt = TRACK_DTYPE[name]
        if name == "valid":
            continue
        col = np.full((n, MAX_TRACKS), np.nan if dt.kind == "f" else (-1 if dt.kind == "i" else 0), dt)
        x = trk[name][src]
        col[rows, cols] = np.clip(x, 0, 255) if dt == np.uint8 else x
        tracks[name] = col
    tracks["valid"][rows, cols] = True

    flavour = np.select([label == 5, label == 4, label == 15], [0, 1, 3], 2)
    pt = jets["pt"]
    resolution = np.sqrt((3.0 / pt) ** 2 + 0.7**2 / pt + 0.04**2)  # noise, stochastic, constant terms
    pt_reco = pt * np.maximum(1 + resolution * rng.standard_normal(n), 0.3) * 1e3  # MeV
    out = np.zeros(n, JET_DTYPE)
    out["pt"] = out["pt_btagJes"] = pt_reco
    out["eta"] = out["eta_btagJes"] = jets["eta"]
    out["abs_eta"] = np.abs(jets["eta"])
    out["mass"] = jets["mass"] * 1e3
    out["n_tracks"] = tracks["valid"].sum(1)
    out["HadronConeExclTruthLabelID"] = np.asarray(TRUTH_LABEL_ID)[flavour]
    out["flavour_label"] = flavour
    out["eventNumber"] = first_event + jets["event"]
    return out, tracks


class Generator:
    """A seeded Pythia tt̄ generator plus the jet/track reconstruction (one per process)."""

    def __init__(self, seed: int, rng_seed: tuple[int, ...]):
        require_generators()
        import pythia8mc

        self.pythia = pythia8mc.Pythia("", False)
        for line in (*PYTHIA_SETTINGS, f"Random:seed = {int(seed)}"):
            if not self.pythia.readString(line):
                raise ValueError(f"Pythia rejected the setting {line!r}")
        if not self.pythia.init():
            raise RuntimeError("Pythia failed to initialise (see its output)")
        self.rng = np.random.default_rng(list(rng_seed))
        self._cache: dict[int, tuple[float, float]] = {}
        self.events = 0

    def batch(self, n_events: int = BATCH_EVENTS, first_event: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rec = record(self.pythia.nextBatch(n_events), self.pythia.particleData, self._cache)
        own, above = _ancestry(rec)
        jets = _cluster(rec, above)
        label = _truth_labels(rec, own, jets)
        trk = _tracks(self.rng, rec, above, jets)
        self.events += rec.n_events
        return _pack(self.rng, jets, label, trk, first_event)


# --------------------------------------------------------------------------------------------------
# parallel production


def _append(ds: h5py.Dataset, x: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(x), axis=0)
    ds[n:] = x


def _work(seed: int, worker: int, n_jets: int, path: str, messages) -> None:
    """One worker: make ``n_jets`` jets into the part file ``path``, reporting progress on ``messages``."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Pythia/FastJet banners and warnings: not the tqdm bar
        os.dup2(devnull, 1)
        pythia_seed, rng_seed = seeds(seed, worker)
        gen = Generator(pythia_seed, rng_seed)
        first_event = (seed * 1000 + worker) * 100_000_000
        done = 0
        with h5py.File(path, "w", locking=False) as f:
            jets = f.create_dataset("jets", (0,), JET_DTYPE, maxshape=(None,), chunks=(1024,))
            tracks = f.create_dataset(
                "tracks", (0, MAX_TRACKS), TRACK_DTYPE, maxshape=(None, MAX_TRACKS), chunks=(256, MAX_TRACKS)
            )
            while done < n_jets:
                j, t = gen.batch(BATCH_EVENTS, first_event + gen.events)
                take = min(len(j), n_jets - done)
                _append(jets, j[:take])
                _append(tracks, t[:take])
                done += take
                messages.put(("progress", worker, take))
            f.attrs["n_events"] = gen.events
        messages.put(("done", worker, (gen.events, time.process_time())))
    except BaseException:
        messages.put(("error", worker, traceback.format_exc()))


def _merge(parts: list[Path], out: Path, n_jets: int, attrs: dict) -> None:
    """Copy the part files, in order, into one contiguous file (as make_synthetic writes it)."""
    with h5py.File(out, "w", locking=False) as f:
        jets = f.create_dataset("jets", (n_jets,), JET_DTYPE)
        jets.attrs["flavour_label"] = list(FLAVOUR_NAMES)
        tracks = f.create_dataset("tracks", (n_jets, MAX_TRACKS), TRACK_DTYPE)
        at = 0
        for part in parts:
            if not part.exists():
                continue
            with h5py.File(part, "r", locking=False) as src:
                n = src["jets"].shape[0]
                for a in range(0, n, 50_000):
                    b = min(a + 50_000, n)
                    jets[at + a : at + b] = src["jets"][a:b]
                    tracks[at + a : at + b] = src["tracks"][a:b]
                at += n
        if at != n_jets:
            raise RuntimeError(f"the workers made {at} jets, expected {n_jets}")
        f.attrs.update(attrs)


def make(
    path: str | os.PathLike, n_jets: int, seed: int = 0, *, workers: int = 1, progress: bool = True
) -> Path:
    """Generate ``n_jets`` jets from Pythia tt̄ events with ``workers`` processes into one HDF5 file.

    The file is written atomically (parts in a temporary folder next to it, merged under a temporary
    name, then renamed); its attributes record the generator, seed, workers, events and seconds.
    """
    n_jets, workers, seed = int(n_jets), int(workers), int(seed)
    if n_jets < 1:
        raise ValueError(f"n_jets must be at least 1, not {n_jets}")
    if not 1 <= workers < 1000:  # eventNumber holds the worker in 3 digits
        raise ValueError(f"workers must be in [1, 1000), not {workers}")
    if not 0 <= seed < 9_000_000:
        raise ValueError(f"seed must be in [0, 9000000), not {seed}")
    require_generators()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp_dir = path.with_name(f".{path.name}.{tag}.parts")
    tmp = path.with_name(f".{path.name}.{tag}.tmp")
    tmp_dir.mkdir()
    try:
        shares = workers_mod.shares(n_jets, workers)
        parts = [tmp_dir / f"part-{k:03d}.h5" for k in range(workers)]
        t0 = time.perf_counter()
        args = {k: (seed, k, n, str(parts[k])) for k, n in enumerate(shares) if n > 0}
        events, cpu = workers_mod.run(
            _work, args, n_jets, unit="jet", desc="pythia tt̄", progress=progress, name="ftag-pythia"
        )
        seconds = time.perf_counter() - t0
        attrs = {
            "generator": f"smilejax.models.gn2.make_pythia v{VERSION} (pythia8mc tt̄ 13 TeV, anti-kt 0.4)",
            "seed": seed,
            "workers": workers,
            "n_jets": n_jets,
            "n_events": events,
            "seconds": seconds,
            "cpu_seconds": cpu,  # of the workers, start-up included: jets per CPU-second = speed per core
        }
        _merge(parts, tmp, n_jets, attrs)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if tmp.exists():
            tmp.unlink()
    log.info(
        "ftag_pythia: %d jets from %d events in %.1f s (%.0f jets/s, %d workers, %.0f jets per CPU-s) -> %s",
        n_jets,
        events,
        seconds,
        n_jets / seconds,
        workers,
        n_jets / max(cpu, 1e-9),
        path,
    )
    return path
