"""One benchmark figure: a model/baseline ratio or an absolute value, against its target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Ratio figures: met when median model time / median baseline time ≤ target.
RATIO_TARGETS: dict[str, float] = {
    "attr_1tib_vs_4k": 3,
    "zero_vs_punch_hole": 1.5,
    "fill_vs_memset": 1.5,
    "host_access_vs_mmap": 3,
    "kvm_run_vs_c": 1.5,
}
#: Value figures: met when the value ≤ target, or ≥ target for those in ``AT_LEAST``.
VALUE_TARGETS: dict[str, float] = {"explore_states_per_s": 20000, "rss_1tib_mib": 150}
AT_LEAST = frozenset({"explore_states_per_s"})
#: Units of the value figures; ratio figures are model/baseline, their times in seconds.
VALUE_UNITS: dict[str, str] = {"explore_states_per_s": "states/s", "rss_1tib_mib": "MiB"}
NAMES: tuple[str, ...] = (*RATIO_TARGETS, *VALUE_TARGETS)


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
    def ratio(self) -> float | None:
        if self.model is None or self.baseline is None or self.baseline <= 0:
            return None
        return self.model / self.baseline

    @property
    def met(self) -> bool:
        measured = self.ratio if self.is_ratio else self.value
        if self.skipped is not None or measured is None:
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
            unit="model/baseline" if self.is_ratio else VALUE_UNITS[self.name],
            better="higher" if self.at_least else "lower",
            target=self.target,
            met=self.met,
            note=self.note,
        )
        if self.is_ratio:
            out["time_unit"] = "s"
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out
