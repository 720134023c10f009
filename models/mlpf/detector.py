"""The fast, parametrised CLIC-like detector behind ``make_pythia``'s events (its targets and the PF
baseline: ``pf_targets``).

* detector (CLIC-like, B = 4 T along z, mm, GeV, ns):

  - tracks: charged particles with pT > 0.2 GeV, |η| < 2.5, produced within r < 554 mm, |z| < 1 m, and at
    least 4 barrel layers (r = 31 .. 1486 mm) between their production radius and the helix's largest
    radius; efficiency 99 % (92 % when produced beyond 60 mm, ×0.96 below 0.5 GeV). Resolutions
    σ(pT)/pT = 2e-5 pT ⊕ 2e-3/√sinθ (worse with fewer hits), σ(φ) = σ(θ) = 2e-5 ⊕ 1e-3/p,
    σ(d0) = 5 μm ⊕ 15 μm/(p sin^1.5 θ), σ(z0) = 7 μm ⊕ 20 μm/(p sin^1.5 θ), scaled by the radius of the
    first hit over 31 mm. Columns as key4hep fills them (``TRACK_FEATURES``): pT from ω (pT = 1.2e-3/|ω|),
    D0/Z0 of the straight line from the production vertex (LCIO signs), tanλ, χ² ~ χ²(ndf) with
    ndf = 2 hits - 5, dE/dx in GeV/mm from a Bethe-like βγ curve (7 % resolution), radius of the first
    layer hit (forward tracks: their first vertex disk at |z| = 160 mm), time = |production vertex|/c.
  - calorimeter: each visible particle that reaches the ECAL surface (barrel r = 1500 mm, endcap
    |z| = 2307 mm, endcap hole r < 260 mm; charged particles follow their helix from the production
    vertex, so soft ones curl up and leave nothing) makes one deposit: photons and electrons all in the
    ECAL (15 %/√E ⊕ 1 %); hadrons, neutral and charged, shower in both (ECAL fraction ~ Beta(1, 2.5),
    total 50 %/√E ⊕ 5 %); muons a MIP (0.2 GeV ECAL, 1.5 GeV HCAL). Energies are log-normal around the
    truth (never negative). Deposits link when closer than 0.015 rad (both electromagnetic) or 0.05 rad
    (otherwise) and each connected group is one cluster (a friends-of-friends clustering, which also
    merges a charged shower with a nearby photon, as PF confusion does); clusters under 0.1 GeV are
    dropped. Cluster columns (``CLUSTER_FEATURES``): energy-weighted position of the ECAL (60 mm deep)
    and HCAL (400 mm into the HCAL) shower centres, iTheta, η, et = E sinθ, ECAL/HCAL energies
    (energy_other 0), number of hits ~ Poisson(1 + 40/GeV ECAL + 15/GeV HCAL), energy-weighted spreads.

"""

from __future__ import annotations

import numpy as np
from smilejax.generators.pythia import cross, kinematics, wrap

Arrays = dict[str, np.ndarray]

MASS = {211: 0.13957, 11: 0.000511, 13: 0.10566}  # GeV, candidate masses per class

# tracker (mm, GeV)
C_B = 0.3 * 4.0 * 1e-3  # pT [GeV] = C_B * radius of curvature [mm] in 4 T
LAYERS_R = np.array([31.0, 33.0, 44.0, 46.0, 58.0, 60.0, 127.0, 340.0, 554.0, 819.0, 1153.0, 1486.0])
VXD_HALF_Z, VXD_DISK_Z = 130.0, 160.0
TRK_PT_MIN, TRK_ETA_MAX, TRK_R_MAX, TRK_Z_MAX, TRK_MIN_HITS = 0.2, 2.5, 554.0, 1000.0, 4
TRK_EFF, TRK_EFF_DISPLACED, TRK_EFF_SOFT = 0.99, 0.92, 0.96
DEDX_MIP, DEDX_RES = 2.8e-4, 0.07  # GeV/mm in silicon, relative
C_MM_PER_NS = 299.792458

