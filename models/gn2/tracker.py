"""The tracks of ``make_pythia``'s jets: decay ancestry, the simple barrel detector, GN2's selection, and
the track truth labels.

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
  - selection as GN2's (athena's "r22 default track selection for flavour tagging GN2", e.g.
    ``DecoratePLIT::passed_r22tracking_cuts``): pT > 0.5 GeV, |η| < 2.5, |d0| < 3.5 mm (from the beam
    line), |z0 sinθ| < 5 mm (from the hard-scatter vertex), ≥ 8 silicon hits, ≤ 1 shared module (pixel
    shared hits + SCT shared hits / 2), ≤ 2 silicon holes, ≤ 1 pixel hole. Up to 40 tracks per jet,
    sorted by |d0|/σ(d0), descending (the dumper's ``absSd0sort``); valid tracks fill the first slots.
  - pile-up (``pileup``: particles of other interactions, vertices along the beam line) goes through the
    same detector and selection; fake tracks (``fakes``: already measured) through the selection only.

* track truth: ``ftagTruthOriginLabel`` from the decay ancestry with InDetTrackTruthOriginTool's exclusive
  priority: FromB (a b hadron, no c hadron), FromBC (c hadron from b), FromC, FromTau, OtherSecondary (a
  long-lived ancestor, cτ > 1 mm: K0S, Λ, Σ, Ξ, Ω), else Primary; Pileup and Fake for those tracks.
  ``ftagTruthVertexIndex`` as FlavorTagDiscriminants' TrackTruthDecoratorAlg numbers it, but over each
  jet's selected tracks (salt only compares indices within a jet), in increasing pT: 0 when the
  production vertex is within 0.1 mm of the primary vertex, else the index (1, 2, ...) of the first seen
  vertex within 0.1 mm, else a new index; -2 (the decorator's value for a track without a truth vertex:
  ATLAS samples keep no pile-up truth) for Pileup and Fake tracks.
"""

from __future__ import annotations

import numpy as np
from smilejax.generators.pythia import Record, cross, kinematics, wrap

from .make_synthetic import FAKE, FROM_B, FROM_BC, FROM_C, FROM_TAU, OTHER, PILEUP, PRIMARY

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
MIN_SI_HITS, MAX_SI_SHARED, MAX_SI_HOLES, MAX_PIX_HOLES = 8, 1, 2, 1
NO_TRUTH_VERTEX = -2  # ftagTruthVertexIndex of a track without a truth vertex (pile-up, fake)

B, C, TAU, LONG, HADRON = 1, 2, 4, 8, 16  # ancestry flags


# --------------------------------------------------------------------------------------------------
# event record: one Pythia batch as flat numpy arrays


def association_cone(jet_pt_gev: np.ndarray) -> np.ndarray:
    """ATLAS's pT-dependent track-to-jet association cone (ΔR): 0.45 at 20 GeV, 0.26 at 200 GeV."""
    return 0.239 + np.exp(-1.22 - 1.64e-5 * np.asarray(jet_pt_gev) * 1e3)


