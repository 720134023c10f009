"""Synthetic ATLAS flavour-tagging jets in the training-dataset-dumper HDF5 layout, made with numpy alone.

The file has what ``ftag_h5`` reads (and salt and atlas-ftag-tools read): a structured 1-D dataset
``jets`` and a structured 2-D dataset ``tracks`` of shape ``[n_jets, 40]`` with a boolean ``valid``
field, GN2's 19 track variables, the track truth labels ``ftagTruthOriginLabel`` (Pileup, Fake, Primary,
FromB, FromBC, FromC, FromTau, OtherSecondary = 0..7) and ``ftagTruthVertexIndex`` (0 = primary vertex,
1.. = displaced truth vertices, -1 = none), and the jet labels ``HadronConeExclTruthLabelID`` (5/4/0/15)
and ``flavour_label`` (0..3 = b, c, light, tau, class names in the dataset attribute ``flavour_label``,
as umami-preprocessing writes it). Units are ATLAS's: MeV and mm. Padded track slots hold NaN in float
fields and 0 in integer fields, and valid tracks are not all at the front (the masks have holes).

The physics is a caricature with the right shape: b jets carry 2-5 tracks from a B-hadron decay
(cτ ≈ 0.45 mm) and its tertiary charm decay, so they have several tracks with large positive signed d0/z0
significance; c jets have fewer, less displaced ones (cτ ≈ 0.2 mm); light jets are mostly prompt tracks
whose impact parameters are resolution-dominated, with non-Gaussian tails and a few long-lived strange
decays (OtherSecondary) that fake displacement; tau jets have 1 or 3 prongs (cτ ≈ 0.09 mm) and few other
tracks; every jet has some pileup (large z0) and fake tracks. Per-track resolutions scale with 1/pT, so
significance, momentum, hit and uncertainty variables carry information a learned model can combine.

``make(path, n_jets, seed)`` writes one file (about 5·10^4 jets/s on one core, contiguous datasets);
``default_dataset()`` makes a 20k-jet train and 5k-jet eval file once in ``$SMILEJAX_CACHE`` (default
``~/.cache/smilejax``) and returns the cached path afterwards.
"""

from __future__ import annotations

import os

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import uuid
from pathlib import Path

import h5py
import numpy as np
from smilejax.inputs.cache import cache_root
from smilejax.inputs.ftag_h5.config import GN2_TRACK_VARS

VERSION = 1
MAX_TRACKS = 40
FLAVOUR_NAMES = ("bjets", "cjets", "ujets", "taujets")  # flavour_label 0..3
TRUTH_LABEL_ID = (5, 4, 0, 15)  # HadronConeExclTruthLabelID per flavour_label
ORIGINS = ("Pileup", "Fake", "Primary", "FromB", "FromBC", "FromC", "FromTau", "OtherSecondary")
PILEUP, FAKE, PRIMARY, FROM_B, FROM_BC, FROM_C, FROM_TAU, OTHER = range(8)

JET_DTYPE = np.dtype(
    [
        ("pt", "f4"),
        ("eta", "f4"),
        ("abs_eta", "f4"),
        ("mass", "f4"),
        ("pt_btagJes", "f4"),
        ("eta_btagJes", "f4"),
        ("n_tracks", "i4"),
        ("HadronConeExclTruthLabelID", "i4"),
        ("flavour_label", "i4"),
        ("eventNumber", "i8"),
    ]
)
# GN2's track inputs (the format's list): its hit counts are stored as integers, the rest as floats; the
# file also has the tracks' pt and eta and the hole counts
TRACK_FLOATS = (*(n for n in GN2_TRACK_VARS if not n.startswith("numberOf")), "pt", "eta")
TRACK_COUNTS = (
    *(n for n in GN2_TRACK_VARS if n.startswith("numberOf")),
    "numberOfPixelHoles",
    "numberOfSCTHoles",
)
TRACK_DTYPE = np.dtype(
    [(n, "f4") for n in TRACK_FLOATS]
    + [(n, "u1") for n in TRACK_COUNTS]
    + [("ftagTruthOriginLabel", "i1"), ("ftagTruthVertexIndex", "i1"), ("valid", "?")]
)

