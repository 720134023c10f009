"""MLPF training data from Pythia 8 e+e- -> γ*/Z -> qq̄ events at 380 GeV, in particleflow's CLIC format.

Writes what ``mlpf_format`` describes (``clic_edm_qq_pf``: X, ytarget, ycand, genmet, genjets, targetjets)
from generated events and a fast, parametrised detector: a stand-in for particleflow's CLIC sample
(key4hep full simulation, Pandora PF), not a reproduction of it. It has the same columns and units,
particleflow's target rules and a realistic particle content, but no Geant4: no showers, hits,
conversions, nuclear interactions, beam background or noise; every element is made directly from one
or more generator particles. Good for developing and benchmarking MLPF training; not for physics
performance claims about CLIC.

* events: ``pythia8mc`` ``WeakSingleBoson:ffbar2gmZ``, e+e- at √s = 380 GeV, γ*/Z -> d, u, s, c, b, with
  ISR (over half of the events radiate back to the Z pole, the photon lost down the beam pipe) and FSR.
  Particles decay in the generator only inside the calorimeter's inner cylinder (r < 1.5 m, |z| < 2.3 m,
  Pythia's ``limitCylinder`` as FCC-ee key4hep cards use it), so K0S and Λ mostly give displaced tracks.
  Primary vertex at the origin, no beam spread, no γγ -> hadrons background.
* visible particles: stable ones (Pythia status > 0) except neutrinos. ``genmet`` is |Σ pT| of the
  neutrinos (equal to particleflow's |Σ pT| of the visible ones: the event has no net pT).
* genjets: FastJet ``ee_genkt`` R = 0.4, p = -1 (the e+e- anti-kt, particleflow's choice) of the visible
  particles, pT > 5 GeV; targetjets: the same of the target particles. Both ordered by pT, descending.
* detector, ytarget and ycand: see ``detector`` (a CLIC-like fast simulation, particleflow's target
  rules and a rule-based PF baseline).

Parallel: ``make(data_dir, n_events, seed=, workers=)`` starts ``workers`` spawned processes; worker k seeds
Pythia and numpy from (seed, k), writes its events in batches to part files and reports progress; the
parent shows a tqdm bar of events and writes the parts, in worker order, as the TFDS dataset (the first
events train, the last ``test_fraction`` test). The dataset is the same for the same seed and worker
count; ``generate(n, seed)`` gives worker 0's events, so ``workers=1`` writes exactly ``generate``'s.
Spawned workers re-import the main module: call ``make`` from a script under ``if __name__ ==
"__main__":``. Events without any element are skipped (as particleflow does). Speed: about 1,000
events per CPU-second per worker (Pythia is a quarter of it), plus TFDS writing in the parent at about
900 events/s.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from smilejax.generators import workers as workers_mod
from smilejax.generators.pythia import Record, kinematics, record, require_generators, seeds
from smilejax.inputs import mlpf_format as fmt

from . import detector, pf_targets

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]

VERSION = 1
NAME = "clic_edm_qq_pf"
ECM = 380.0  # GeV
PYTHIA_SETTINGS = (
    "Beams:idA = 11",
    "Beams:idB = -11",
    f"Beams:eCM = {ECM}",
    "WeakSingleBoson:ffbar2gmZ = on",
    "23:onMode = off",
    "23:onIfAny = 1 2 3 4 5",
    "PartonLevel:ISR = on",
    "PartonLevel:FSR = on",
    "ParticleDecays:limitCylinder = on",  # decay only inside the calorimeter's inner cylinder (mm)
    "ParticleDecays:xyMax = 1500.",
    "ParticleDecays:zMax = 2300.",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
)
BATCH_EVENTS = 50  # events per Pythia batch: the unit of progress (part of the seed -> dataset mapping)
NEUTRINOS = (12, 14, 16)
JET_R, JET_P, JET_PT_MIN = 0.4, -1.0, 5.0  # ee_genkt, GeV


# --------------------------------------------------------------------------------------------------
# jets


def _silence_fastjet() -> None:
    """FastJet prints its banner on first use: print it once now, into whatever fd 1 is."""
    import fastjet._swig

    fastjet._swig.ClusterSequence.print_banner()


def _ee_jets(
    event: np.ndarray, p4: np.ndarray, n_events: int, *, constituents: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ee_genkt (R 0.4, p -1) jets with pT > 5 GeV of each event's particles (rows sorted by event).

    Returns (jets [J, 4] as pT, η, φ, E ordered by event then pT descending, the jets' events, and with
    ``constituents`` each row's jet index within its event, -1 when in no jet).
    """
    import awkward as ak
    import fastjet

    counts = np.bincount(event, minlength=n_events)
    parts = ak.zip({"px": p4[:, 0], "py": p4[:, 1], "pz": p4[:, 2], "E": p4[:, 3]})
    found = fastjet.ClusterSequence(
        ak.unflatten(parts, counts), fastjet.JetDefinition(fastjet.ee_genkt_algorithm, JET_R, JET_P)
    )
    jets = found.inclusive_jets(JET_PT_MIN)
    n = ak.to_numpy(ak.num(jets)).astype(np.int64)
    jp = np.stack([ak.to_numpy(ak.flatten(jets[k])).astype(np.float64) for k in ("px", "py", "pz", "E")], 1)
    jp = jp.reshape(-1, 4)
    pt, eta, phi = kinematics(jp)
    jet_event = np.repeat(np.arange(n_events), n)
    order = np.lexsort((-pt, jet_event))
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size) - np.r_[0, np.cumsum(n)[:-1]][jet_event[order]]
    out = np.stack([pt, eta, phi, jp[:, 3]], axis=1)[order]
    if not constituents:
        return out, jet_event[order], None
    index = found.constituent_index(JET_PT_MIN)
    per_jet = ak.to_numpy(ak.flatten(ak.num(index, axis=2))).astype(np.int64)
    local = ak.to_numpy(ak.flatten(index, axis=None)).astype(np.int64)
    jet_of = np.repeat(np.arange(per_jet.size), per_jet)
    first_row = np.r_[0, np.cumsum(counts)[:-1]]
    jet_idx = np.full(event.size, -1, np.int64)
    jet_idx[first_row[jet_event[jet_of]] + local] = rank[jet_of]
    return out, jet_event[order], jet_idx


