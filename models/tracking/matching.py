"""Track-level evaluation with acorn's published definitions (GNN4ITk's acorn, the Exa.TrkX pipeline's
successor): ``acorn/stages/track_building/utils.py`` (``get_matching_df``, ``evaluate_labelled_graph``,
commit 02a0c57e) and ``track_building_stage.py`` (``tracking_efficiency``, commit 15ae7987).

* Every (track, particle) pair that shares hits is scored: ``purity`` = shared / the track's hits,
  ``eff`` = shared / the particle's hits.
* A track is *matchable* when it has at least ``min_track_length`` hits (acorn's default 5); shorter
  tracks count nowhere.
* Matching styles: ``ATLAS`` (acorn's default): a pair matches when purity > 1/2, and the particle
  counts as reconstructed by it; ``one_way``: the track is matched by purity > 1/2, the particle
  reconstructed by eff > 1/2; ``two_way``: both > 1/2 for both (the matching of the Exa.TrkX group's
  TrackML script, exatrkx-iml2020 ``eval_reco_trkx.py``, and of the issue).
* Target (reconstructable) particles: pT >= ``pt_min``, at least ``min_particle_hits`` hits (acorn's
  ``nhits: [3, inf]``), |eta| <= ``eta_max`` (4). acorn's ``primary`` and ``pdgId not in (11, -11)`` need
  columns the TrackML format does not have; the generator makes no secondaries, so ``primary`` holds.
* efficiency = target particles reconstructed by a matchable track / target particles;
  fake rate = 1 - matched matchable tracks / matchable tracks (all tracks, of any pT);
  duplicate rate = (reconstructing pairs of target particles - reconstructed target particles) /
  reconstructed target particles.
* An added column, beside acorn's fake rate over all tracks (not a replacement): with ``track_pt`` (each
  track's reconstructed pT, from the helix ``merge.track_pt`` fits through its hits), the fake rate of
  the matchable tracks whose reconstructed pT is above ``pt_min`` (``fake_rate_reco_pt>1``), as ATLAS
  quotes fake rates against the track's own pT: 1 - matched matchable tracks of fitted pT > ``pt_min``
  / matchable tracks of fitted pT > ``pt_min``, matched as the style matches. A fragment of a soft
  particle that fits below the cut leaves it; a fake of any particles that fits above stays in.

One departure, stricter than acorn: noise hits (particle 0) are not a particle, so a track made mostly
of noise is a fake (acorn's table would let particle 0 match it).
"""

from __future__ import annotations

import numpy as np

STYLES = ("ATLAS", "one_way", "two_way")
COUNTS = ("particles", "reconstructed", "tracks", "matched_tracks", "duplicates")
RECO_PT_COUNTS = ("tracks_reco_pt", "matched_tracks_reco_pt")  # with ``track_pt`` only
RECO_PT_FAKE = "fake_rate_reco_pt>"  # + the pT cut: the fake rate of tracks fitted above it


def pairs(labels: np.ndarray, particle: np.ndarray) -> dict[str, np.ndarray]:
    """Every (track, particle) pair sharing hits: track, particle, shared hits, the track's hits and the
    particle's hits (``labels`` -1: the hit is on no track)."""
    on = labels >= 0
    n_true = np.bincount(particle, minlength=int(particle.max(initial=0)) + 1)
    if not on.any():
        empty = np.zeros(0, np.int64)
        return {"track": empty, "particle": empty, "shared": empty, "n_reco": empty, "n_true": empty}
    tp, shared = np.unique(np.stack([labels[on], particle[on]], 1), axis=0, return_counts=True)
    n_reco = np.bincount(labels[on])
    return {
        "track": tp[:, 0],
        "particle": tp[:, 1],
        "shared": shared,
        "n_reco": n_reco[tp[:, 0]],
        "n_true": n_true[tp[:, 1]],
    }


def targets(n_true: np.ndarray, pt: np.ndarray, eta: np.ndarray, cfg: dict) -> np.ndarray:
    """Per particle index: passes acorn's target selection (particle 0, noise, never does)."""
    ok = (pt >= cfg["pt_min"]) & (n_true >= cfg["min_particle_hits"]) & (np.abs(eta) <= cfg["eta_max"])
    ok[0] = False
    return ok


