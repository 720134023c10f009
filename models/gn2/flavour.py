"""Jet-flavour tagging figures of merit, in numpy: the b-tagging discriminant, ROC, AUC, rejections.

Conventions follow ATLAS (atlas-ftag-tools / puma): a working point (WP) is the cut on the
discriminant that keeps a fraction ``eff`` of the signal (b) jets, placed at the signal's
``1 - eff`` quantile; the background's mistag rate is the fraction of its jets above that cut and
its rejection is ``1 / mistag`` (infinite when no background jet passes).

A rejection's statistical uncertainty is binomial in the background jets, as puma's ``rej_err``
(atlas-ftag-tools' ``calculate_rejection_error``) computes it: with ``n_pass`` of ``n_bkg`` background
jets above the cut, eps = n_pass / n_bkg, R = 1 / eps and sigma_R = R^2 sqrt(eps (1 - eps) / n_bkg).
"""

from __future__ import annotations

import numpy as np

WORKING_POINTS = (0.70, 0.77, 0.85)
MIN_PASSING = 10  # a rejection resting on fewer passing background jets is flagged low_stats


def discriminant(probs: np.ndarray, fc: float, ftau: float) -> np.ndarray:
    """D_b = ln(p_b / (fc p_c + ftau p_tau + (1 - fc - ftau) p_light)) per jet.

    ``probs`` is [n, 4] in the order (b, c, light, tau). Computed in float64; a jet with p_b = 0
    gets -inf (it ranks below every other jet, which is all a cut needs).
    """
    check_fractions(fc, ftau)
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[1] != 4:
        raise ValueError(f"probs must be [n, 4] (b, c, light, tau), got shape {p.shape}")
    background = fc * p[:, 1] + ftau * p[:, 3] + (1.0 - fc - ftau) * p[:, 2]
    with np.errstate(divide="ignore"):
        return np.log(p[:, 0]) - np.log(background)


def check_fractions(fc: float, ftau: float) -> None:
    if not (0 <= fc <= 1 and 0 <= ftau <= 1 and fc + ftau < 1):
        raise ValueError(
            f"the background fractions need 0 <= fc, ftau and fc + ftau < 1 (the light fraction is "
            f"1 - fc - ftau), got fc={fc}, ftau={ftau}"
        )


def roc(sig: np.ndarray, bkg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signal efficiency, background efficiency) for every distinct cut ``score > t``, from (0, 0)
    (nothing passes) to (1, 1) (everything passes); found by sorting, ties kept together."""
    sig, bkg = _scores(sig, "signal"), _scores(bkg, "background")
    scores = np.concatenate([sig, bkg])
    is_sig = np.concatenate([np.ones(sig.size), np.zeros(bkg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_sig = scores[order], is_sig[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1]
    tp = np.cumsum(is_sig)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0.0, tp / sig.size], np.r_[0.0, fp / bkg.size]


def auc(sig: np.ndarray, bkg: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a signal jet scores above a background jet
    (ties count one half). 1 = perfectly separated, 0.5 = no separation, 0 = inverted."""
    eff_sig, eff_bkg = roc(sig, bkg)
    return float(np.trapezoid(eff_sig, eff_bkg))


def cuts(sig: np.ndarray, effs) -> np.ndarray:
    """The discriminant cuts ``score > cut`` that keep signal fractions ``effs`` (the WPs' cut values)."""
    effs = np.asarray(effs, np.float64)
    if ((effs < 0) | (effs > 1)).any():
        raise ValueError(f"signal efficiencies must lie in [0, 1], got {effs}")
    return np.quantile(_scores(sig, "signal"), 1.0 - effs)


def passing(sig: np.ndarray, bkg: np.ndarray, effs) -> np.ndarray:
    """How many background jets pass the cuts keeping signal fractions ``effs``."""
    bkg = np.sort(_scores(bkg, "background"))
    return bkg.size - np.searchsorted(bkg, cuts(sig, effs), side="right")


def mistag(sig: np.ndarray, bkg: np.ndarray, effs) -> np.ndarray:
    """Background efficiency at the cuts keeping signal fractions ``effs``."""
    return passing(sig, bkg, effs) / _scores(bkg, "background").size


def rejection(sig: np.ndarray, bkg: np.ndarray, effs) -> np.ndarray:
    """1 / mistag at signal efficiencies ``effs`` (inf where no background jet passes)."""
    m = mistag(sig, bkg, effs)
    with np.errstate(divide="ignore"):
        return np.where(m > 0, 1.0 / m, np.inf)


def rejection_error(n_pass, n_bkg: int) -> np.ndarray:
    """Binomial uncertainty of the rejection n_bkg / n_pass (see the module doc); inf where no jet
    passes (the rejection itself is unbounded there)."""
    n_pass = np.asarray(n_pass, np.float64)
    if n_bkg < 1 or (n_pass < 0).any() or (n_pass > n_bkg).any():
        raise ValueError(f"need 0 <= passing jets <= background jets >= 1, got {n_pass} of {n_bkg}")
    eps = n_pass / n_bkg
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_pass > 0, np.sqrt(eps * (1 - eps) / n_bkg) / eps**2, np.inf)


def rejections(sig: np.ndarray, bkg: np.ndarray, effs) -> list[dict]:
    """Per signal efficiency: the rejection, its binomial ``stat_err``, the background jets passing the
    cut (``n_pass``) of all of them (``n_bkg``), and ``low_stats`` when fewer than MIN_PASSING pass."""
    n_bkg = _scores(bkg, "background").size
    n_pass = passing(sig, bkg, effs)
    with np.errstate(divide="ignore"):
        value = np.where(n_pass > 0, n_bkg / np.maximum(n_pass, 1), np.inf)
    return [
        {
            "rejection": float(r),
            "stat_err": float(e),
            "n_pass": int(k),
            "n_bkg": n_bkg,
            "low_stats": bool(k < MIN_PASSING),
        }
        for r, e, k in zip(value, rejection_error(n_pass, n_bkg), n_pass, strict=True)
    ]


def summary(sig: np.ndarray, light: np.ndarray, charm: np.ndarray | None) -> dict:
    """AUCs and light/c rejections (``rejections``' entries) at the standard WPs of one tagger (keys
    "70", "77", "85"); the c entries are None without c jets."""
    wps = [f"{round(100 * wp)}" for wp in WORKING_POINTS]

    def at_wps(bkg: np.ndarray) -> dict[str, dict]:
        return dict(zip(wps, rejections(sig, bkg, WORKING_POINTS), strict=True))

    return {
        "auc_b_vs_light": auc(sig, light),
        "auc_b_vs_c": auc(sig, charm) if charm is not None else None,
        "light_rejection": at_wps(light),
        "c_rejection": at_wps(charm) if charm is not None else None,
    }


def _scores(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"no {what} jets to compute efficiencies with")
    if np.isnan(x).any():
        raise ValueError(f"NaN among the {what} scores")
    return x
