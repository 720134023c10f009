"""particleflow's targets (ytarget) and the rule-based PF baseline (ycand) of ``detector``'s tracks and
clusters, behind ``make_pythia``'s events.

* ytarget, as particleflow assigns them: a track's target is its particle (class 211, 11 or 13 by |pdg|,
  its charge); a cluster's target is the set of its contributors that are nobody's track, summed into one
  four-vector and labelled by the most energetic of them (photon for γ/e, else neutral hadron; charge 0),
  so charged particles without a track appear as neutral; a cluster of track particles only has none.
  Every visible particle that leaves a track or a cluster is in exactly one target, so the sum of target
  energy is √s minus what escapes (neutrinos, the beam pipe, soft loopers). Columns 7..12: ispu 0,
  generatorStatus 1, simulatorStatus EDM4hep bits (26 left the detector: muons, 27 ended in the
  calorimeter, 28 ended in the tracker), gp_to_track (1 with a track), gp_to_cluster (the particle's
  clustered energy, GeV) and jet_idx, the targetjets index of the target or -1. Rows without target are
  zero with jet_idx -1.
* ycand, a rule-based PF baseline (Pandora's role in the real sample): each track is a charged candidate
  (211; 11 for true electrons with 95 % identification, 13 for true muons above 2 GeV with 97 %; 0.3 %
  of hadrons each faked as e or μ) with the track's momentum and the class mass. The fitted helix is
  extrapolated to the ECAL and the track linked to the cluster of the closest deposit within 0.05 rad
  (Pandora links by closest hits). A cluster without tracks is a neutral candidate; one with tracks is
  when its energy minus their momenta exceeds 0.5 GeV and 1.5 times their hadronic resolution, with that
  remainder as energy. Neutral candidates are massless photons when the ECAL holds ≥ 75 % of the
  remainder (after taking the linked hadrons' mean ECAL share out), else neutral hadrons. On qq̄ events
  about 94 % of the elements get the target's class (clusters alone: about 90 %).
"""

from __future__ import annotations

import numpy as np
from smilejax.generators.pythia import cross, kinematics
from smilejax.inputs import mlpf_format as fmt

from .detector import HAD_ECAL_A, HAD_ECAL_B, HCAL_RES, MASS, Arrays, resolution

CLASS_INDEX = {c: i for i, c in enumerate(fmt.CLASSES)}

# PF baseline
MATCH_ANGLE, PHOTON_ECAL_FRACTION, NEUTRAL_E_MIN, NEUTRAL_SIGMAS = 0.05, 0.75, 0.5, 1.5
HAD_ECAL_SHARE = HAD_ECAL_A / (HAD_ECAL_A + HAD_ECAL_B)
EID, MUID, MUID_P_MIN, FAKE_LEPTON = 0.95, 0.97, 2.0, 0.003

SIM_LEFT, SIM_CALO, SIM_TRACKER = float(1 << 26), float(1 << 27), float(1 << 28)  # EDM4hep simulatorStatus


def _nearest(ga: np.ndarray, ua: np.ndarray, gb: np.ndarray, ub: np.ndarray, max_angle: float) -> np.ndarray:
    """For each a, the index of the b of its group (ids sorted in both) with the smallest opening angle
    between the unit vectors ``ua`` and ``ub``, if under ``max_angle``, else -1."""
    i, j = cross(ga, gb)
    cos = (ua[i] * ub[j]).sum(1)
    ok = cos > np.cos(max_angle)
    i, j, cos = i[ok], j[ok], cos[ok]
    order = np.lexsort((-cos, i))
    i, j = i[order], j[order]
    first = np.r_[True, i[1:] != i[:-1]] if i.size else np.zeros(0, bool)
    out = np.full(ga.size, -1, np.int64)
    out[i[first]] = j[first]
    return out