def event(
    labels: np.ndarray,
    particle: np.ndarray,
    pt_of: np.ndarray,
    eta_of: np.ndarray,
    *,
    style: str = "ATLAS",
    min_track_length: int = 5,
    pt_min: float = 1.0,
    min_particle_hits: int = 3,
    eta_max: float = 4.0,
    track_pt: np.ndarray | None = None,
) -> dict:
    """One event's counts and per-target-particle flags under acorn's definitions.

    ``pt_of`` / ``eta_of`` are indexed by particle index (as ``particle``); returns the counts
    ``particles, reconstructed, tracks, matched_tracks, duplicates`` and, per target particle, its
    ``pt``, ``eta`` and ``reconstructed`` flag. With ``track_pt`` (per track label, the fitted pT), also
    ``tracks_reco_pt`` and ``matched_tracks_reco_pt``: the matchable tracks fitted above ``pt_min``."""
    if style not in STYLES:
        raise ValueError(f"matching style {style!r}: choose from {STYLES}")
    p = pairs(labels, particle)
    n_true = np.bincount(particle, minlength=pt_of.size)
    cfg = {"pt_min": pt_min, "min_particle_hits": min_particle_hits, "eta_max": eta_max}
    target = targets(n_true, pt_of, eta_of, cfg)
    frac = 0.5 + 1e-6  # acorn's: 0.5 plus a little, so a track matches at most one particle
    pure = (p["shared"] / np.maximum(p["n_reco"], 1) >= frac) & (p["particle"] > 0)
    whole = p["shared"] / np.maximum(p["n_true"], 1) >= frac
    matched, reco = {
        "ATLAS": (pure, pure),
        "one_way": (pure, whole & (p["particle"] > 0)),
        "two_way": (pure & whole, pure & whole),
    }[style]
    matchable = p["n_reco"] >= min_track_length
    tracks = np.unique(p["track"][matchable])
    good_tracks = np.unique(p["track"][matchable & matched])
    rows = matchable & reco & target[p["particle"]]
    got = np.unique(p["particle"][rows])
    flags = np.zeros(pt_of.size, bool)
    flags[got] = True
    ids = np.flatnonzero(target)
    extra = {}
    if track_pt is not None:
        stiff = matchable & (track_pt[p["track"]] > pt_min)  # NaN (not fitted) compares False
        extra = {
            "tracks_reco_pt": int(np.unique(p["track"][stiff]).size),
            "matched_tracks_reco_pt": int(np.unique(p["track"][stiff & matched]).size),
        }
    return {
        **extra,
        "particles": int(target.sum()),
        "reconstructed": int(got.size),
        "tracks": int(tracks.size),
        "matched_tracks": int(good_tracks.size),
        "duplicates": int(rows.sum() - got.size),
        "pt": pt_of[ids],
        "eta": eta_of[ids],
        "reconstructed_flags": flags[ids],
    }


def rates(counts: dict, pt_min: float = 1.0) -> dict:
    """acorn's efficiency, fake and duplicate rates from counts summed over events; with the
    ``RECO_PT_COUNTS``, also ``fake_rate_reco_pt>{pt_min}`` (tracks of fitted pT > ``pt_min``)."""

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    out = {
        **{k: int(counts[k]) for k in COUNTS},
        "track_efficiency": ratio(counts["reconstructed"], counts["particles"]),
        "fake_rate": 1.0 - ratio(counts["matched_tracks"], counts["tracks"]),
        "duplicate_rate": ratio(counts["duplicates"], counts["reconstructed"]),
    }
    if all(k in counts for k in RECO_PT_COUNTS):
        out.update({k: int(counts[k]) for k in RECO_PT_COUNTS})
        reco = ratio(counts["matched_tracks_reco_pt"], counts["tracks_reco_pt"])
        out[f"{RECO_PT_FAKE}{pt_min:g}"] = 1.0 - reco
    return out