def heavy_quark(pid: np.ndarray) -> np.ndarray:
    """The heaviest quark of a hadron's PDG id (0 for non-hadrons and diquarks)."""
    a = np.abs(pid)
    q1, q2, q3 = (a // 1000) % 10, (a // 100) % 10, (a // 10) % 10
    hadron = (a > 100) & (a < 1_000_000) & (q3 > 0)
    return np.where(hadron, np.maximum(np.maximum(q1, q2), q3), 0)


def ancestry(rec: Record) -> tuple[np.ndarray, np.ndarray]:
    """(own flags, OR of the flags of all decay ancestors) per particle."""
    heavy = heavy_quark(rec.pid)
    own = (
        B * (heavy == 5)
        + C * (heavy == 4)
        + TAU * (np.abs(rec.pid) == 15)
        + LONG * ((heavy > 0) & (rec.tau0 > LONG_LIVED_MM))
        + HADRON * (heavy > 0)
    )
    above = np.zeros_like(own)
    a = rec.parent.copy()
    while (live := a >= 0).any():  # pointer jumping up the decay chains (a few steps)
        above[live] |= own[a[live]]
        a[live] = rec.parent[a[live]]
    return own, above


def closest(ga, eta_a, phi_a, gb, eta_b, phi_b, max_dr) -> np.ndarray:
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
# tracks: association, detector response, selection


def layer_hits(rng: np.random.Generator, r_prod: np.ndarray) -> dict[str, np.ndarray]:
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


def shared(rng, jet, eta, phi, r_prod, hit_pix) -> dict[str, np.ndarray]:
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


def origin(above: np.ndarray) -> np.ndarray:
    """ftagTruthOriginLabel from the ancestry flags (InDetTrackTruthOriginTool's exclusive priority)."""
    b, c = (above & B).astype(bool), (above & C).astype(bool)
    return np.select(
        [b & ~c, b & c, c, (above & TAU).astype(bool), (above & LONG).astype(bool)],
        [FROM_B, FROM_BC, FROM_C, FROM_TAU, OTHER],
        PRIMARY,
    )


def vertex_index(jet: np.ndarray, pt: np.ndarray, v: np.ndarray) -> np.ndarray:
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


def resolution(pt: np.ndarray, sin_t: np.ndarray, lever: np.ndarray) -> dict[str, np.ndarray]:
    """Track-parameter uncertainties (d0, z0 sinθ in mm; φ, θ in rad) from pT (GeV), sinθ and the lever
    (radius of the first hit over the IBL's)."""
    sqrt_s = np.sqrt(sin_t)
    return {
        "d0": np.hypot(0.010, 0.070 / (pt * sqrt_s)) * lever,
        "z0": np.hypot(0.020, 0.090 / (pt * sqrt_s)) * lever,
        "phi": np.hypot(7e-5, 1.0e-3 / (pt * sqrt_s)),
        "theta": np.hypot(1.5e-4, 1.0e-3 / pt) * sin_t,
    }


def signed_significances(d0, z0s, sigma_d0, sigma_z0, dphi, deta) -> tuple[np.ndarray, np.ndarray]:
    """IP3D lifetime-signed d0 and z0 sinθ significances (dphi = φ_trk - φ_jet, deta = η_trk - η_jet)."""
    sd0 = np.abs(d0) / sigma_d0 * np.where(d0 * np.sin(-dphi) >= 0, 1, -1)
    sz0 = np.abs(z0s) / sigma_z0 * np.where(z0s * -deta >= 0, 1, -1)
    return sd0, sz0


def selected(values: dict[str, np.ndarray]) -> np.ndarray:
    """GN2's track selection on measured values (MeV, mm)."""
    si_hits = values["numberOfPixelHits"] + values["numberOfSCTHits"]
    shared_modules = values["numberOfPixelSharedHits"] + values["numberOfSCTSharedHits"] // 2
    return (
        (values["pt"] > TRK_PT_MIN * 1e3)
        & (np.abs(values["eta"]) < TRK_ETA_MAX)
        & (np.abs(values["d0"]) < D0_MAX)
        & (np.abs(values["z0SinTheta"]) < Z0_MAX)
        & (si_hits >= MIN_SI_HITS)
        & (shared_modules <= MAX_SI_SHARED)
        & (values["numberOfPixelHoles"] + values["numberOfSCTHoles"] <= MAX_SI_HOLES)
        & (values["numberOfPixelHoles"] <= MAX_PIX_HOLES)
    )


def tracks(
    rng,
    rec: Record,
    above: np.ndarray,
    jets: dict[str, np.ndarray],
    *,
    pileup: np.ndarray | None = None,
    fakes: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Measured, selected tracks of the jets: flat arrays with ``jet`` (index into ``jets``).

    ``pileup``: per particle of ``rec``, True for particles of pile-up interactions (origin Pileup);
    ``fakes``: measured fake tracks (the keys of the result but the truth labels), selected like the rest.
    """
    pt_t, eta_t, phi_t = kinematics(rec.p)
    cand = np.flatnonzero(
        (rec.status > 0) & (rec.charge != 0) & (pt_t > TRK_PT_MIN) & (np.abs(eta_t) < TRK_ETA_MAX + 0.1)
    )
    cone = association_cone(jets["pt"])
    jet = closest(rec.event[cand], eta_t[cand], phi_t[cand], jets["event"], jets["eta"], jets["phi"], cone)
    cand, jet = cand[jet >= 0], jet[jet >= 0]
    m = cand.size
    p, v, q = rec.p[cand], rec.v[cand], rec.charge[cand]
    pt, phi = pt_t[cand], phi_t[cand]
    sin_t = pt / np.linalg.norm(p[:, :3], axis=1)
    theta = np.arctan2(pt, p[:, 2])
    r_prod = np.hypot(v[:, 0], v[:, 1])

    hits = layer_hits(rng, r_prod)
    # ---- truth impact parameters: straight line from the production vertex, PV at the origin
    d0_true = (v[:, 1] * p[:, 0] - v[:, 0] * p[:, 1]) / pt
    z0_true = v[:, 2] - (v[:, 0] * p[:, 0] + v[:, 1] * p[:, 1]) / pt * (p[:, 2] / pt)
    # ---- resolutions (pT in GeV), worse when the first hit is further out
    lever = np.maximum(hits["first_r"] / PIXEL_R[0], 1.0)
    lever = np.where(np.isfinite(lever), lever, 10.0)
    sigma = resolution(pt, sin_t, lever)
    sigma_d0, sigma_z0, sigma_phi, sigma_theta = sigma["d0"], sigma["z0"], sigma["phi"], sigma["theta"]
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
    sd0, sz0 = signed_significances(d0, z0s, sigma_d0, sigma_z0, wrap(phi_m - jet_phi), eta_m - jet_eta)

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
        **shared(rng, jet, eta_t[cand], phi, r_prod, hits["hit_pix"]),
        "ftagTruthOriginLabel": origin(above[cand]),
    }
    if pileup is not None:
        values["ftagTruthOriginLabel"] = np.where(pileup[cand], PILEUP, values["ftagTruthOriginLabel"])
    if fakes is not None:  # measured fakes: after the real tracks, same fields
        n_fake = fakes["jet"].size
        fakes = {**fakes, "ftagTruthOriginLabel": np.full(n_fake, FAKE)}
        values = {k: np.concatenate([x, np.asarray(fakes[k]).astype(x.dtype)]) for k, x in values.items()}
        pt, v = np.r_[pt, np.zeros(n_fake)], np.r_[v, np.zeros((n_fake, 3))]
    keep = selected(values)
    out = {k: x[keep] for k, x in values.items()}
    # over the selected tracks with a truth vertex (numbering as the dumper's, which sees no pile-up truth)
    truth = ~np.isin(out["ftagTruthOriginLabel"], (PILEUP, FAKE))
    vertex = np.full(truth.size, NO_TRUTH_VERTEX, np.int64)
    vertex[truth] = vertex_index(out["jet"][truth], pt[keep][truth], v[keep][truth])
    out["ftagTruthVertexIndex"] = vertex
    return out
