"""ATLAS flavour-tagging jets from Pythia 8 tt̄ events, in the training-dataset-dumper HDF5 layout.

The same file format as ``make_synthetic`` (its ``JET_DTYPE`` / ``TRACK_DTYPE``: what ``ftag_h5``, salt and
atlas-ftag-tools read; MeV and mm), but the physics comes from an event generator instead of a caricature:

* events: ``pythia8mc`` tt̄ (gg and qq̄) at √s = 13 TeV, Monash tune with MPI, hadronisation and all decays
  of particles with cτ up to metres (K0S, Λ, ... decay in the generator; K0L and charged π/K are stable).
  Decay vertices are the generator's (mm). The hard-scatter vertex is at the origin.
* pile-up and fake tracks (``pileup``): a Poisson number of mean ``pileup`` (μ) of soft-QCD interactions per
  event, at vertices spread along the beam line (σz = 42 mm), whose charged particles become tracks
  labelled Pileup, and fake tracks (random hit combinations) labelled Fake: see ``pileup``. The jets and
  their labels come from the hard scatter alone. Default μ = 34; ``pileup=0`` makes neither.
* jets: anti-kt R = 0.4 (``fastjet``) of the visible final state (neutrinos and e/μ without a hadron
  ancestor, e.g. from W decays, are left out), pT > 20 GeV, |η| < 2.5. ``pt`` / ``pt_btagJes`` are the
  truth-jet pT smeared by a jet-energy resolution, ``eta`` / ``eta_btagJes`` the truth η.
* labels: ``HadronConeExclTruthLabelID`` as ATLAS defines it: weakly decaying b hadrons (pT > 5 GeV) are
  matched to the closest jet within ΔR < 0.3 first (5), then c hadrons (4), then τ leptons (15), else 0;
  ``flavour_label`` 0..3 = b, c, light, τ.
* tracks and their truth labels: see ``tracker`` (a simple barrel detector, GN2's selection, 40 tracks).

Parallel: ``make(path, n_jets, seed, workers)`` starts ``workers`` processes (spawned, so a parent that
imported JAX is safe); worker k seeds Pythia and numpy from (seed, k), makes its share of the jets into a
temporary part file and reports progress; the parent shows a tqdm bar of jets and merges the parts, in
worker order, into one contiguous file (then removes them). The file is the same for the same seed and
worker count. Spawned workers re-import the main module: call ``make`` from a script under
``if __name__ == "__main__":``. Speed: about 90 tt̄ events (≈ 430 jets) per CPU-second without pile-up.
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
from smilejax.generators.pythia import (
    BEAMS_13TEV,
    QUIET,
    TTBAR,
    MinBias,
    Record,
    kinematics,
    record,
    require_generators,
    seeds,
    start,
)

from . import pileup as pileup_mod
from . import tracker
from .make_synthetic import (
    FLAVOUR_NAMES,
    JET_DTYPE,
    MAX_TRACKS,
    TRACK_DTYPE,
    TRUTH_LABEL_ID,
)

log = logging.getLogger(__name__)

VERSION = 2  # 2: pile-up and fake tracks; GN2's selection with >= 8 silicon hits and <= 1 shared module
PYTHIA_SETTINGS = (*BEAMS_13TEV, *TTBAR, *QUIET)
# ATLAS's Run 2 luminosity-weighted mean interactions per crossing is about 34 (2015-2018; docs/GN2_DATA.md)
DEFAULT_PILEUP = 34.0
BATCH_EVENTS = 20  # events per Pythia batch: the unit of progress (part of the seed -> file mapping)
JET_PT_MIN, JET_ETA_MAX, JET_R = 20.0, 2.5, 0.4  # GeV
LABEL_DR, LABEL_PT_MIN = 0.3, 5.0  # GeV


# --------------------------------------------------------------------------------------------------
# jets and labels


def _cluster(rec: Record, above: np.ndarray) -> dict[str, np.ndarray]:
    """Anti-kt jets of each event's visible final state, pT > 20 GeV, |η| < 2.5, ordered by event."""
    import awkward as ak
    import fastjet

    apid = np.abs(rec.pid)
    prompt_lepton = np.isin(apid, (11, 13)) & ~(above & tracker.HADRON).astype(bool)
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
    for flag, value in ((tracker.TAU, 15), (tracker.C, 4), (tracker.B, 5)):  # later, heavier labels overwrite
        # the weakly decaying ones: no hadron of the same flavour among the decay products
        final = (own & flag).astype(bool) & has_child & ~(child_flags & flag).astype(bool)
        final &= pt > LABEL_PT_MIN
        idx = np.flatnonzero(final)
        jet = tracker.closest(
            rec.event[idx], eta[idx], phi[idx], jets["event"], jets["eta"], jets["phi"], LABEL_DR
        )
        label[jet[jet >= 0]] = value
    return label


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
    """A seeded Pythia tt̄ generator plus the jet/track reconstruction (one per process); with ``pileup``
    (mean interactions per event) > 0 also a minimum-bias generator and a numpy stream of its own for the
    overlay and the fakes (so ``pileup=0`` draws exactly what it did before pile-up existed)."""

    def __init__(self, seed: int, rng_seed: tuple[int, ...], pileup: float = 0.0):
        require_generators()
        self.pythia = start(PYTHIA_SETTINGS, seed)
        self.rng = np.random.default_rng(list(rng_seed))
        self._cache: dict[int, tuple[float, float]] = {}
        self.events = 0
        self.pileup = float(pileup)
        if self.pileup > 0:
            self.minbias = MinBias(seed, self._cache)
            self.pu_rng = np.random.default_rng([*rng_seed, 0x9E1B])

    def batch(self, n_events: int = BATCH_EVENTS, first_event: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rec = record(self.pythia.nextBatch(n_events), self.pythia.particleData, self._cache)
        own, above = tracker.ancestry(rec)
        jets = _cluster(rec, above)
        label = _truth_labels(rec, own, jets)
        if self.pileup > 0:
            soft, _ = pileup_mod.overlay(self.pu_rng, self.minbias, rec.n_events, self.pileup)
            both, flags, mask = pileup_mod.combine(rec, above, soft)
            fakes = pileup_mod.fakes(self.pu_rng, jets, self.pileup)
            trk = tracker.tracks(self.rng, both, flags, jets, pileup=mask, fakes=fakes)
        else:
            trk = tracker.tracks(self.rng, rec, above, jets)
        self.events += rec.n_events
        return _pack(self.rng, jets, label, trk, first_event)


# --------------------------------------------------------------------------------------------------
# parallel production


def _append(ds: h5py.Dataset, x: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(x), axis=0)
    ds[n:] = x


def _work(seed: int, worker: int, n_jets: int, path: str, pileup: float, messages) -> None:
    """One worker: make ``n_jets`` jets into the part file ``path``, reporting progress on ``messages``."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Pythia/FastJet banners and warnings: not the tqdm bar
        os.dup2(devnull, 1)
        pythia_seed, rng_seed = seeds(seed, worker)
        gen = Generator(pythia_seed, rng_seed, pileup)
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
    path: str | os.PathLike,
    n_jets: int,
    seed: int = 0,
    *,
    workers: int = 1,
    pileup: float = DEFAULT_PILEUP,
    progress: bool = True,
) -> Path:
    """Generate ``n_jets`` jets from Pythia tt̄ events with ``workers`` processes into one HDF5 file, with a
    mean of ``pileup`` minimum-bias interactions overlaid per event (and fake tracks; 0: neither).

    The file is written atomically (parts in a temporary folder next to it, merged under a temporary
    name, then renamed); its attributes record the generator, seed, workers, pile-up, events and seconds.
    """
    n_jets, workers, seed, pileup = int(n_jets), int(workers), int(seed), float(pileup)
    if not 0 <= pileup <= 1000:
        raise ValueError(f"pileup must be in [0, 1000], not {pileup}")
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
        args = {k: (seed, k, n, str(parts[k]), pileup) for k, n in enumerate(shares) if n > 0}
        events, cpu = workers_mod.run(
            _work, args, n_jets, unit="jet", desc="pythia tt̄", progress=progress, name="ftag-pythia"
        )
        seconds = time.perf_counter() - t0
        attrs = {
            "generator": f"smilejax.models.gn2.make_pythia v{VERSION} (pythia8mc tt̄ 13 TeV, anti-kt 0.4)",
            "seed": seed,
            "pileup": pileup,  # mean minimum-bias interactions per event (fakes scale with it)
            "pileup_sigma_z_mm": pileup_mod.SIGMA_Z,
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