def targets(vis: Arrays, trk: Arrays, dep: Arrays, cl: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """ytarget rows of the tracks and of the clusters (jet_idx still unset)."""
    n_vis = vis["pid"].size
    has_track = np.zeros(n_vis, bool)
    has_track[trk["idx"]] = True
    clustered = np.zeros(n_vis)
    inside = dep["cluster"] >= 0
    clustered[dep["idx"][inside]] = (dep["e_ecal"] + dep["e_hcal"])[inside]
    apid = np.abs(vis["pid"])
    reached = np.zeros(n_vis, bool)
    reached[dep["idx"]] = True
    sim = np.select([apid == 13, reached], [SIM_LEFT, SIM_CALO], SIM_TRACKER)

    def rows(cls, charge, p4, particle):
        pt, eta, phi = kinematics(p4)
        y = np.zeros((cls.size, fmt.N_Y))
        y[:, :7] = np.stack([cls, charge, pt, eta, np.sin(phi), np.cos(phi), p4[:, 3]], axis=1)
        y[:, 8] = 1.0  # generatorStatus
        y[:, 9:12] = np.stack([sim[particle], has_track[particle], clustered[particle]], axis=1)
        return y

    t = trk["idx"]
    t_cls = np.select([apid[t] == 11, apid[t] == 13], [CLASS_INDEX[11], CLASS_INDEX[13]], CLASS_INDEX[211])
    y_trk = rows(t_cls, vis["charge"][t], vis["p"][t], t)

    # clusters: every contributor that is nobody's track, summed, labelled by the most energetic one
    k = cl["energy"].size
    free = np.flatnonzero(inside & ~has_track[dep["idx"]])
    c, part = dep["cluster"][free], dep["idx"][free]
    p4 = np.stack([np.bincount(c, vis["p"][part, a], minlength=k) for a in range(4)], axis=1)
    order = np.lexsort((-vis["p"][part, 3], c))
    lead = np.full(k, -1, np.int64)
    is_first = np.r_[True, c[order][1:] != c[order][:-1]] if order.size else np.zeros(0, bool)
    lead[c[order][is_first]] = part[order][is_first]
    some = lead >= 0
    y_cl = np.zeros((k, fmt.N_Y))
    photon = np.isin(apid[lead[some]], (11, 22))
    cls = np.where(photon, CLASS_INDEX[22], CLASS_INDEX[130])
    y_cl[some] = rows(cls, np.zeros(cls.size), p4[some], lead[some])
    return y_trk, y_cl


def candidates(
    rng: np.random.Generator, trk: Arrays, dep: Arrays, cl: Arrays, true_pid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ycand rows of the tracks and clusters: the rule-based PF baseline."""
    m, k = trk["p"].size, cl["energy"].size
    u = rng.random((m, 2))
    apid = np.abs(true_pid)
    hadron = (apid != 11) & (apid != 13)
    electron = ((apid == 11) & (u[:, 0] < EID)) | (hadron & (u[:, 0] < FAKE_LEPTON))
    muon = (trk["p"] > MUID_P_MIN) & (((apid == 13) & (u[:, 1] < MUID)) | (hadron & (u[:, 1] < FAKE_LEPTON)))
    pdg = np.select([electron, muon], [11, 13], 211)
    mass = np.select([pdg == 11, pdg == 13], [MASS[11], MASS[13]], MASS[211])
    c_trk = np.zeros((m, fmt.N_Y))
    c_trk[:, 0] = np.select([pdg == 11, pdg == 13], [CLASS_INDEX[11], CLASS_INDEX[13]], CLASS_INDEX[211])
    c_trk[:, 1] = trk["charge"]
    c_trk[:, 2:6] = np.stack([trk["pt"], trk["eta"], np.sin(trk["phi"]), np.cos(trk["phi"])], axis=1)
    c_trk[:, 6] = np.hypot(trk["p"], mass)

    # link each track to the cluster of the deposit closest to its extrapolation (Pandora links tracks to
    # clusters by their closest hits); subtract the linked momenta from the cluster energy
    ok, kept = np.flatnonzero(trk["reaches"]), np.flatnonzero(dep["cluster"] >= 0)
    nearest = _nearest(trk["event"][ok], trk["entry"][ok], dep["event"][kept], dep["unit"][kept], MATCH_ANGLE)
    link = np.full(m, -1, np.int64)
    link[ok] = np.where(nearest >= 0, dep["cluster"][kept][nearest], -1)
    linked_p = np.bincount(link[link >= 0], trk["p"][link >= 0], minlength=k)
    rest = cl["energy"] - linked_p
    sigma = resolution(HCAL_RES, linked_p) * linked_p
    neutral = (linked_p == 0) | (rest > np.maximum(NEUTRAL_E_MIN, NEUTRAL_SIGMAS * sigma))
    # ECAL-dominated once the linked hadrons' mean ECAL share is taken out
    photon = cl["e_ecal"] - HAD_ECAL_SHARE * linked_p >= PHOTON_ECAL_FRACTION * rest
    c_cl = np.zeros((k, fmt.N_Y))
    c_cl[:, 0] = np.where(photon, CLASS_INDEX[22], CLASS_INDEX[130])
    c_cl[:, 2:7] = np.stack(
        [rest * np.sin(cl["theta"]), cl["eta"], np.sin(cl["phi"]), np.cos(cl["phi"]), rest], axis=1
    )
    c_cl[~neutral] = 0.0
    return c_trk, c_cl
