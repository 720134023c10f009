"""A TrackML-like silicon tracker: surfaces, module numbering, material, and helix propagation in a 2 T field.

Geometry (mm), volume and layer ids as the TrackML challenge's detector numbers them:

========  ===================  ==================================  ===========================
volume    part                 layers (id: r or |z|)               extent
========  ===================  ==================================  ===========================
8         pixel barrel         2: 32, 4: 72, 6: 116, 8: 172        |z| < 491
7 / 9     pixel endcap -z/+z   2..14: |z| 600 700 820 960 1100     30 < r < 176
                               1300 1500 (7: layer 2 at -1500)
13        short-strip barrel   2: 260, 4: 360, 6: 500, 8: 660      |z| < 1083
12 / 14   short-strip endcaps  2..12: |z| 1220 1500 1800 2150      230 < r < 700
                               2550 2950
17        long-strip barrel    2: 820, 4: 1020                     |z| < 1083
16 / 18   long-strip endcaps   2..12: same |z| as 12 / 14          720 < r < 1020
========  ===================  ==================================  ===========================

Surfaces are ideal cylinders and disks (TrackML's are flat, overlapping modules); a module is a cell of
a phi x z grid on a cylinder, or of a phi x ring grid on a disk, numbered from 1 per layer.
Field: uniform Bz = 2 T (positive charges turn clockwise seen from +z, i.e. phi decreases).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from smilejax.inputs.trackml.features import PITCH, THICKNESS

B_TESLA = 2.0
MM_PER_GEV = 1000.0 / (0.299792458 * B_TESLA)  # helix radius per GeV of pT (mm)
ENDCAP_Z = {
    "pixel": (600.0, 700.0, 820.0, 960.0, 1100.0, 1300.0, 1500.0),
    "strip": (1220.0, 1500.0, 1800.0, 2150.0, 2550.0, 2950.0),
}
X0_FRACTION = {8: 0.015, 7: 0.015, 9: 0.015, 13: 0.025, 12: 0.025, 14: 0.025, 17: 0.03, 16: 0.03, 18: 0.03}
BEAM_PIPE = (25.0, 0.003)  # radius (mm), thickness in radiation lengths: material only, no hits
OUTER_R, OUTER_Z = 1030.0, 3000.0


@dataclasses.dataclass(frozen=True)
class Surface:
    volume: int
    layer: int
    barrel: bool
    position: float  # r of a cylinder, z of a disk
    lo: float  # z range of a cylinder (-zmax, zmax) or r range of a disk
    hi: float
    n_phi: int  # modules around phi
    n_long: int  # modules along z (cylinder) or rings (disk)

    @property
    def modules(self) -> int:
        return self.n_phi * self.n_long


def _barrel(volume: int, radii, zmax: float, width: float, length: float) -> list[Surface]:
    out = []
    for k, r in enumerate(radii):
        n_phi = int(np.ceil(2 * np.pi * r / width))
        out.append(Surface(volume, 2 * (k + 1), True, r, -zmax, zmax, n_phi, int(np.ceil(2 * zmax / length))))
    return out


def _endcaps(neg: int, pos: int, zs, rmin: float, rmax: float, width: float, rings: int) -> list[Surface]:
    out = []
    n_phi = int(np.ceil(2 * np.pi * rmax / width))
    for k, z in enumerate(sorted(zs, reverse=True)):  # volume ``neg``: layer 2 is the farthest disk
        out.append(Surface(neg, 2 * (k + 1), False, -z, rmin, rmax, n_phi, rings))
    for k, z in enumerate(sorted(zs)):
        out.append(Surface(pos, 2 * (k + 1), False, z, rmin, rmax, n_phi, rings))
    return out


def surfaces() -> list[Surface]:
    return [
        *_barrel(8, (32.0, 72.0, 116.0, 172.0), 491.0, 16.8, 72.0),
        *_endcaps(7, 9, ENDCAP_Z["pixel"], 30.0, 176.0, 16.8, 2),
        *_barrel(13, (260.0, 360.0, 500.0, 660.0), 1083.0, 48.0, 108.0),
        *_endcaps(12, 14, ENDCAP_Z["strip"], 230.0, 700.0, 48.0, 4),
        *_barrel(17, (820.0, 1020.0), 1083.0, 96.0, 108.0),
        *_endcaps(16, 18, ENDCAP_Z["strip"], 720.0, 1020.0, 96.0, 3),
    ]


@dataclasses.dataclass(frozen=True)
class Tables:
    """The surfaces as arrays (index = surface number)."""

    volume: np.ndarray
    layer: np.ndarray
    barrel: np.ndarray
    position: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_phi: np.ndarray
    n_long: np.ndarray
    x0: np.ndarray  # radiation lengths at normal incidence
    pitch: np.ndarray  # [S, 2] cell size along (r·phi, z) or (r·phi, r)
    thickness: np.ndarray
    sigma: np.ndarray  # [S, 2] hit resolution: pitch / sqrt(12)


def tables() -> Tables:
    s = surfaces()
    vol = np.array([x.volume for x in s])
    pitch = np.array([PITCH[v] for v in vol], float)
    return Tables(
        volume=vol,
        layer=np.array([x.layer for x in s]),
        barrel=np.array([x.barrel for x in s]),
        position=np.array([x.position for x in s]),
        lo=np.array([x.lo for x in s]),
        hi=np.array([x.hi for x in s]),
        n_phi=np.array([x.n_phi for x in s]),
        n_long=np.array([x.n_long for x in s]),
        x0=np.array([X0_FRACTION[v] for v in vol]),
        pitch=pitch,
        thickness=np.array([THICKNESS[v] for v in vol], float),
        sigma=pitch / np.sqrt(12.0),
    )


def module_id(t: Tables, surface: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Module number (1-based within the layer) of points on their surfaces."""
    phi = np.arctan2(y, x)
    iphi = np.minimum((phi + np.pi) / (2 * np.pi) * t.n_phi[surface], t.n_phi[surface] - 1).astype(np.int64)
    along = np.where(t.barrel[surface], z, np.hypot(x, y))
    frac = (along - t.lo[surface]) / (t.hi[surface] - t.lo[surface])
    ilong = np.clip(frac * t.n_long[surface], 0, t.n_long[surface] - 1).astype(np.int64)
    return ilong * t.n_phi[surface] + iphi + 1