# Per origin (indexed by the label): mean proper decay length cτ [mm] of the parent (0 = prompt),
# fraction of tracks whose lifetime sign is positive, track-pT scale as a fraction of the jet pT,
# angular spread scale, probability of a hit in the innermost/next pixel layer.
_CTAU = np.array([0.0, 0.0, 0.0, 0.455, 0.60, 0.20, 0.087, 8.0])
_POS_SIGN = np.array([0.5, 0.5, 0.5, 0.92, 0.92, 0.88, 0.85, 0.6])
_PT_FRAC = np.array([0.0, 0.0, 0.07, 0.14, 0.11, 0.12, 0.25, 0.04])
_SPREAD = np.array([3.0, 2.0, 1.0, 0.55, 0.6, 0.6, 0.35, 1.2])
_P_IBL = np.array([0.96, 0.55, 0.97, 0.95, 0.93, 0.96, 0.97, 0.5])
_P_NIBL = np.array([0.95, 0.6, 0.96, 0.95, 0.94, 0.95, 0.96, 0.6])


def _counts(rng: np.random.Generator, flav: np.ndarray, lpt: np.ndarray) -> np.ndarray:
    """Tracks per origin class for each jet, shape [n, 8]."""
    n = flav.size
    is_b, is_c, is_l, is_tau = (flav == k for k in range(4))
    counts = np.zeros((n, len(ORIGINS)), np.int64)
    prompt_rate = np.select(
        [is_b, is_c, is_l], [2.5 + 1.6 * lpt, 3.5 + 2.0 * lpt, 4.5 + 2.4 * lpt], 0.4 + 0.4 * lpt
    )
    counts[:, PRIMARY] = rng.poisson(np.maximum(prompt_rate, 0.2))
    counts[:, FROM_B] = is_b * rng.poisson(2.0, n)
    counts[:, FROM_BC] = is_b * rng.poisson(1.6, n)
    counts[:, FROM_C] = is_c * rng.poisson(1.7, n)
    counts[:, FROM_TAU] = is_tau * np.where(rng.random(n) < 0.72, 1, 3)
    counts[:, OTHER] = rng.poisson(0.22 + 0.05 * lpt)
    counts[:, PILEUP] = rng.poisson(0.7, n)
    counts[:, FAKE] = rng.poisson(0.12, n)
    empty = counts.sum(1) == 0
    counts[empty, PRIMARY] = 1  # every jet keeps at least one track
    return counts


def generate(n_jets: int, seed: int = 0, max_tracks: int = MAX_TRACKS) -> tuple[np.ndarray, np.ndarray]:
    """The ``jets`` [n] and ``tracks`` [n, max_tracks] structured arrays of a synthetic sample."""
    rng = np.random.default_rng([seed, 0x5EED])
    n, t = int(n_jets), int(max_tracks)
    flav = rng.choice(4, size=n, p=[0.3, 0.25, 0.4, 0.05])
    pt = (20e3 + rng.exponential(60e3, n)).astype(np.float32)  # MeV
    eta = rng.uniform(-2.5, 2.5, n).astype(np.float32)
    lpt = np.log(pt / 20e3)

    # ---- which origin each track has: secondaries first, so a full jet drops prompt/pileup tracks
    counts = _counts(rng, flav, lpt)
    order = np.array([FROM_B, FROM_BC, FROM_C, FROM_TAU, OTHER, PRIMARY, FAKE, PILEUP])
    cum = np.cumsum(counts[:, order], axis=1)  # [n, 8]
    n_trk = np.minimum(cum[:, -1], t)
    slot = np.arange(t)
    rows, k = np.nonzero(slot[None, :] < n_trk[:, None])  # one entry per track, grouped by jet
    origin = order[np.minimum((k[:, None] >= cum[rows]).sum(-1), 7)]
    values = _track_values(rng, origin, pt[rows], eta[rows], k - cum[rows, 3])
    tracks = _place(rng, values, rows, k, n_trk, t)
    return _jets(rng, pt, eta, flav, n_trk, seed), tracks


