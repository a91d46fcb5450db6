"""Distribution shift of named values (model inputs, the score) against their training profiles.

A ``DistributionShift`` counts a window's values in the *training* bins of each value, then
compares the window's histogram with the training proportions: the population stability index
(PSI) and the Jensen-Shannon distance (base 2, so it lies in [0, 1]). A value drifts when either
crosses its threshold; a value with no finite value in the window has NaN figures and does not.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> raw = {"edges": [-1e300, 10.0, 20.0, 1e300], "proportions": [0.16, 0.68, 0.16]}
>>> amount = Profile.parse("amount", raw, "example")
>>> stable = DistributionShift({"amount": amount}, psi_threshold=0.2, js_threshold=0.1)
>>> shifted = stable.empty()
>>> _ = stable.update({"amount": rng.normal(15, 5, 1_000)})
>>> _ = shifted.update({"amount": rng.normal(20, 5, 1_000)})
>>> stable.counts["amount"].tolist(), shifted.counts["amount"].tolist()
([167, 684, 149], [25, 475, 500])
>>> stable.verdict().drifted
()
>>> verdict = shifted.verdict()
>>> round(verdict.psi["amount"], 4), round(verdict.js_distance["amount"], 4), verdict.drifted
(0.7107, 0.3452, ('amount',))
>>> _ = shifted.update({"amount": np.array([np.nan, 5.0])})
>>> shifted.missing, shifted.counts["amount"].tolist()
({'amount': 1}, [26, 475, 500])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

# Per value of one batch: the bin of each finite value, and which values were finite (None: all).
Binned = tuple[np.ndarray, np.ndarray | None]


def psi(actual: np.ndarray, expected: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index of two distributions over the same bins.

    Both sides get ``epsilon`` added per bin and are renormalised, so an empty bin contributes a
    large finite term instead of infinity.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 1:
        raise ValueError(f"psi: need two 1-d arrays of equal length, got {a.shape}, {e.shape}")
    a = (a / a.sum() + epsilon) / (1 + epsilon * len(a))
    e = (e / e.sum() + epsilon) / (1 + epsilon * len(e))
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(actual: np.ndarray, expected: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2: sqrt of the JS divergence, in [0, 1]; needs no smoothing
    (0 log 0 = 0 and the mixture is positive wherever either side is)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 1:
        raise ValueError(f"js: need two 1-d arrays of equal length, got {a.shape}, {e.shape}")
    a, e = a / a.sum(), e / e.sum()
    m = (a + e) / 2

    def kl(p: np.ndarray) -> float:
        nz = p > 0
        return float(np.sum(p[nz] * np.log2(p[nz] / m[nz])))

    # Rounding can make the divergence a hair negative for identical inputs.
    return math.sqrt(max(0.0, (kl(a) + kl(e)) / 2))


@dataclass(frozen=True)
class Profile:
    """One value's training histogram: bin edges and the share of training rows per bin."""

    inner: np.ndarray  # interior edges; bin = searchsorted(inner, v, side="right")
    proportions: np.ndarray

    @classmethod
    def parse(cls, name: str, raw: Any, where: str) -> Profile:
        """From the ``{"edges", "proportions"}`` mapping ``training_stats`` stores per value;
        ValueError naming ``where`` and ``name`` when it is not a histogram."""
        try:
            edges = np.asarray(raw["edges"], dtype=np.float64)
            props = np.asarray(raw["proportions"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: profile of {name!r} needs edges and proportions ({err!r})"
            ) from err
        if edges.ndim != 1 or len(edges) < 2 or len(props) != len(edges) - 1:
            raise ValueError(
                f"{where}: profile of {name!r} has {len(edges)} edges for {len(props)} "
                "proportions (need k + 1 edges for k bins)"
            )
        if np.any(np.diff(edges) <= 0):
            raise ValueError(f"{where}: edges of {name!r} are not strictly increasing")
        if not math.isclose(float(props.sum()), 1.0, abs_tol=1e-6) or np.any(props < 0):
            raise ValueError(f"{where}: proportions of {name!r} do not form a distribution")
        # The outer edges are +-1e300 (open-ended bins): binning uses the interior ones only,
        # exactly as feature_profile counted the training rows.
        return cls(edges[1:-1], props)

    @property
    def bins(self) -> int:
        return len(self.proportions)


class ShiftVerdict(NamedTuple):
    psi: dict[str, float]  # per value, in profile order (NaN: no finite value in the window)
    js_distance: dict[str, float]
    drifted: tuple[str, ...]  # the values crossing either threshold, in profile order

    def values(self, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """``{name: {"psi", "js_distance"}}`` of ``names`` (a drift event's values)."""
        return {n: {"psi": self.psi[n], "js_distance": self.js_distance[n]} for n in names}


class DistributionShift:
    """Histograms of one window's values over their training bins (``update``, ``merge``) and
    their distance from the training proportions (``verdict``)."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        psi_threshold: float,
        js_threshold: float,
        epsilon: float = 1e-4,
    ) -> None:
        self.profiles = dict(profiles)
        self.psi_threshold, self.js_threshold, self.epsilon = psi_threshold, js_threshold, epsilon
        self.counts = {n: np.zeros(p.bins, np.int64) for n, p in self.profiles.items()}
        self.missing = dict.fromkeys(self.profiles, 0)  # non-finite values skipped, per name

    def empty(self) -> DistributionShift:
        """A check of the same profiles and thresholds with nothing counted (the next window)."""
        return DistributionShift(self.profiles, self.psi_threshold, self.js_threshold, self.epsilon)

    def update(self, columns: Mapping[str, np.ndarray]) -> dict[str, Binned]:
        """Count one batch: ``columns`` holds a float array per profiled name (others are
        ignored); non-finite values are counted in ``missing`` instead. Returns the bins."""
        binned: dict[str, Binned] = {}
        for name, prof in self.profiles.items():
            values = columns[name]
            ok = np.isfinite(values)
            finite: np.ndarray | None = None
            if not ok.all():
                self.missing[name] += int((~ok).sum())
                values, finite = values[ok], ok
            bins = np.searchsorted(prof.inner, values, side="right")
            self.counts[name] += np.bincount(bins, minlength=prof.bins)
            binned[name] = (bins, finite)
        return binned

    def merge(self, other: DistributionShift) -> None:
        """Add what ``other`` (a check of the same profiles) counted."""
        for name, counts in other.counts.items():
            self.counts[name] += counts
        for name, k in other.missing.items():
            self.missing[name] += k

    def verdict(self) -> ShiftVerdict:
        """PSI and JS distance of the histograms counted so far, and the values that drift."""
        psis: dict[str, float] = {}
        jss: dict[str, float] = {}
        for name, prof in self.profiles.items():
            counts = self.counts[name]
            if counts.sum() == 0:  # every value was missing: nothing to compare
                psis[name] = jss[name] = math.nan
                continue
            psis[name] = psi(counts, prof.proportions, self.epsilon)
            jss[name] = js_distance(counts, prof.proportions)
        drifted = tuple(
            n for n in self.profiles if psis[n] > self.psi_threshold or jss[n] > self.js_threshold
        )
        return ShiftVerdict(psis, jss, drifted)