def _p4(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, e: np.ndarray) -> np.ndarray:
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), e], axis=1)


# --------------------------------------------------------------------------------------------------
# one batch of Pythia events -> MLPF events


def _events(rng: np.random.Generator, rec: Record) -> list[Arrays]:
    """The MLPF events of a Pythia batch (events without any track or cluster are left out)."""
    n = rec.n_events
    stable = rec.status > 0
    invisible = stable & np.isin(np.abs(rec.pid), NEUTRINOS)
    visible = np.flatnonzero(stable & ~invisible)
    nu_ev, nu_p = rec.event[invisible], rec.p[invisible]
    genmet = np.hypot(
        np.bincount(nu_ev, nu_p[:, 0], minlength=n), np.bincount(nu_ev, nu_p[:, 1], minlength=n)
    )
    vis = {"event": rec.event[visible], "pid": rec.pid[visible], "p": rec.p[visible], "v": rec.v[visible]}
    vis["charge"] = rec.charge[visible]
    genjets, genjet_ev, _ = _ee_jets(vis["event"], vis["p"], n)

    trk = detector.tracks(rng, vis["event"], vis["p"], vis["v"], vis["charge"])
    dep = detector.deposits(rng, vis["event"], vis["pid"], vis["p"], vis["v"], vis["charge"])
    cl = detector.clusters(rng, dep)
    y_trk, y_cl = pf_targets.targets(vis, trk, dep, cl)
    c_trk, c_cl = pf_targets.candidates(rng, trk, dep, cl, vis["pid"][trk["idx"]])

    # tracks then clusters within each event
    m = trk["event"].size
    event = np.concatenate([trk["event"], cl["event"]])
    order = np.lexsort((np.r_[np.zeros(m), np.ones(cl["event"].size)], event))
    X = np.zeros((event.size, fmt.N_X))
    X[:m, : trk["X"].shape[1]] = trk["X"]
    X[m:] = cl["X"]
    X, event = X[order], event[order]
    ytarget = np.concatenate([y_trk, y_cl])[order]
    ycand = np.concatenate([c_trk, c_cl])[order]

    ytarget[:, 12] = -1.0
    sel = np.flatnonzero(ytarget[:, 0] > 0)
    t = ytarget[sel]
    p4 = _p4(t[:, 2], t[:, 3], np.arctan2(t[:, 4], t[:, 5]), t[:, 6])
    targetjets, targetjet_ev, jet_idx = _ee_jets(event[sel], p4, n, constituents=True)
    ytarget[sel, 12] = jet_idx

    counts = np.bincount(event, minlength=n)
    cut = np.cumsum(counts)[:-1]
    parts = {
        "X": np.split(X, cut),
        "ytarget": np.split(ytarget, cut),
        "ycand": np.split(ycand, cut),
        "genjets": np.split(genjets, np.cumsum(np.bincount(genjet_ev, minlength=n))[:-1]),
        "targetjets": np.split(targetjets, np.cumsum(np.bincount(targetjet_ev, minlength=n))[:-1]),
    }
    return [
        {**{key: parts[key][e].astype(np.float32) for key in parts}, "genmet": np.float32(genmet[e])}
        for e in range(n)
        if counts[e] > 0
    ]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 (Pythia's and FastJet's C++ banners and tables) to /dev/null for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class Generator:
    """A seeded Pythia e+e- -> qq̄ generator plus the fast detector and PF baseline (one per process)."""

    def __init__(self, seed: int, rng_seed: tuple[int, ...]):
        require_generators()
        import pythia8mc

        with _quiet_stdout():
            self.pythia = pythia8mc.Pythia("", False)
            for line in (*PYTHIA_SETTINGS, f"Random:seed = {int(seed)}"):
                if not self.pythia.readString(line):
                    raise ValueError(f"Pythia rejected the setting {line!r}")
            if not self.pythia.init():
                raise RuntimeError("Pythia failed to initialise")
            _silence_fastjet()
        self.rng = np.random.default_rng(list(rng_seed))
        self._cache: dict[int, tuple[float, float]] = {}
        self.events = 0  # Pythia events generated (skipped empty ones included)

    def batch(self, n_events: int = BATCH_EVENTS) -> list[Arrays]:
        rec = record(self.pythia.nextBatch(n_events), self.pythia.particleData, self._cache)
        self.events += rec.n_events
        return _events(self.rng, rec)