# ------------------------------------------------------------------------------------------- propagation


def helix_point(x0, y0, z0, phi0, omega, cot, s):
    """Position and azimuth after a transverse arc length ``s`` (omega = d phi / d s, cot = pz / pT)."""
    psi = phi0 + omega * s
    x = x0 + (np.sin(psi) - np.sin(phi0)) / omega
    y = y0 - (np.cos(psi) - np.cos(phi0)) / omega
    return x, y, z0 + cot * s, psi


def _cylinder_s(x0, y0, phi0, omega, radius):
    """Smallest transverse arc length > 0 at which the helix reaches ``radius`` ([n, S]; inf if never)."""
    r0sq = (x0**2 + y0**2)[:, None]
    xc = (x0 - np.sin(phi0) / omega)[:, None]
    yc = (y0 + np.cos(phi0) / omega)[:, None]
    w = omega[:, None]
    k = (radius**2 - r0sq) * w / 2 + (x0 * np.sin(phi0) - y0 * np.cos(phi0))[:, None] - 1 / w
    d = np.hypot(xc, yc)
    ratio = k / d
    ok = np.abs(ratio) <= 1
    a = np.arcsin(np.clip(ratio, -1, 1))
    beta = np.arctan2(yc, xc)
    period = 2 * np.pi / np.abs(w)
    out = np.full(ratio.shape, np.inf)
    for psi in (beta + a, beta + np.pi - a):
        s = np.mod((psi - phi0[:, None]) / w, period)
        s = np.where(s < 1e-6 * period, s + period, s)  # the surface the particle sits on
        out = np.minimum(out, np.where(ok, s, np.inf))
    return out


def _refine(x0, y0, phi0, omega, radius, s):
    """Two Newton steps on |xy(s)|^2 = R^2 (the arcsine loses precision for stiff tracks)."""
    for _ in range(2):
        psi = phi0 + omega * s
        x = x0 + (np.sin(psi) - np.sin(phi0)) / omega
        y = y0 - (np.cos(psi) - np.cos(phi0)) / omega
        f = x * x + y * y - radius * radius
        df = 2 * (x * np.cos(psi) + y * np.sin(psi))
        s = s - np.where(np.abs(df) > 1e-9, f / np.where(df == 0, 1, df), 0)
    return s


@dataclasses.dataclass
class Crossings:
    """Surface crossings of all particles, in the order each particle meets them."""

    particle: np.ndarray
    surface: np.ndarray
    pos: np.ndarray  # [n, 3] true position (mm)
    mom: np.ndarray  # [n, 3] momentum at the crossing, before scattering in it (GeV)


def _highland(p, mass, x0):
    beta = p / np.sqrt(p * p + mass * mass)
    x0 = np.maximum(x0, 1e-9)
    return 0.0136 / (beta * p) * np.sqrt(x0) * (1 + 0.038 * np.log(x0 / beta**2))


