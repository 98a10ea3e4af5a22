"""One benchmark figure: a model/baseline ratio or an absolute value, against its target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Ratio figures: met when median model time / median baseline time ≤ target.
RATIO_TARGETS: dict[str, float] = {
    "convert_1tib_vs_4k": 3,
    "zero_vs_punch_hole": 1.5,
    "fill_vs_memset": 1.5,
    "host_access_vs_mmap": 3,
    "kvm_run_vs_c": 1.5,
}
#: Value figures: met when the value ≤ target, or ≥ target for those in ``AT_LEAST``.
VALUE_TARGETS: dict[str, float] = {
    "explore_states_per_cpu_s": 100_000,
    "analyze_all_cpu_s": 40,
    "explore_3_pages_cpu_s": 60,
    "explore_ray_efficiency": 0.7,
    "rss_1tib_mib": 150,
}
AT_LEAST = frozenset({"explore_states_per_cpu_s", "explore_ray_efficiency"})
NAMES: tuple[str, ...] = (*RATIO_TARGETS, *VALUE_TARGETS)
#: The unit of each value figure (ratio figures are model time / baseline time).
UNITS: dict[str, str] = {
    "explore_states_per_cpu_s": "generated states per CPU-second",
    "analyze_all_cpu_s": "CPU-seconds",
    "explore_3_pages_cpu_s": "CPU-seconds",
    "explore_ray_efficiency": "Ray states per CPU-second / local states per CPU-second",
    "rss_1tib_mib": "MiB",
}


@dataclass
class Figure:
    """A measured (or skipped) figure.

    Ratio figures carry ``model`` and ``baseline`` (median seconds per operation); value
    figures carry ``value``. ``skipped`` is the reason a figure could not be measured
    here (it is then not met); ``note`` says what exactly was measured.
    """

    name: str
    model: float | None = None
    baseline: float | None = None
    value: float | None = None
    skipped: str | None = None
    note: str = ""
    #: More measured facts for the JSON (counts, per-platform values).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ratio(self) -> bool:
        return self.name in RATIO_TARGETS

    @property
    def target(self) -> float:
        return RATIO_TARGETS[self.name] if self.is_ratio else VALUE_TARGETS[self.name]

    @property
    def at_least(self) -> bool:
        return self.name in AT_LEAST

    @property
    def unit(self) -> str:
        return "model time / baseline time" if self.is_ratio else UNITS[self.name]

    @property
    def ratio(self) -> float | None:
        if self.model is None or self.baseline is None or self.baseline <= 0:
            return None
        return self.model / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the measured figure meets its target; None when it was skipped."""
        if self.skipped is not None:
            return None
        measured = self.ratio if self.is_ratio else self.value
        if measured is None:
            return False
        return measured >= self.target if self.at_least else measured <= self.target

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any]
        if self.is_ratio:
            ratio = self.ratio
            out = {
                "model": self.model,
                "baseline": self.baseline,
                "ratio": None if ratio is None else round(ratio, 4),
            }
        else:
            out = {"value": self.value}
        out.update(
            unit=self.unit,
            target=self.target,
            target_is="floor" if self.at_least else "ceiling",
            met=self.met,
            note=self.note,
        )
        out.update(self.extra)
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out
