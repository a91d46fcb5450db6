"""Night excess: a window's (day/night x bin) counts of an input against the training days.

A new fraud pattern is a few dozen transactions a day concentrated in one region, such as the
night hours at amounts in a customer's top bin: too few to move a 24 h histogram's PSI past the
stationary noise, many deviations in the one cell they fill. Each cell's excess over its
expected count is measured in standard deviations (Poisson, widened by the day-to-day
dispersion measured on the training days); only excesses count, since a deficit in one cell is
the mirror of excesses elsewhere. The input's bins are its ``distribution.Profile`` bins.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> raw = {"proportions": [0.45, 0.45, 0.05, 0.05], "dispersion": 1.5}
>>> check = NightExcessCheck({"amount": NightProfile.parse("amount", raw, 2, "example")}, 8.0)
>>> bins, night = rng.integers(0, 2, 2_000), rng.random(2_000) < 0.1
>>> bins[:100], night[:100] = 1, True  # a burst of night transactions in the top bin
>>> check.update({"amount": (bins, None)}, night)
>>> check.night["amount"].tolist()
[105, 213]
>>> verdict = check.verdict({"amount": np.bincount(bins)})
>>> round(verdict.z["amount"], 2), verdict.drifted
(9.23, ('amount',))
>>> {k: v for k, v in verdict.values["amount"].items() if k != "z"}
{'night': True, 'bin': 1, 'observed': 213.0, 'expected': 100.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from monitoring.checks.distribution import Binned


@dataclass(frozen=True)
class NightProfile:
    """One input's training shares of the 2K (day/night x bin) cells, and their dispersion."""

    proportions: np.ndarray  # 2K cells: daytime bins, then night-time bins
    dispersion: float

    @classmethod
    def parse(cls, name: str, raw: Any, bins: int, where: str) -> NightProfile:
        """From the ``{"proportions", "dispersion"}`` mapping ``training_stats.night`` stores
        per input of ``bins`` bins; ValueError naming ``where`` and ``name`` when it is not."""
        try:
            props = np.asarray(raw["proportions"], dtype=np.float64)
            dispersion = float(raw["dispersion"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: night profile of {name!r} needs proportions and dispersion ({err!r})"
            ) from err
        if props.shape != (2 * bins,):
            raise ValueError(
                f"{where}: night profile of {name!r} has {props.size} cells for {bins} bins "
                f"(need {2 * bins}: day and night per bin)"
            )
        if not math.isclose(float(props.sum()), 1.0, abs_tol=1e-6) or np.any(props < 0):
            raise ValueError(f"{where}: night proportions of {name!r} do not form a distribution")
        if not dispersion >= 1.0:
            raise ValueError(f"{where}: night dispersion of {name!r} is {dispersion}, not >= 1")
        return cls(props, dispersion)

    @property
    def bins(self) -> int:
        return len(self.proportions) // 2


class NightExcess(NamedTuple):
    z: float  # NaN when no cell is expected to hold enough rows
    cell: int  # -1 then
    observed: float
    expected: float


def night_excess(
    day_and_night: np.ndarray, profile: NightProfile, min_expected: float
) -> NightExcess:
    """Largest (observed - expected) / sqrt(dispersion * expected) over the cells expected to
    hold at least ``min_expected`` rows, with its cell and counts."""
    counts = np.asarray(day_and_night, dtype=np.float64)
    expected = counts.sum() * profile.proportions
    used = expected >= min_expected
    if not used.any():
        return NightExcess(math.nan, -1, math.nan, math.nan)
    z = np.full(len(counts), -np.inf)
    z[used] = (counts[used] - expected[used]) / np.sqrt(profile.dispersion * expected[used])
    cell = int(np.argmax(z))
    return NightExcess(float(z[cell]), cell, float(counts[cell]), float(expected[cell]))


class NightVerdict(NamedTuple):
    z: dict[str, float]  # largest cell excess per input (NaN: no cell expected enough rows)
    drifted: tuple[str, ...]  # inputs whose excess is above the threshold
    values: dict[str, dict[str, Any]]  # per drifted input: z, night, bin, observed, expected


class NightExcessCheck:
    """Night-time counts per bin of one window's inputs (``update``, ``merge``) and their
    largest excess over the training days' shares (``verdict``)."""

    def __init__(
        self,
        profiles: Mapping[str, NightProfile],
        z_threshold: float,
        min_expected: float = 5.0,
    ) -> None:
        self.profiles = dict(profiles)
        self.z_threshold, self.min_expected = z_threshold, min_expected
        self.night = {n: np.zeros(p.bins, np.int64) for n, p in self.profiles.items()}

    def empty(self) -> NightExcessCheck:
        """A check of the same profiles and threshold with nothing counted (the next window)."""
        return NightExcessCheck(self.profiles, self.z_threshold, self.min_expected)

    def update(self, binned: Mapping[str, Binned], night: np.ndarray) -> None:
        """Count one batch's night rows: ``binned`` per profiled input as
        ``DistributionShift.update`` returns it, ``night`` a flag per row of the batch."""
        for name, prof in self.profiles.items():
            bins, finite = binned[name]
            in_night = night if finite is None else night[finite]
            self.night[name] += np.bincount(bins[in_night], minlength=prof.bins)

    def merge(self, other: NightExcessCheck) -> None:
        """Add what ``other`` (a check of the same profiles) counted."""
        for name, counts in other.night.items():
            self.night[name] += counts

    def verdict(self, totals: Mapping[str, np.ndarray]) -> NightVerdict:
        """The excess of each input, given its window's counts per bin, day and night together
        (``DistributionShift.counts`` of the same rows)."""
        excess = {
            name: night_excess(
                np.concatenate([totals[name] - counts, counts]),
                self.profiles[name],
                self.min_expected,
            )
            for name, counts in self.night.items()
        }
        drifted = tuple(n for n, e in excess.items() if e.z > self.z_threshold)
        values = {
            n: {
                "z": excess[n].z,
                "night": excess[n].cell >= self.profiles[n].bins,
                "bin": excess[n].cell % self.profiles[n].bins,
                "observed": excess[n].observed,
                "expected": excess[n].expected,
            }
            for n in drifted
        }
        return NightVerdict({n: e.z for n, e in excess.items()}, drifted, values)