def _scatter(rng, mom, theta0):
    """Rotate momenta by two independent Gaussian angles of width theta0 (|p| kept)."""
    p = np.linalg.norm(mom, axis=1, keepdims=True)
    d = mom / p
    e1 = np.cross(d, np.array([0.0, 0.0, 1.0]))
    small = np.linalg.norm(e1, axis=1) < 1e-9
    e1[small] = np.array([1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(d, e1)
    g = rng.standard_normal((len(d), 2)) * theta0[:, None]
    d = d + g[:, :1] * e1 + g[:, 1:] * e2
    return d / np.linalg.norm(d, axis=1, keepdims=True) * p


def _step(rng, t: Tables, pos, mom, q, m, turned, alive, out, scattering: bool, max_turn: float) -> bool:
    """Move every live particle to its next surface (in place), record the crossing, scatter; False when
    none is left."""
    barrel_idx, disk_idx = np.flatnonzero(t.barrel), np.flatnonzero(~t.barrel)
    radii = np.r_[t.position[barrel_idx], BEAM_PIPE[0]]
    idx = np.flatnonzero(alive)
    if idx.size == 0:
        return False
    x0, y0, z0 = pos[idx].T
    px, py, pz = mom[idx].T
    pt = np.hypot(px, py)
    phi0, cot = np.arctan2(py, px), pz / pt
    omega = -np.sign(q[idx]) / (pt * MM_PER_GEV)
    s_cyl = _cylinder_s(x0, y0, phi0, omega, radii[None, :])
    zc = z0[:, None] + cot[:, None] * s_cyl
    in_z = np.r_[t.hi[barrel_idx], np.inf]
    s_cyl = np.where(np.abs(zc) <= in_z[None, :], s_cyl, np.inf)
    s_disk = (t.position[disk_idx][None, :] - z0[:, None]) / np.where(cot == 0, 1e-12, cot)[:, None]
    s_disk = np.where(s_disk > 1e-6, s_disk, np.inf)
    xd, yd, _, _ = helix_point(*(a[:, None] for a in (x0, y0, z0, phi0, omega, cot)), np.nan_to_num(s_disk))
    rd = np.hypot(xd, yd)
    s_disk = np.where((rd >= t.lo[disk_idx]) & (rd <= t.hi[disk_idx]), s_disk, np.inf)
    s_all = np.concatenate([s_cyl, s_disk], axis=1)
    k = np.argmin(s_all, axis=1)
    s = s_all[np.arange(idx.size), k]
    turn = turned[idx] + np.abs(omega) * s
    go = np.isfinite(s) & (turn <= max_turn)
    alive[idx[~go]] = False
    idx, k, s = idx[go], k[go], s[go]
    sel = (x0[go], y0[go], z0[go], phi0[go], omega[go], cot[go])
    is_cyl = k < radii.size
    s = np.where(is_cyl, _refine(sel[0], sel[1], sel[3], sel[4], radii[np.minimum(k, radii.size - 1)], s), s)
    x, y, z, psi = helix_point(*sel, s)
    turned[idx] += np.abs(sel[4]) * s
    pt_go = pt[go]
    new_mom = np.stack([pt_go * np.cos(psi), pt_go * np.sin(psi), pz[go]], axis=1)
    surface = np.where(
        is_cyl,
        np.r_[barrel_idx, -1][np.minimum(k, radii.size - 1)],
        disk_idx[np.maximum(k - radii.size, 0)],
    )
    pos[idx] = np.stack([x, y, z], axis=1)
    hit = surface >= 0
    out.append((idx[hit], surface[hit], pos[idx[hit]].copy(), new_mom[hit]))
    if scattering:
        p = np.linalg.norm(new_mom, axis=1)
        normal = np.where(
            is_cyl[:, None],
            np.stack([x, y, np.zeros_like(x)], axis=1) / np.hypot(x, y)[:, None],
            np.array([0.0, 0.0, 1.0]),
        )
        cos_inc = np.abs((new_mom * normal).sum(1)) / p
        x0_here = np.where(surface >= 0, t.x0[np.maximum(surface, 0)], BEAM_PIPE[1])
        new_mom = _scatter(rng, new_mom, _highland(p, m[idx], x0_here / np.maximum(cos_inc, 0.05)))
    mom[idx] = new_mom
    alive[idx] &= (np.hypot(mom[idx, 0], mom[idx, 1]) > 1e-3) & (np.abs(pos[idx, 2]) < OUTER_Z)
    return True


def propagate(
    rng: np.random.Generator,
    t: Tables,
    vertex: np.ndarray,
    momentum: np.ndarray,
    charge: np.ndarray,
    mass: np.ndarray,
    *,
    scattering: bool = True,
    max_turn: float = np.pi,
    max_steps: int = 60,
) -> Crossings:
    """Follow helices from ``vertex`` through the surfaces, scattering in each one (and the beam pipe)
    with the Highland width; a particle stops when it leaves the detector or has turned by ``max_turn``
    (loopers keep their first half turn)."""
    n = len(vertex)
    pos = np.array(vertex, float)
    mom = np.array(momentum, float)
    q, m = np.asarray(charge, float), np.asarray(mass, float)
    turned = np.zeros(n)
    alive = (q != 0) & (np.hypot(mom[:, 0], mom[:, 1]) > 1e-3)
    alive &= (np.hypot(pos[:, 0], pos[:, 1]) < OUTER_R) & (np.abs(pos[:, 2]) < OUTER_Z)
    out = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(max_steps):
            if not _step(rng, t, pos, mom, q, m, turned, alive, out, scattering, max_turn):
                break
    if not out:
        return Crossings(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)))
    parts = [np.concatenate(c) for c in zip(*out, strict=True)]
    order = np.argsort(parts[0], kind="stable")  # per particle, in the order met
    return Crossings(*(p[order] for p in parts))
