"""The audit's metric table and its CI gates: `--fail-under` / `--fail-over` thresholds parsed, checked against
the summary, and the summary as terminal text. Standard library only."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from .errors import UserError

# name -> (per method, higher is better, what it needs, what it means)
METRICS: dict[str, tuple[bool, bool, str | None, str]] = {
    "insertion": (True, True, None, "mean insertion AUC: the target's score as the most salient pixels are added "
                                    "to the insertion baseline (higher is better)"),
    "deletion": (True, False, None, "mean deletion AUC: the target's score as the most salient pixels are "
                                    "removed to the deletion baseline (lower is better)"),
    "pointing": (True, True, "boxes", "pointing-game accuracy: share of images with boxes whose map maximum lies "
                                      "within the tolerance of a box (higher is better)"),
    "sanity": (True, True, "sanity", "1 when the method passes the randomisation sanity check, else 0"),
    "sanity_spearman": (True, False, "sanity", "mean Spearman between original maps and maps after randomising "
                                               "every weight layer (lower is better; > 0.5 fails the check)"),
    "sanity_ssim": (True, False, "sanity", "mean SSIM between original maps and maps after randomising every "
                                           "weight layer (lower is better)"),
    "top1_agreement": (False, True, "compare", "share of images whose top-1 class is the same in both models"),
    "top5_overlap": (False, True, "compare", "mean share of top-5 classes the two models have in common"),
    "drift_spearman": (True, True, "compare", "mean Spearman between the two models' maps of the same class"),
}


# ---- thresholds --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    """A CI gate: METRIC[:METHOD] must not be under (or over) VALUE."""
    metric: str
    method: str | None
    value: float
    bound: str  # "under" (fail when below) or "over" (fail when above)

    @property
    def label(self) -> str:
        return f"{self.metric}:{self.method}" if self.method else self.metric


THRESHOLD = re.compile(r"^\s*([a-z0-9_]+)(?::([^=\s]+))?\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_threshold(text: str, bound: str = "under") -> Threshold:
    """`insertion=0.3` or `insertion:grad-cam=0.3` as a Threshold; a UserError names what is wrong."""
    option = f"--fail-{bound}"
    match = THRESHOLD.match(text)
    if not match:
        raise UserError(f"{option} '{text}' is not METRIC=VALUE or METRIC:METHOD=VALUE; write e.g. "
                        f"{option} insertion=0.3.")
    metric, method, value = match.group(1), match.group(2), float(match.group(3))
    if metric not in METRICS:
        raise UserError(f"{option} names unknown metric '{metric}'; use one of {', '.join(METRICS)}.")
    per_method, higher_better, _, _ = METRICS[metric]
    if method and not per_method:
        raise UserError(f"Metric '{metric}' is one value for the whole audit; drop ':{method}' from {option}.")
    if higher_better != (bound == "under"):
        other = "over" if bound == "under" else "under"
        better = "higher" if higher_better else "lower"
        raise UserError(f"Metric '{metric}' is better when {better}; gate it with --fail-{other} {metric}={value:g}.")
    return Threshold(metric, method, value, bound)


def check_thresholds(summary: dict, thresholds: Sequence[Threshold]) -> list[str]:
    """One line per violated threshold (an unavailable value counts as violated)."""
    violations = []
    for gate in thresholds:
        per_method = METRICS[gate.metric][0]
        if per_method:
            names = [gate.method] if gate.method else list(summary["methods"])
            values = {f"{gate.metric}[{m}]": summary["methods"].get(m, {}).get(gate.metric) for m in names}
        else:
            values = {gate.metric: summary.get(gate.metric)}
        for name, value in values.items():
            if value is None or value != value:  # None or NaN: nothing measured
                violations.append(f"{name} has no value (nothing was measured for it), required {gate.bound} "
                                  f"limit {gate.value:g}")
            elif (gate.bound == "under" and value < gate.value) or (gate.bound == "over" and value > gate.value):
                violations.append(f"{name} = {value:.4f} is {gate.bound} {gate.value:g}")
    return violations


def format_summary(report: dict) -> str:
    """The summary as a few lines of text for the terminal."""
    s = report["summary"]
    lines = [f"{s['images']} images audited" + (f", {s['errors']} could not be read" if s["errors"] else "")]
    if "top1_agreement" in s:
        lines.append(f"top-1 agreement {s['top1_agreement']:.3f}  top-5 overlap {s['top5_overlap']:.3f}")
    for method, v in s["methods"].items():
        parts = [f"deletion {_fmt(v['deletion'])}", f"insertion {_fmt(v['insertion'])}"]
        if v.get("pointing_images"):
            parts.append(f"pointing {_fmt(v['pointing'])} ({v['pointing_images']} images)")
        if v.get("sanity") is not None:
            parts.append(f"sanity {'pass' if v['sanity'] else 'FAIL'} (spearman {_fmt(v['sanity_spearman'])})")
        if "drift_spearman" in v:
            parts.append(f"drift spearman {_fmt(v['drift_spearman'])}")
        lines.append(f"{method:<16} " + "  ".join(parts))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
