"""Figures, statistics and the recorder every section reports through."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import attrs

KEYS = ("name", "value", "unit", "baseline_name", "baseline_value", "ratio", "n", "spread")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


@attrs.frozen
class Stat:
    """The median of repeated runs and their range."""

    value: float
    spread: float
    n: int
    runs: tuple[float, ...] = ()

    @classmethod
    def of(cls, runs: Iterable[float]) -> "Stat":
        xs = [float(x) for x in runs]
        if not xs:
            raise ValueError("no runs to summarise")
        return cls(statistics.median(xs), max(xs) - min(xs), len(xs), tuple(xs))

    def scaled(self, k: float) -> "Stat":
        return Stat(self.value * k, self.spread * k, self.n, tuple(x * k for x in self.runs))


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    if x == 0 or not math.isfinite(x):
        return x
    digits = max(0, 4 - int(math.floor(math.log10(abs(x)))))
    return round(x, digits)


@attrs.frozen
class Figure:
    name: str
    stat: Stat
    unit: str
    baseline: "Figure | None" = None
    # "lower" or "higher": which way is better (for the report's wording only).
    better: str = "lower"
    section: str = ""
    note: str = ""

    @property
    def value(self) -> float:
        return self.stat.value

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.value:
            return None
        return self.value / self.baseline.value

    def to_dict(self) -> dict[str, Any]:
        b = self.baseline
        return {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline_name": b.name if b else None,
            "baseline_value": _round(b.value) if b else None,
            "ratio": _round(self.ratio),
            "n": self.stat.n,
            "spread": _round(self.stat.spread),
        }


class Recorder:
    """Collects figures; prints each as a JSON line the moment it exists (stdout), progress on
    stderr.  ``emit`` can be replaced (the VM tier writes lines to a file)."""

    def __init__(self, emit: Callable[[str], None] | None = None, log: Callable[[str], None] | None = None):
        self.figures: list[Figure] = []
        self.notes: list[str] = []  # what was skipped or limited, and why
        self._emit = emit or (lambda line: (print(line), sys.stdout.flush()))
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.t0 = time.monotonic()
        self.section = ""
        self.section_load: dict[str, float] = {}  # 1-minute load average as each section began

    def log(self, msg: str) -> None:
        self._log(f"[{time.monotonic() - self.t0:6.1f}s] {msg}")

    def add(self, name: str, stat: Stat, unit: str, *, baseline: Figure | None = None,
            better: str = "lower", note: str = "") -> Figure:
        if any(f.name == name for f in self.figures):
            raise ValueError(f"figure {name} reported twice")
        fig = Figure(name, stat, unit, baseline, better, self.section, note)
        self.figures.append(fig)
        self._emit(json.dumps(fig.to_dict()))
        return fig

    def skip(self, what: str, why: str) -> None:
        self.notes.append(f"{what}: {why}")
        self.log(f"SKIPPED {what}: {why}")

    def get(self, name: str) -> Figure | None:
        return next((f for f in self.figures if f.name == name), None)