# calorimeters (mm, GeV)
R_ECAL, Z_ECAL, R_ECAL_HOLE, R_HCAL, Z_HCAL = 1500.0, 2307.0, 260.0, 1740.0, 2450.0
ECAL_DEPTH, HCAL_DEPTH = 60.0, 400.0  # shower centres behind each front face
ECAL_RES, HCAL_RES = (0.15, 0.01), (0.50, 0.05)  # stochastic, constant
MU_ECAL, MU_HCAL = 0.2, 1.5
EM_LINK, HAD_LINK = 0.015, 0.05  # rad: deposits closer than this form one cluster
CLUSTER_E_MIN = 0.1
SPREAD_ECAL, SPREAD_HCAL = 15.0, 80.0  # intrinsic lateral shower size (mm)

HAD_ECAL_A, HAD_ECAL_B = 1.0, 2.5  # a hadron's ECAL share of its shower ~ Beta(a, b)


# --------------------------------------------------------------------------------------------------
# geometry


def _calo_entry(p3: np.ndarray, v: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each particle enters the ECAL: (position [n, 3], reaches, barrel); helices in 4 T along z."""
    px, py, pz = p3[:, 0], p3[:, 1], p3[:, 2]
    pt = np.maximum(np.hypot(px, py), 1e-9)
    phi0 = np.arctan2(py, px)
    charged = q != 0
    rc = np.where(charged, pt / C_B, 1.0)  # radius of curvature (mm)
    s = -np.sign(q)  # turning direction: positive charges turn clockwise in +z field
    # transverse path length to the barrel, straight lines ...
    b = v[:, 0] * np.cos(phi0) + v[:, 1] * np.sin(phi0)
    t_line = -b + np.sqrt(np.maximum(b**2 - (v[:, 0] ** 2 + v[:, 1] ** 2 - R_ECAL**2), 0.0))
    # ... and helices: |centre + s rc (sin ψ, -cos ψ)| = R with ψ = φ0 + s a, a the turning angle
    cx, cy = v[:, 0] - s * rc * np.sin(phi0), v[:, 1] + s * rc * np.cos(phi0)
    d = np.maximum(np.hypot(cx, cy), 1e-9)
    k = (R_ECAL**2 - d**2 - rc**2) / (2 * np.where(charged, s, 1.0) * rc * d)
    beta = np.arctan2(cy, cx)
    with np.errstate(invalid="ignore"):
        asin = np.arcsin(np.clip(k, -1, 1))
    turns = [np.mod(s * (beta + psi - phi0), 2 * np.pi) for psi in (asin, np.pi - asin)]
    t_helix = np.where(np.abs(k) <= 1, rc * np.minimum(*turns), np.inf)
    t_barrel = np.where(charged, t_helix, t_line)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_endcap = np.where(pz != 0, (np.sign(pz) * Z_ECAL - v[:, 2]) * pt / pz, np.inf)
    barrel = t_barrel <= t_endcap
    t = np.minimum(t_barrel, t_endcap)
    t_finite = np.where(np.isfinite(t), t, 0.0)
    a = t_finite / rc
    bend_x = s * rc * (np.sin(phi0 + s * a) - np.sin(phi0))
    bend_y = -s * rc * (np.cos(phi0 + s * a) - np.cos(phi0))
    x = v[:, 0] + np.where(charged, bend_x, t_finite * np.cos(phi0))
    y = v[:, 1] + np.where(charged, bend_y, t_finite * np.sin(phi0))
    z = v[:, 2] + t_finite * pz / pt
    reaches = np.isfinite(t) & (barrel | (np.hypot(x, y) >= R_ECAL_HOLE))
    return np.stack([x, y, z], axis=1), reaches, barrel


def _lognormal(rng: np.random.Generator, sigma: np.ndarray, size: int) -> np.ndarray:
    """Multiplicative response with mean 1 and relative width ``sigma`` (positive, Gaussian when small)."""
    s = np.sqrt(np.log1p(sigma**2))
    return np.exp(s * rng.standard_normal(size) - s**2 / 2)


def resolution(terms: tuple[float, float], e: np.ndarray) -> np.ndarray:
    """Relative energy resolution ``stochastic/√E ⊕ constant`` of ``terms`` at energies ``e``."""
    return np.hypot(terms[0] / np.sqrt(np.maximum(e, 1e-6)), terms[1])


def _eta_phi(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """θ, η, φ of [n, 3] positions or momenta."""
    r = np.hypot(x[:, 0], x[:, 1])
    theta = np.arctan2(r, x[:, 2])
    return theta, np.arcsinh(x[:, 2] / np.maximum(r, 1e-9)), np.arctan2(x[:, 1], x[:, 0])


# --------------------------------------------------------------------------------------------------
# detector: tracks, deposits, clusters


def tracks(rng: np.random.Generator, ev, p, v, q) -> Arrays:
    """Reconstructed tracks of the visible particles: ``idx`` (into them), ``X`` [m, 16] and what the
    baseline needs (measured kinematics, charge, direction of the calorimeter entry)."""
    pt, eta, phi = kinematics(p)
    r_prod = np.hypot(v[:, 0], v[:, 1])
    cand = np.flatnonzero(
        (q != 0)
        & (pt > TRK_PT_MIN)
        & (np.abs(eta) < TRK_ETA_MAX)
        & (r_prod < TRK_R_MAX)
        & (np.abs(v[:, 2]) < TRK_Z_MAX)
    )
    pt, phi, r_prod = pt[cand], phi[cand], r_prod[cand]
    pc, vc, qc = p[cand], v[cand], q[cand]
    # barrel layers between the production radius and the helix's largest radius
    rc = pt / C_B
    s = -np.sign(qc)
    r_max = np.hypot(vc[:, 0] - s * rc * np.sin(phi), vc[:, 1] + s * rc * np.cos(phi)) + rc
    crossed = (LAYERS_R[None, :] > r_prod[:, None]) & (LAYERS_R[None, :] < r_max[:, None])
    n_hits = crossed.sum(1)
    eff = np.where(r_prod < 60.0, TRK_EFF, TRK_EFF_DISPLACED) * np.where(pt < 0.5, TRK_EFF_SOFT, 1.0)
    keep = (n_hits >= TRK_MIN_HITS) & (rng.random(cand.size) < eff)
    cand, pt, phi, r_prod, pc, vc, qc, n_hits = (x[keep] for x in (cand, pt, phi, r_prod, pc, vc, qc, n_hits))
    m = cand.size
    g = rng.standard_normal((m, 6))

    p_abs = np.linalg.norm(pc[:, :3], axis=1)
    sin_t = pt / p_abs
    theta = np.arctan2(pt, pc[:, 2])
    rel_pt = np.hypot(2e-5 * pt, 2e-3 / np.sqrt(sin_t)) * (LAYERS_R.size / n_hits)
    omega = np.sign(qc) * C_B / pt * (1 + rel_pt * g[:, 0])  # LCIO: 1/mm, the sign of the charge
    pt_m = C_B / np.abs(omega)
    sigma_ang = np.hypot(2e-5, 1e-3 / p_abs)
    phi_m = wrap(phi + sigma_ang * g[:, 1])
    theta_m = np.clip(theta + sigma_ang * g[:, 2], 1e-3, np.pi - 1e-3)
    tan_l = 1 / np.tan(theta_m)
    p_m = pt_m * np.sqrt(1 + tan_l**2)
    eta_m = np.arcsinh(tan_l)

    first = np.argmax(LAYERS_R[None, :] > r_prod[:, None], axis=1)
    r_first = LAYERS_R[first]
    forward = (first < 6) & (np.abs(tan_l) * r_first > VXD_HALF_Z)
    r_first = np.where(forward, np.maximum(np.minimum(VXD_DISK_Z / np.abs(tan_l), r_first), r_prod), r_first)
    lever = np.maximum(r_first / LAYERS_R[0], 1.0)
    sin15 = sin_t**1.5
    sigma_d0 = np.hypot(5e-3, 15e-3 / (p_abs * sin15)) * lever
    sigma_z0 = np.hypot(7e-3, 20e-3 / (p_abs * sin15)) * lever
    # straight line from the production vertex; LCIO: the point of closest approach is d0 (-sin φ, cos φ)
    d0 = vc[:, 1] * np.cos(phi) - vc[:, 0] * np.sin(phi) + sigma_d0 * g[:, 3]
    z0 = vc[:, 2] - (vc[:, 0] * np.cos(phi) + vc[:, 1] * np.sin(phi)) * pc[:, 2] / pt + sigma_z0 * g[:, 4]

    mass = np.sqrt(np.maximum(pc[:, 3] ** 2 - p_abs**2, 0.0))
    bg = p_abs / np.maximum(mass, 1e-6)
    beta2 = bg**2 / (1 + bg**2)
    dedx = DEDX_MIP / beta2 * (1 + 0.12 * np.log10(np.maximum(bg / 4, 1.0))) * (1 + DEDX_RES * g[:, 5])
    ndf = 2 * n_hits - 5
    chi2 = rng.chisquare(ndf)
    time_ns = np.linalg.norm(vc, axis=1) / C_MM_PER_NS

    X = np.stack(
        [
            np.ones(m), pt_m, eta_m, np.sin(phi_m), np.cos(phi_m), p_m, chi2, ndf, dedx, DEDX_RES * dedx,
            r_first, tan_l, d0, omega, z0, time_ns,
        ],
        axis=1,
    )  # fmt: skip
    # calorimeter entry of the fitted helix, from its point of closest approach
    start = np.stack([-d0 * np.sin(phi_m), d0 * np.cos(phi_m), z0], axis=1)
    p3 = np.stack([pt_m * np.cos(phi_m), pt_m * np.sin(phi_m), pt_m * tan_l], axis=1)
    entry, reaches, _ = _calo_entry(p3, start, np.sign(omega))
    return {
        "idx": cand,
        "event": ev[cand],
        "X": X,
        "p": p_m,
        "charge": np.sign(omega),
        "pt": pt_m,
        "eta": eta_m,
        "phi": phi_m,
        "reaches": reaches,
        "entry": entry / np.linalg.norm(entry, axis=1, keepdims=True),
    }


def deposits(rng: np.random.Generator, ev, pid, p, v, q) -> Arrays:
    """One calorimeter deposit per visible particle that reaches the ECAL: ECAL/HCAL energy and centres."""
    entry, reaches, barrel = _calo_entry(p[:, :3], v, q)
    idx = np.flatnonzero(reaches)
    entry, barrel = entry[idx], barrel[idx]
    m = idx.size
    apid = np.abs(pid[idx])
    e = p[idx, 3]
    em = np.isin(apid, (11, 22))
    mu = apid == 13
    had = ~em & ~mu
    e_em = e * _lognormal(rng, resolution(ECAL_RES, e), m)
    e_had = e * _lognormal(rng, resolution(HCAL_RES, e), m)
    frac = rng.beta(HAD_ECAL_A, HAD_ECAL_B, m)
    mip = np.clip((e - MASS[13]) / 2.0, 0.0, 1.0) * _lognormal(rng, np.full(m, 0.15), m)
    e_ecal = np.select([em, had], [e_em, frac * e_had], MU_ECAL * mip)
    e_hcal = np.select([em, had], [np.zeros(m), (1 - frac) * e_had], MU_HCAL * mip)
    # shower centres on the ray through the entry point, jittered by the position resolution
    ecal_scale = np.where(barrel, (R_ECAL + ECAL_DEPTH) / R_ECAL, (Z_ECAL + ECAL_DEPTH) / Z_ECAL)
    hcal_scale = np.where(barrel, (R_HCAL + HCAL_DEPTH) / R_ECAL, (Z_HCAL + HCAL_DEPTH) / Z_ECAL)
    jitter_e = (1.0 + 3.0 / np.sqrt(np.maximum(e_ecal, 0.01)))[:, None] * rng.standard_normal((m, 3))
    jitter_h = (5.0 + 20.0 / np.sqrt(np.maximum(e_hcal, 0.01)))[:, None] * rng.standard_normal((m, 3))
    ecal_pos = entry * ecal_scale[:, None] + jitter_e
    hcal_pos = entry * hcal_scale[:, None] + jitter_h
    total = np.maximum(e_ecal + e_hcal, 1e-12)  # a muon at rest deposits nothing
    centre = (e_ecal[:, None] * ecal_pos + e_hcal[:, None] * hcal_pos) / total[:, None]
    return {
        "idx": idx,
        "event": ev[idx],
        "e_ecal": e_ecal,
        "e_hcal": e_hcal,
        "ecal_pos": ecal_pos,
        "hcal_pos": hcal_pos,
        "unit": centre / np.linalg.norm(centre, axis=1, keepdims=True),  # measured direction
        "em": e_ecal > 0.7 * (e_ecal + e_hcal),
    }


def clusters(rng: np.random.Generator, dep: Arrays) -> Arrays:
    """Friends-of-friends clusters of the deposits (sets ``dep["cluster"]``, -1 when dropped)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ev, n = dep["event"], dep["event"].size
    i, j = cross(ev, ev)
    i, j = i[i < j], j[i < j]
    cos = (dep["unit"][i] * dep["unit"][j]).sum(1)
    link = cos > np.cos(np.where(dep["em"][i] & dep["em"][j], EM_LINK, HAD_LINK))
    graph = coo_matrix((np.ones(int(link.sum())), (i[link], j[link])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    energy = np.bincount(label, dep["e_ecal"] + dep["e_hcal"], minlength=n)
    kept = energy[label] >= CLUSTER_E_MIN
    # number clusters by their first deposit: sorted by event like everything else
    first = np.full(n, n, np.int64)
    np.minimum.at(first, label[kept], np.flatnonzero(kept))
    ids = np.flatnonzero(first < n)
    new = np.full(n, -1, np.int64)
    new[ids[np.argsort(first[ids], kind="stable")]] = np.arange(ids.size)
    cluster = np.where(kept, new[label], -1)
    dep["cluster"] = cluster
    k = ids.size

    # ECAL and HCAL shower centres as weighted points
    inside = cluster >= 0
    pts = np.concatenate([dep["ecal_pos"][inside], dep["hcal_pos"][inside]])
    w = np.concatenate([dep["e_ecal"][inside], dep["e_hcal"][inside]])
    cl = np.concatenate([cluster[inside], cluster[inside]])
    spread = np.repeat([SPREAD_ECAL, SPREAD_HCAL], int(inside.sum()))
    e_ecal = np.bincount(cluster[inside], dep["e_ecal"][inside], minlength=k)
    e_hcal = np.bincount(cluster[inside], dep["e_hcal"][inside], minlength=k)
    energy = e_ecal + e_hcal
    pos = np.stack([np.bincount(cl, w * pts[:, a], minlength=k) for a in range(3)], 1) / energy[:, None]
    var = [np.bincount(cl, w * (spread**2 + (pts[:, a] - pos[cl, a]) ** 2), minlength=k) for a in range(3)]
    sigma = np.sqrt(np.stack(var, axis=1) / energy[:, None])
    theta, eta, phi = _eta_phi(pos)
    num_hits = 1 + rng.poisson(40.0 * e_ecal + 15.0 * e_hcal)
    X = np.stack(
        [
            np.full(k, 2.0), energy * np.sin(theta), eta, np.sin(phi), np.cos(phi), energy,
            pos[:, 0], pos[:, 1], pos[:, 2], theta, e_ecal, e_hcal, np.zeros(k), num_hits,
            sigma[:, 0], sigma[:, 1], sigma[:, 2],
        ],
        axis=1,
    )  # fmt: skip
    event = np.zeros(k, np.int64)
    event[cluster[inside]] = dep["event"][inside]
    return dict(event=event, X=X, energy=energy, e_ecal=e_ecal, theta=theta, eta=eta, phi=phi)