def _track_values(
    rng: np.random.Generator, origin: np.ndarray, jpt: np.ndarray, jeta: np.ndarray, other_rank: np.ndarray
) -> dict[str, np.ndarray]:
    """Every track column (one entry per track) from its origin and its jet's pT and η; ``other_rank``:
    the track's rank among its jet's OtherSecondary tracks (two share a vertex)."""
    m = origin.size

    f32 = np.float32

    def uniform():
        return rng.random(m, dtype=f32)

    def gauss():
        return rng.standard_normal(m, dtype=f32)

    def expo():
        return rng.standard_exponential(m, dtype=f32)

    def lognormal(sigma=0.15):
        return np.exp(f32(sigma) * gauss())

    def binom(trials, p):
        return sum((uniform() < p) for _ in range(trials)).astype(np.int16)

    fake = origin == FAKE
    soft = (origin == PILEUP) | fake

    # ---- kinematics
    trk_pt = np.where(soft, 500 + 1500 * expo(), 500 + jpt * _PT_FRAC[origin].astype(f32) * expo())
    spread = (0.04 + 0.12 * np.sqrt(20e3 / jpt)) * _SPREAD[origin].astype(f32)
    deta = np.clip(spread * gauss(), -0.4, 0.4)
    dphi = np.clip(spread * gauss(), -0.4, 0.4)
    trk_eta = jeta + deta
    charge = np.where(uniform() < 0.5, f32(-1), f32(1))
    q_over_p = charge / (trk_pt * np.cosh(trk_eta))  # 1/MeV
    pt_gev = trk_pt / 1e3
    sin_theta = 1 / np.cosh(trk_eta)

    # ---- impact parameters [mm]: truth displacement with a lifetime sign, Gaussian core + tails
    sigma_d0 = np.hypot(f32(0.010), 0.085 / (pt_gev * np.sqrt(sin_theta))) * (1 + fake) * lognormal()
    sigma_z0 = np.hypot(f32(0.030), 0.105 / (pt_gev * np.sqrt(sin_theta))) * (1 + fake) * lognormal()
    flight = _CTAU[origin].astype(f32) * expo()
    sign = np.where(uniform() < _POS_SIGN[origin], f32(1), f32(-1))
    d0_true = np.where(fake, 0.4 * gauss(), sign * flight * (0.05 + 0.95 * uniform()))
    z0_true = sign * flight * 0.8 * uniform() * sin_theta
    tails = np.where(uniform() < 0.04, f32(4), f32(1))  # hard scatters, wrong hits
    d0_signed = d0_true + sigma_d0 * tails * gauss()
    pileup_z = np.where(origin == PILEUP, 30 * gauss() * sin_theta, f32(0))
    z0_signed = z0_true + pileup_z + sigma_z0 * tails * gauss()
    geo_sign = np.where(uniform() < 0.5, f32(-1), f32(1))  # sign w.r.t. the beam line, not the jet

    # ---- hits
    dense = np.clip(jpt / 400e3, 0, 1) * (_SPREAD[origin] < 1)
    p_shared = 0.02 + 0.12 * dense
    ibl = binom(1, _P_IBL[origin])
    values = {
        "d0": np.abs(d0_signed) * geo_sign,
        "z0SinTheta": z0_signed * geo_sign,
        "dphi": dphi,
        "deta": deta,
        "qOverP": q_over_p,
        "IP3D_signed_d0_significance": d0_signed / sigma_d0,
        "IP3D_signed_z0_significance": z0_signed / sigma_z0,
        "phiUncertainty": np.hypot(f32(8e-5), 1.2e-3 / pt_gev) * lognormal(),
        "thetaUncertainty": np.hypot(f32(1.5e-4), 1.0e-3 / pt_gev) * sin_theta * lognormal(),
        "qOverPUncertainty": np.abs(q_over_p) * (0.01 + 4e-4 * pt_gev) * lognormal(),
        "pt": trk_pt,
        "eta": trk_eta,
        "numberOfPixelHits": 2 + binom(2, 0.8) + ibl - fake,
        "numberOfSCTHits": 5 + binom(4, 0.85) - fake,
        "numberOfInnermostPixelLayerHits": ibl,
        "numberOfNextToInnermostPixelLayerHits": binom(1, _P_NIBL[origin]),
        "numberOfInnermostPixelLayerSharedHits": ibl * binom(1, p_shared),
        "numberOfInnermostPixelLayerSplitHits": ibl * binom(1, p_shared * 0.8),
        "numberOfPixelSharedHits": binom(2, p_shared),
        "numberOfPixelSplitHits": binom(2, p_shared * 0.8),
        "numberOfSCTSharedHits": binom(2, p_shared * 0.7),
        "numberOfPixelHoles": binom(1, 0.03 + 0.1 * fake),
        "numberOfSCTHoles": binom(1, 0.04 + 0.1 * fake),
        "ftagTruthOriginLabel": origin,
        # truth vertex: 0 = primary, -1 = none (pileup, fake), 1 = the b/c/tau decay, 2 = the tertiary
        # charm decay of a b, 3.. = other secondaries (K0s, conversions ...), two tracks each
        "ftagTruthVertexIndex": np.select(
            [origin == PRIMARY, soft, origin == FROM_BC, origin == OTHER],
            [0, -1, 2, 3 + other_rank // 2],
            1,
        ),
    }
    return values


def _place(
    rng: np.random.Generator,
    values: dict[str, np.ndarray],
    rows: np.ndarray,
    k: np.ndarray,
    n_trk: np.ndarray,
    t: int,
) -> np.ndarray:
    """The [n, t] tracks array: ``values`` of the tracks of jet ``rows``, in slots with random holes."""
    # ---- order each jet's tracks by signed d0 significance (as the dumper does), then punch holes:
    # the jet's tracks keep their order but sit in a random subset of its first n_trk + holes slots
    by_sd0 = np.lexsort((-values["IP3D_signed_d0_significance"], rows))
    n, slot = n_trk.size, np.arange(t)
    holes = rng.poisson(1.5, n) * (rng.random(n) < 0.6)
    span = np.minimum(n_trk + holes, t)
    pick = np.where(slot[None, :] < span[:, None], rng.random((n, t)), 2.0 + slot[None, :])
    rank = np.argsort(np.argsort(pick, axis=1), axis=1)
    positions = np.sort(np.where(rank < n_trk[:, None], slot[None, :], t + slot[None, :]), axis=1)
    dst = positions[rows, k]

    tracks = np.zeros((n, t), TRACK_DTYPE)
    for name in TRACK_DTYPE.names:
        if name == "valid":
            continue
        kind = TRACK_DTYPE[name]
        col = np.full((n, t), np.nan if kind.kind == "f" else (-1 if kind.kind == "i" else 0), kind)
        v = values[name][by_sd0]
        col[rows, dst] = np.clip(v, 0, 255) if kind == np.uint8 else v
        tracks[name] = col
    valid = np.zeros((n, t), bool)
    valid[rows, dst] = True
    tracks["valid"] = valid
    return tracks


def _jets(
    rng: np.random.Generator, pt: np.ndarray, eta: np.ndarray, flav: np.ndarray, n_trk: np.ndarray, seed: int
) -> np.ndarray:
    """The ``jets`` structured array."""
    n = pt.size
    jets = np.zeros(n, JET_DTYPE)
    jets["pt"] = pt
    jets["eta"] = eta
    jets["abs_eta"] = np.abs(eta)
    jets["mass"] = pt * 0.08 * np.exp(0.4 * rng.standard_normal(n))
    jets["pt_btagJes"] = pt * (1 + 0.05 * rng.standard_normal(n))
    jets["eta_btagJes"] = eta
    jets["n_tracks"] = n_trk
    jets["HadronConeExclTruthLabelID"] = np.asarray(TRUTH_LABEL_ID)[flav]
    jets["flavour_label"] = flav
    jets["eventNumber"] = np.arange(n, dtype=np.int64) + int(seed) * 10_000_000
    return jets


def make(
    path: str | os.PathLike,
    n_jets: int,
    seed: int = 0,
    *,
    compression: str | None = None,
    chunk_jets: int | None = None,
) -> Path:
    """Write a synthetic file (atomically: a temporary name, then a rename) and return its path.

    compression: None (contiguous datasets, the default and fastest) or an h5py filter such as ``"lzf"``
    or ``"gzip"``; chunk_jets: jets per chunk when chunked (default 1000 when compressed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    jets, tracks = generate(n_jets, seed)
    chunks = None
    if compression is not None or chunk_jets is not None:
        chunks = max(1, min(int(chunk_jets or 1000), max(1, n_jets)))
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            ds = f.create_dataset(
                "jets", data=jets, compression=compression, chunks=(chunks,) if chunks else None
            )
            ds.attrs["flavour_label"] = list(FLAVOUR_NAMES)
            f.create_dataset(
                "tracks",
                data=tracks,
                compression=compression,
                chunks=(chunks, tracks.shape[1]) if chunks else None,
            )
            f.attrs["generator"] = f"smilejax.models.gn2.make_synthetic v{VERSION}"
            f.attrs["seed"] = int(seed)
            f.attrs["n_jets"] = int(n_jets)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _is_complete(path: Path, n_jets: int) -> bool:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs.get("n_jets", -1)) == n_jets and len(f["jets"]) == n_jets
    except (OSError, KeyError):
        return False


DEFAULT_SIZES = {"train": (20_000, 1), "eval": (5_000, 2)}  # split -> (jets, seed)


def default_dataset(cache_dir: str | os.PathLike | None = None, split: str = "train") -> str:
    """Path of the small default set (20k train / 5k eval jets), made once and reused afterwards.

    Both splits are written on first use, into ``cache_dir``, else ``$SMILEJAX_CACHE``, else
    ``~/.cache/smilejax``; concurrent callers each write a temporary file and rename it, so a reader
    never sees a half-written file.
    """
    if split not in DEFAULT_SIZES:
        raise ValueError(f"split must be one of {sorted(DEFAULT_SIZES)}, not {split!r}")
    root = cache_root(cache_dir) / "ftag_synthetic"
    paths = {}
    for name, (n_jets, seed) in DEFAULT_SIZES.items():
        p = root / f"v{VERSION}_{name}_{n_jets}.h5"
        if not _is_complete(p, n_jets):
            make(p, n_jets, seed)
        paths[name] = p
    return str(paths[split])
