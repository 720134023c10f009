"""Events in the TrackML challenge's CSV format from a simulated TrackML-like detector (``detector``).

Particles: Pythia 8 tt̄ at 13 TeV plus a Poisson number (mean ``pileup``) of soft-QCD interactions
(non-diffractive, single and double diffractive), each at its own vertex drawn from the LHC luminous
region (z ~ N(0, 55 mm), x, y ~ N(0, 12.5 um)); or, for fast tests (``kind="synthetic"``, numpy only),
particle guns: ``(1 + pileup) * 40`` pions/muons per event, pT ~ 0.1 GeV + exponential(0.5 GeV), |eta| < 4,
from the same vertex distribution. Charged final-state particles with pT > 0.1 GeV are followed
(``detector.propagate``: helices in 2 T, multiple scattering in every surface, no energy loss, no
hadronic interactions, no secondaries from material, loopers stop after half a turn).

Digitisation: each crossing gives a hit with probability ``HIT_EFFICIENCY``; its position is smeared on
the surface by pitch/sqrt(12) along both module directions (pixels 14 um x 14 um, short strips 23 um x
0.35 mm, long strips 35 um x 3.1 mm); a cluster of cells is drawn along the track's path through the
sensor (length from the incidence angle and the sensor thickness, charge proportional to the path with
Gamma fluctuations). Noise: ``NOISE_FRACTION`` x (real hits) hits at random places on random surfaces
(particle_id 0, weight 0). Weights follow TrackML's idea (not its exact table): hits of particles with
at least 4 hits, higher for the first and last 3 hits and for pT above 0.5 GeV, normalised to sum 1.

Files: ``event{1000 + i:09d}-{hits,cells,particles,truth}.csv[.gz]`` in ``out``. Parallel: worker k makes
a contiguous block of the events, seeded from (seed, k), so a set is reproducible for the same seed and
worker count (the synthetic kind seeds every event from (seed, event) and is independent of workers).
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path

import numpy as np
from smilejax.generators import pythia
from smilejax.generators import workers as workers_mod
from smilejax.inputs.trackml import csv as tcsv

from . import detector

PT_MIN = 0.1  # GeV
HIT_EFFICIENCY = 0.99
NOISE_FRACTION = 0.1
SIGMA_Z, SIGMA_XY = 55.0, 0.0125  # luminous region (mm)
FIRST_EVENT = 1000


@dataclasses.dataclass
class Particles:
    vertex: np.ndarray  # [n, 3] mm
    momentum: np.ndarray  # [n, 3] GeV
    charge: np.ndarray
    mass: np.ndarray
    interaction: np.ndarray  # 0: the hard scatter, 1..: pile-up


def _vertices(rng: np.random.Generator, n: int) -> np.ndarray:
    return pythia.beam_spot(rng, n, SIGMA_Z, SIGMA_XY)


def gun(rng: np.random.Generator, pileup: float, per_interaction: int = 40) -> Particles:
    """Particle guns: ``per_interaction`` pions (90 %) and muons per interaction, 1 + Poisson(pileup)."""
    n_int = 1 + rng.poisson(pileup)
    interaction = np.repeat(np.arange(n_int), per_interaction)
    n = interaction.size
    pt = PT_MIN + rng.exponential(0.5, n)
    eta, phi = rng.uniform(-4, 4, n), rng.uniform(-np.pi, np.pi, n)
    mom = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], 1)
    mass = np.where(rng.random(n) < 0.9, 0.13957, 0.10566)
    return Particles(_vertices(rng, n_int)[interaction], mom, rng.choice([-1.0, 1.0], n), mass, interaction)


class PythiaSource:
    """Pythia 8 tt̄ hard scatters and soft-QCD pile-up (``generators.pythia``'s ``MinBias``; two generators
    per process)."""

    def __init__(self, seed: int, rng: np.random.Generator):
        pythia.require_generators()
        self.rng = rng
        self._cache: dict[int, tuple[float, float]] = {}
        self.hard = pythia.start((*pythia.BEAMS_13TEV, *pythia.TTBAR, *pythia.QUIET), seed)
        self.soft = pythia.MinBias(seed, self._cache)

    def _charged(self, rec: pythia.Record):
        keep = (rec.status > 0) & (rec.charge != 0) & (np.hypot(rec.p[:, 0], rec.p[:, 1]) > PT_MIN)
        p = rec.p[keep]
        mass = np.sqrt(np.maximum(p[:, 3] ** 2 - (p[:, :3] ** 2).sum(1), 0))
        return rec.event[keep], rec.v[keep], p[:, :3], rec.charge[keep], mass

    def __call__(self, pileup: float) -> Particles:
        n_pu = int(self.rng.poisson(pileup))
        hard = pythia.record(self.hard.nextBatch(1), self.hard.particleData, self._cache)
        parts = [self._charged(hard)]
        if n_pu:
            ev, v, p, q, m = self._charged(self.soft(n_pu))
            parts.append((ev + 1, v, p, q, m))
        ev, v, p, q, m = (np.concatenate(x) for x in zip(*parts, strict=True))
        vertex = _vertices(self.rng, 1 + n_pu)[ev] + v
        return Particles(vertex, p, q.astype(float), m, ev.astype(np.int64))


# ------------------------------------------------------------------------------------------- digitisation


def _local(t: detector.Tables, surface, pos, mom):
    """Module-local coordinates (u along r·phi, v along z or r, from the module's corner) and the
    direction's components (along u, along v, along the normal)."""
    x, y, z = pos.T
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    barrel = t.barrel[surface]
    width = 2 * np.pi / t.n_phi[surface]
    iphi = np.minimum(((phi + np.pi) / width).astype(np.int64), t.n_phi[surface] - 1)
    along = np.where(barrel, z, r)
    length = (t.hi[surface] - t.lo[surface]) / t.n_long[surface]
    ilong = np.clip(((along - t.lo[surface]) / length).astype(np.int64), 0, t.n_long[surface] - 1)
    u = r * (phi + np.pi - iphi * width)
    v = along - t.lo[surface] - ilong * length
    d = mom / np.linalg.norm(mom, axis=1, keepdims=True)
    e_phi = np.stack([-np.sin(phi), np.cos(phi)], 1)
    d_u = (d[:, :2] * e_phi).sum(1)
    d_r = d[:, 0] * np.cos(phi) + d[:, 1] * np.sin(phi)
    d_v = np.where(barrel, d[:, 2], d_r)
    d_n = np.where(barrel, d_r, d[:, 2])
    return u, v, d_u, d_v, d_n


def _cells(rng, t: detector.Tables, surface, pos, mom, hit_id) -> np.ndarray:
    """A line of cells per hit along the track's path through the sensor."""
    u, v, d_u, d_v, d_n = _local(t, surface, pos, mom)
    thick, pitch = t.thickness[surface], t.pitch[surface]
    dn = np.maximum(np.abs(d_n), 0.02)
    n0 = 1 + np.floor(thick * np.abs(d_u) / dn / pitch[:, 0] + rng.random(u.size)).astype(np.int64)
    n1 = 1 + np.floor(thick * np.abs(d_v) / dn / pitch[:, 1] + rng.random(u.size)).astype(np.int64)
    n0, n1 = np.minimum(n0, 30), np.minimum(n1, 30)
    k = np.maximum(n0, n1)
    row = np.repeat(np.arange(u.size), k)
    i = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
    frac = np.where(k[row] > 1, i / np.maximum(k[row] - 1, 1), 0.0)
    c0 = np.floor(u / pitch[:, 0]).astype(np.int64) - (n0 - 1) // 2
    c1 = np.floor(v / pitch[:, 1]).astype(np.int64) - (n1 - 1) // 2
    ch0 = np.maximum(c0[row] + np.round(frac * (n0[row] - 1)).astype(np.int64), 0)
    ch1 = np.maximum(c1[row] + np.round(frac * (n1[row] - 1)).astype(np.int64), 0)
    charge = thick / dn * rng.gamma(4.0, 0.25, u.size)  # ~ path length (mm), Landau-like spread
    cells = np.zeros(row.size, tcsv.dtype("cells"))
    cells["hit_id"], cells["ch0"], cells["ch1"] = hit_id[row], ch0, ch1
    cells["value"] = charge[row] / k[row] * rng.uniform(0.6, 1.4, row.size)
    return cells


def _smear(rng, t: detector.Tables, surface, pos):
    """Measured positions: true ones moved on their surface by the module type's resolution."""
    x, y, z = pos.T
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    g = rng.standard_normal((len(x), 2)) * t.sigma[surface]
    barrel = t.barrel[surface]
    r_m = np.where(barrel, r, np.clip(r + g[:, 1], t.lo[surface], t.hi[surface]))
    z_m = np.where(barrel, np.clip(z + g[:, 1], t.lo[surface], t.hi[surface]), z)
    phi_m = phi + g[:, 0] / r
    return np.stack([r_m * np.cos(phi_m), r_m * np.sin(phi_m), z_m], 1)


def _noise(rng, t: detector.Tables, n: int):
    surface = rng.integers(0, len(t.volume), n)
    phi = rng.uniform(-np.pi, np.pi, n)
    along = rng.uniform(t.lo[surface], t.hi[surface])
    r = np.where(t.barrel[surface], t.position[surface], along)
    z = np.where(t.barrel[surface], along, t.position[surface])
    pos = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    mom = np.stack([np.cos(phi), np.sin(phi), rng.normal(0, 1, n)], 1)  # for the cell shapes only
    return surface, pos, mom


def _weights(particle: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """Per hit (ordered along each particle; particle -1 = noise): TrackML-like weights summing to 1."""
    real = particle >= 0
    n = np.bincount(particle[real], minlength=int(particle.max(initial=-1)) + 1)
    first = np.r_[0, np.cumsum(n)[:-1]]
    w = np.zeros(particle.size)
    p = particle[real]
    k = np.arange(p.size) - first[p]
    edge = (k < 3) | (k >= n[p] - 3)
    pt_w = np.clip(0.2 + 0.8 * (pt[p] - 0.5) / 2.5, 0.2, 1.0)
    w[real] = np.where(n[p] >= 4, (1.0 + edge) * pt_w, 0.0)
    return w / max(w.sum(), 1e-12)


def simulate(rng: np.random.Generator, parts: Particles, t: detector.Tables | None = None) -> dict:
    """The four TrackML tables of one event."""
    t = t or detector.tables()
    cross = detector.propagate(rng, t, parts.vertex, parts.momentum, parts.charge, parts.mass)
    keep = rng.random(cross.particle.size) < HIT_EFFICIENCY
    particle, surface = cross.particle[keep], cross.surface[keep]
    tpos, tmom = cross.pos[keep], cross.mom[keep]
    n_noise = int(rng.poisson(NOISE_FRACTION * particle.size))
    ns, npos, nmom = _noise(rng, t, n_noise)
    pt = np.hypot(parts.momentum[:, 0], parts.momentum[:, 1])
    weight = _weights(np.r_[particle, np.full(n_noise, -1)], pt)
    particle = np.r_[particle, np.full(n_noise, -1)]
    surface, tpos, tmom = np.r_[surface, ns], np.r_[tpos, npos], np.r_[tmom, nmom]
    pos = np.r_[_smear(rng, t, surface[: particle.size - n_noise], tpos[: particle.size - n_noise]), npos]
    module = detector.module_id(t, surface, *tpos.T)
    order = np.lexsort((module, t.layer[surface], t.volume[surface]))  # as the challenge orders hits
    particle, surface, tpos, tmom, pos, module, weight = (
        a[order] for a in (particle, surface, tpos, tmom, pos, module, weight)
    )
    hit_id = np.arange(1, particle.size + 1)
    ids = ((parts.interaction + 1) << 28) | (np.arange(len(parts.charge)) + 1)
    hits = np.zeros(hit_id.size, tcsv.dtype("hits"))
    hits["hit_id"], hits["x"], hits["y"], hits["z"] = hit_id, *pos.T
    hits["volume_id"], hits["layer_id"], hits["module_id"] = t.volume[surface], t.layer[surface], module
    truth = np.zeros(hit_id.size, tcsv.dtype("truth"))
    truth["hit_id"] = hit_id
    truth["particle_id"] = np.where(particle >= 0, ids[np.maximum(particle, 0)], 0)
    truth["tx"], truth["ty"], truth["tz"] = tpos.T
    real = particle >= 0
    for k, name in enumerate(("tpx", "tpy", "tpz")):
        truth[name] = np.where(real, tmom[:, k], 0.0)
    truth["weight"] = weight
    prt = np.zeros(len(ids), tcsv.dtype("particles"))
    prt["particle_id"] = ids
    prt["vx"], prt["vy"], prt["vz"] = parts.vertex.T
    prt["px"], prt["py"], prt["pz"] = parts.momentum.T
    prt["q"] = parts.charge.astype(np.int64)
    prt["nhits"] = np.bincount(particle[real], minlength=len(ids))
    return {
        "hits": hits,
        "cells": _cells(rng, t, surface, tpos, tmom, hit_id),
        "particles": prt,
        "truth": truth,
    }


def write_event(out: str | os.PathLike, number: int, tables: dict, gzip: bool = False) -> None:
    suffix = ".csv.gz" if gzip else ".csv"
    for kind in tcsv.KINDS:
        tcsv.write(Path(out) / f"event{number:09d}-{kind}{suffix}", kind, tables[kind])


# ------------------------------------------------------------------------------------------- production


def _work(kind, seed, worker, numbers, out, pileup, gzip, messages) -> None:
    saved = None
    try:
        if kind == "pythia":
            import sys

            sys.stdout.flush()
            saved = os.dup(1)  # restored at the end: this may be the main process (one worker)
            devnull = os.open(os.devnull, os.O_WRONLY)  # Pythia's banner: not on the progress bar
            os.dup2(devnull, 1)
            os.close(devnull)
            pythia_seed, rng_seed = pythia.seeds(seed, worker)
            rng = np.random.default_rng(list(rng_seed))
            source = PythiaSource(pythia_seed, rng)
        t = detector.tables()
        for number in numbers:
            if kind == "synthetic":
                rng = np.random.default_rng([seed, number, 0x7C4])
                parts = gun(rng, pileup)
            else:
                parts = source(pileup)
            write_event(out, number, simulate(rng, parts, t), gzip)
            messages.put(("progress", worker, 1))
        messages.put(("done", worker, (len(numbers), time.process_time())))
    except BaseException:
        messages.put(("error", worker, traceback.format_exc()))
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def make(
    out: str | os.PathLike,
    n_events: int,
    pileup: float,
    seed: int = 0,
    *,
    kind: str = "synthetic",
    workers: int = 1,
    gzip: bool = False,
    progress: bool = True,
) -> dict:
    """Write ``n_events`` events into the folder ``out``; returns a summary (events, hits, seconds)."""
    if kind not in ("synthetic", "pythia"):
        raise ValueError(f"kind must be 'synthetic' or 'pythia', not {kind!r}")
    if n_events < 1 or workers < 1 or pileup < 0:
        raise ValueError(f"need events >= 1, workers >= 1, pileup >= 0; got {n_events}, {workers}, {pileup}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = FIRST_EVENT + np.arange(n_events)
    shares = workers_mod.shares(n_events, workers)
    bounds = np.r_[0, np.cumsum(shares)]
    args = {
        k: (kind, seed, k, numbers[bounds[k] : bounds[k + 1]].tolist(), str(out), pileup, gzip)
        for k in range(workers)
        if shares[k]
    }
    t0 = time.perf_counter()
    if len(args) == 1:  # in this process: no start-up of a spawned interpreter
        cpu0 = time.process_time()
        messages = _Inbox()
        _work(*args[0], messages)
        if messages.error:
            raise RuntimeError(f"trackml-{kind} failed:\n{messages.error}")
        cpu = time.process_time() - cpu0
    else:
        _, cpu = workers_mod.run(
            _work,
            args,
            n_events,
            unit="event",
            desc=f"trackml {kind}",
            progress=progress,
            name=f"trackml-{kind}",
        )
    seconds = time.perf_counter() - t0
    suffix = ".csv.gz" if gzip else ".csv"
    hits = [_count_rows(out / f"event{n:09d}-hits{suffix}") for n in numbers[: min(n_events, 20)]]
    return {"events": n_events, "hits_mean": float(np.mean(hits)), "seconds": seconds, "cpu_seconds": cpu}


class _Inbox:
    """The message queue of ``_work`` when it runs in this process: keeps only an error."""

    error: str | None = None

    def put(self, message: tuple) -> None:
        if message[0] == "error":
            self.error = message[2]


def _count_rows(path: Path) -> int:
    import gzip as gz

    opener = gz.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return sum(1 for _ in f) - 1
