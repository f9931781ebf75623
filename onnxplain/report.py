"""The audit report as one self-contained HTML file: images inline as base64 PNG, inline CSS and JS.

It opens from disk with no network: a summary first (thresholds, per-method metrics, mean deletion and
insertion curves), the randomisation sanity check, then one sortable row per image (click a header).
The markup is templates/audit.html.j2, rendered by Jinja2 with autoescape on: every value from the report
(file names, method and layer names, messages) is escaped there, so this module only prepares values.
"""
from __future__ import annotations

import functools
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
CURVES = (("deletion", "#c0392b"), ("insertion", "#2460a7"))  # curve kind and its colour


def write_html(report: dict, thumbs: dict[str, str], path: str | Path) -> Path:
    """Write the audit report (as `audit.Audit.report()` builds it) with its base64 thumbnails; returns the path."""
    from .writing import write_text
    return write_text(path, render_html(report, thumbs))


def render_html(report: dict, thumbs: dict[str, str]) -> str:
    """The whole report as one HTML string."""
    return _template().render(report=report, thumbs=thumbs, has=columns(report), polylines=polylines,
                              y_ticks=y_ticks, curve_colours=CURVES)


def columns(report: dict) -> dict[str, bool]:
    """Which optional columns the tables have: pointing, sanity and drift (summary); compare and boxes (images)."""
    methods = report["summary"]["methods"].values()
    return {"pointing": any(v.get("pointing") is not None or v.get("pointing_images") for v in methods),
            "sanity": any("sanity" in v for v in methods),
            "drift": any("drift_spearman" in v for v in methods),
            "compare": any("compare" in r for r in report["images"]),
            "boxes": any("boxes" in r for r in report["images"])}


def polylines(curves: dict[str, list[float]], width: int, height: int, pad: int) -> list[tuple[str, str]] | None:
    """Deletion and insertion curves over the fraction of pixels as (colour, SVG points) in a width x height box
    (y from min(0, lowest) to max(1, highest)); None when there is no value to draw."""
    values = [v for c in curves.values() for v in c]
    if not values:
        return None
    low, high = min(0.0, min(values)), max(1.0, max(values))
    lines = []
    for kind, colour in CURVES:
        c = curves.get(kind) or []
        if len(c) >= 2:
            lines.append((colour, " ".join(f"{pad + i / (len(c) - 1) * (width - 2 * pad):.1f},"
                                           f"{height - pad - (v - low) / ((high - low) or 1) * (height - 2 * pad):.1f}"
                                           for i, v in enumerate(c))))
    return lines


def y_ticks(curves: dict[str, list[float]], height: int, pad: int) -> list[tuple[str, str]]:
    """(label, SVG y) of the y axis's ticks at the low end, middle and high end of the range `polylines` uses."""
    values = [v for c in curves.values() for v in c] or [0.0]
    low, high = min(0.0, min(values)), max(1.0, max(values))
    return [(f"{low + t * (high - low):.2g}", f"{height - pad - t * (height - 2 * pad):.1f}") for t in (0, 0.5, 1)]


def slug(text: str) -> str:
    """`text` with every character but letters and digits as '-' (an HTML id)."""
    return "".join(ch if ch.isalnum() else "-" for ch in str(text))


@functools.cache
def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["slug"] = slug
    return env.get_template("audit.html.j2")