def _check_count(n_events: int, least: int) -> int:
    if isinstance(n_events, bool) or int(n_events) != n_events or n_events < least:
        raise ValueError(f"n_events must be an integer of at least {least}, not {n_events!r}")
    return int(n_events)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    return int(seed)


def _produce(gen: Generator, n_events: int) -> Iterator[list[Arrays]]:
    """Batches of events from ``gen`` until ``n_events`` (the last one cut)."""
    done = 0
    while done < n_events:
        events = gen.batch()[: n_events - done]
        done += len(events)
        if events:
            yield events


def generate(n_events: int, seed: int = 0) -> list[Arrays]:
    """``n_events`` MLPF events in this process (worker 0's stream of ``make`` with this seed)."""
    n_events, seed = _check_count(n_events, 1), _check_seed(seed)
    gen = Generator(*seeds(seed, 0))
    return [e for batch in _produce(gen, n_events) for e in batch]


# --------------------------------------------------------------------------------------------------
# parallel production


def _save_part(path: Path, events: list[Arrays]) -> None:
    """A batch of events as concatenated arrays plus per-event counts (np.savez)."""
    keys = ("X", "ytarget", "ycand", "genjets", "targetjets")
    arrays = {k: np.concatenate([e[k] for e in events]) for k in keys}
    counts = {f"n_{k}": np.array([len(e[k]) for e in events]) for k in ("X", "genjets", "targetjets")}
    np.savez(path, genmet=np.array([e["genmet"] for e in events], np.float32), **arrays, **counts)


def _load_part(path: Path) -> list[Arrays]:
    with np.load(path) as z:
        cut = {k: np.cumsum(z[f"n_{k}"])[:-1] for k in ("X", "genjets", "targetjets")}
        split = {k: np.split(z[k], cut["X"]) for k in ("X", "ytarget", "ycand")}
        split |= {k: np.split(z[k], cut[k]) for k in ("genjets", "targetjets")}
        genmet = z["genmet"]
    return [{**{k: v[i] for k, v in split.items()}, "genmet": genmet[i]} for i in range(genmet.size)]


def _work(seed: int, worker: int, n_events: int, part_dir: str, messages) -> None:
    """One worker: ``n_events`` events as part files in ``part_dir``, progress on ``messages``."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Pythia/FastJet output: not over the tqdm bar
        os.dup2(devnull, 1)
        gen = Generator(*seeds(seed, worker))
        for b, events in enumerate(_produce(gen, n_events)):
            _save_part(Path(part_dir) / f"part-{worker:03d}-{b:06d}.npz", events)
            messages.put(("progress", worker, len(events)))
        messages.put(("done", worker, (gen.events, time.process_time())))
    except BaseException:
        messages.put(("error", worker, traceback.format_exc()))


def _stream(parts: list[Path], start: int, stop: int) -> Iterator[Arrays]:
    """Events ``start`` .. ``stop`` - 1 of the part files taken in order."""
    at = 0
    for part in parts:
        if at >= stop:
            return
        events = _load_part(part)
        yield from events[max(start - at, 0) : max(stop - at, 0)]
        at += len(events)


@contextlib.contextmanager
def _tfds_output(enable: bool) -> Iterator[None]:
    """TFDS's progress bars (a global switch) and its "Downloading and preparing" lines on or off."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(enable)
    try:
        with contextlib.nullcontext() if enable else contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(was)


def make(
    data_dir: str | os.PathLike,
    n_events: int,
    *,
    seed: int = 0,
    workers: int = 1,
    test_fraction: float = 0.1,
    name: str = NAME,
    config: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate ``n_events`` events with ``workers`` processes and write them as the TFDS dataset
    ``name/config/3.1.0`` under ``data_dir`` (train: the first events, test: the last
    ``round(n_events * test_fraction)``, at least one). Returns the version folder."""
    n_events, seed = _check_count(n_events, 2), _check_seed(seed)
    if isinstance(workers, bool) or int(workers) != workers or not 1 <= workers < 1000:
        raise ValueError(f"workers must be an integer in [1, 1000), not {workers!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), not {test_fraction!r}")
    if str(config) not in {str(c) for c in range(1, fmt.NUM_CONFIGS + 1)}:
        raise ValueError(
            f"config must be one of 1..{fmt.NUM_CONFIGS} (particleflow's configs), not {config!r}"
        )
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"name must be a snake_case TFDS dataset name, not {name!r}")
    workers = int(workers)
    n_test = min(max(1, round(n_events * float(test_fraction))), n_events - 1)
    require_generators()
    data_dir = Path(data_dir)
    fmt.claim(data_dir, name, config, overwrite=overwrite)
    data_dir.mkdir(parents=True, exist_ok=True)
    part_dir = data_dir / f".{name}-{config}.{uuid.uuid4().hex[:8]}.parts"
    part_dir.mkdir()
    try:
        t0 = time.perf_counter()
        args = {
            k: (seed, k, n, str(part_dir))
            for k, n in enumerate(workers_mod.shares(n_events, workers))
            if n > 0
        }
        pythia_events, cpu = workers_mod.run(
            _work, args, n_events, unit="event", desc="pythia ee->qq", progress=progress, name="mlpf-pythia"
        )
        seconds = time.perf_counter() - t0
        parts = sorted(part_dir.glob("part-*.npz"))
        description = (
            f"{fmt.SAMPLES.get(NAME)}: Pythia 8 and a parametrised CLIC-like detector "
            f"(smilejax mlpf-pythia v{VERSION}, seed {seed}, {workers} workers, {n_events} events)"
        )
        n_train = n_events - n_test
        splits = {"train": _stream(parts, 0, n_train), "test": _stream(parts, n_train, n_events)}
        with _tfds_output(progress):
            out = fmt.write(data_dir, name, splits, config=config, description=description)
    finally:
        shutil.rmtree(part_dir, ignore_errors=True)
    log.info(
        "mlpf_pythia: %d events (%d generated) in %.1f s with %d workers (%.0f events per CPU-s) -> %s",
        n_events,
        pythia_events,
        seconds,
        workers,
        n_events / max(cpu, 1e-9),
        out,
    )
    return out
