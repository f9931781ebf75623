"""The audit report as one self-contained HTML file: images inline as base64 PNG, inline CSS and JS.

It opens from disk with no network: a summary first (thresholds, per-method metrics, mean deletion and
insertion curves), the randomisation sanity check, then one sortable row per image (click a header).
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#556}.banner{padding:8px 12px;border-radius:6px;margin:12px 0;font-weight:600}
.ok{background:#e4f6e8;color:#17652b}.bad{background:#fde8e8;color:#9b1c1c}.warn{background:#fff4dc;color:#7a5200}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #dde;padding:4px 8px;text-align:left;
vertical-align:middle}th{background:#f3f4f8}table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#e6e8f0}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}td.num{text-align:right;font-variant-numeric:tabular-nums}
img.thumb{width:128px;height:auto;image-rendering:pixelated;display:block}
.strip{display:flex;gap:8px;flex-wrap:wrap}.strip figure{margin:0;font-size:12px;max-width:128px}
.strip figcaption{word-break:break-all}.curves{display:flex;gap:16px;flex-wrap:wrap}
.curves figure{margin:0}.hit{color:#17652b;font-weight:600}.miss{color:#9b1c1c;font-weight:600}
dt{font-weight:600}dd{margin:0 0 6px 16px}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th) {
    th.addEventListener('click', function () {
      var col = th.cellIndex, body = table.tBodies[0];
      var dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
      table.querySelectorAll('thead th').forEach(function (o) { o.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', dir);
      var key = function (row) {
        var cell = row.cells[col]; if (!cell) return '';
        return cell.hasAttribute('data-value') ? cell.getAttribute('data-value') : cell.textContent.trim();
      };
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = rows.every(function (r) { var k = key(r); return k === '' || isFinite(Number(k)); });
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') return (x === '') - (y === '');
        var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return dir === 'ascending' ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def write_html(report: dict, thumbs: dict[str, str], path: str | Path) -> Path:
    """Write the audit report (as `audit.Audit.report()` builds it) with its base64 thumbnails; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(render_html(report, thumbs), encoding="utf-8")
    temp.replace(path)
    return path


def render_html(report: dict, thumbs: dict[str, str]) -> str:
    """The whole report as one HTML string."""
    body = "\n".join([_header(report), _summary(report), _sanity(report, thumbs), _images(report, thumbs),
                      _definitions(report)])
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>onnxplain audit</title><style>{CSS}</style></head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")


# ---- sections -----------------------------------------------------------------------------------
def _header(report: dict) -> str:
    models = " vs ".join(f"<code>{_e(m)}</code>" for m in report["models"])
    state = "" if report["complete"] else \
        '<div class="banner warn">Incomplete: the audit stopped early; this report holds what was done before.</div>'
    o = report["options"]
    return (f"<header><h1>onnxplain audit</h1><p class='meta'>{models} &middot; {report['summary']['images']} images"
            f" &middot; methods {_e(', '.join(o['methods']))} &middot; device {_e(report['device'])} &middot; "
            f"{_e(report['started'])} to {_e(report['finished'])}</p>{state}</header>")


def _summary(report: dict) -> str:
    s, o = report["summary"], report["options"]
    parts = ["<section id='summary'><h2>Summary</h2>"]
    if report["thresholds"]:
        if report["violations"]:
            items = "".join(f"<li>{_e(v)}</li>" for v in report["violations"])
            parts.append(f"<div class='banner bad'>Thresholds violated:<ul>{items}</ul></div>")
        else:
            gates = ", ".join(f"{t['metric']} {'&ge;' if t['bound'] == 'under' else '&le;'} {t['value']:g}"
                              for t in report["thresholds"])
            parts.append(f"<div class='banner ok'>All thresholds met ({gates}).</div>")
    if s.get("errors"):
        parts.append(f"<div class='banner warn'>{s['errors']} image(s) could not be read: "
                     + _e(", ".join(e["image"] for e in report["errors"])) + "</div>")
    for method, why in report.get("drift_skipped", {}).items():
        parts.append(f"<div class='banner warn'>No drift for {_e(method)}: {_e(why)}.</div>")
    if "top1_agreement" in s:
        parts.append(f"<p>Against <code>{_e(report['models'][-1])}</code>: top-1 agreement "
                     f"<b>{_f(s['top1_agreement'])}</b>, top-5 overlap <b>{_f(s['top5_overlap'])}</b>.</p>")
    columns = ["method", "deletion AUC &darr;", "insertion AUC &uarr;"]
    has_pointing = any(v.get("pointing") is not None or v.get("pointing_images") for v in s["methods"].values())
    has_sanity = any("sanity" in v for v in s["methods"].values())
    has_drift = any("drift_spearman" in v for v in s["methods"].values())
    columns += ["pointing &uarr;"] if has_pointing else []
    columns += ["sanity check", "sanity Spearman &darr;", "sanity SSIM &darr;"] if has_sanity else []
    columns += ["drift Spearman &uarr;"] if has_drift else []
    rows = []
    for method, v in s["methods"].items():
        cells = [f"<td>{_e(method)}</td>", _num(v["deletion"]), _num(v["insertion"])]
        if has_pointing:
            cells.append(_num(v.get("pointing"), f" ({v.get('pointing_images', 0)})"))
        if has_sanity:
            passed = v.get("sanity")
            verdict = "n/a" if passed is None else ("<span class='hit'>pass</span>" if passed else
                                                    "<span class='miss'>FAIL</span>")
            cells += [f"<td data-value='{'' if passed is None else passed}'>{verdict}</td>",
                      _num(v.get("sanity_spearman")), _num(v.get("sanity_ssim"))]
        if has_drift:
            cells.append(_num(v.get("drift_spearman")))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(_table("summary-table", columns, rows))
    baselines = f"deletion to <i>{_e(o['deletion_baseline'])}</i>, insertion from <i>{_e(o['insertion_baseline'])}</i>"
    parts.append(f"<p class='meta'>Mean deletion (red) and insertion (blue) curves: x = share of pixels moved "
                 f"(0 to 1), y = target {'probability' if o['probability'] else 'logit'}, {o['steps']} steps, "
                 f"{baselines}.</p><div class='curves'>")
    for method, v in s["methods"].items():
        parts.append(f"<figure>{_curve_svg(v['mean_curves'])}<figcaption>{_e(method)}</figcaption></figure>")
    parts.append("</div></section>")
    return "\n".join(parts)


def _sanity(report: dict, thumbs: dict[str, str]) -> str:
    if not report["sanity"]:
        return ""
    parts = ["<section id='sanity'><h2>Randomisation sanity check</h2><p class='meta'>Weights of the model file "
             "are redrawn layer by layer from the output down (cascade) and one layer at a time (independent); "
             "maps that barely change do not depend on what the model learned (Adebayo et al., 2018).</p>"]
    for method, result in report["sanity"].items():
        css = "ok" if result["passed"] else "bad"
        parts.append(f"<h3>{_e(method)}</h3><div class='banner {css}'>{_e(result['verdict'])}</div>")
        figures = [_figure(thumbs.get(f"sanity/{method}/original"), "original")]
        for k, step in enumerate(result["steps"]):
            if step["mode"] == "cascade":
                figures.append(_figure(thumbs.get(f"sanity/{method}/{k}"), f"down to {step['layer']}"))
        parts.append("<div class='strip'>" + "".join(figures) + "</div>")
        rows = [f"<tr><td>{_e(step['mode'])}</td><td>{_e(step['layer'])}</td><td class='num'>{len(step['randomised'])}"
                f"</td>{_num(step['spearman'])}{_num(step['ssim'])}</tr>" for step in result["steps"]]
        parts.append(_table(f"sanity-{_slug(method)}", ["mode", "lowest layer randomised", "layers randomised",
                                                        "Spearman", "SSIM"], rows))
    parts.append("</section>")
    return "\n".join(parts)


def _images(report: dict, thumbs: dict[str, str]) -> str:
    methods = report["options"]["methods"]
    compare = any("compare" in r for r in report["images"])
    pointing = any("boxes" in r for r in report["images"])
    columns = ["image", "prediction", "confidence"]
    if compare:
        columns += ["other model", "top-1 agrees", "top-5 overlap"]
    for m in methods:
        columns += [f"{_e(m)}", f"{_e(m)} deletion", f"{_e(m)} insertion"]
        columns += [f"{_e(m)} pointing"] if pointing else []
        columns += [f"{_e(m)} drift Spearman"] if compare else []
    rows = []
    for record in report["images"]:
        key = record["id"]
        cells = [f"<td data-value='{_e(record['image'])}'>{_img(thumbs.get(f'{key}/image'))}{_e(record['image'])}</td>",
                 f"<td>{record['prediction']['index']} {_e(record['prediction']['name'])}</td>",
                 _num(record["prediction"]["probability"])]
        if compare:
            c = record["compare"]
            cells += [f"<td>{c['prediction']['index']} {_e(c['prediction']['name'])}</td>",
                      f"<td data-value='{int(c['top1_agree'])}'>{'yes' if c['top1_agree'] else 'NO'}</td>",
                      _num(c["top5_overlap"])]
        for m in methods:
            entry = record["methods"].get(m, {})
            cells += [f"<td data-value=''>{_img(thumbs.get(f'{key}/{m}'))}</td>",
                      _num(entry.get("deletion")), _num(entry.get("insertion"))]
            if pointing:
                hit = entry.get("pointing")
                text = "" if hit is None else \
                    ("<span class='hit'>hit</span>" if hit else "<span class='miss'>miss</span>")
                cells.append(f"<td data-value='{'' if hit is None else int(hit)}'>{text}</td>")
            if compare:
                cells.append(_num(record["compare"]["spearman"].get(m)))
        rows.append(f"<tr data-image='{_e(record['image'])}'>" + "".join(cells) + "</tr>")
    order = "images that drift most first" if compare else "by name"
    return (f"<section id='images'><h2>Images</h2><p class='meta'>Rows {order}; click a column header to sort. "
            "Overlays show each method's map for the predicted class"
            + ("; green boxes are the ground truth, the white ring the map's maximum" if pointing else "")
            + ".</p>" + _table("images-table", columns, rows) + "</section>")


def _definitions(report: dict) -> str:
    items = "".join(f"<dt>{_e(name)}</dt><dd>{_e(text)}</dd>" for name, text in report["metrics"].items())
    return (f"<section id='metrics'><h2>Metrics</h2><p class='meta'>Names as <code>--fail-under</code> / "
            f"<code>--fail-over</code> take them (METRIC or METRIC:METHOD).</p><dl>{items}</dl></section>")


# ---- pieces -------------------------------------------------------------------------------------
def _table(table_id: str, columns: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{c}</th>" for c in columns)
    return (f"<table id='{table_id}' class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _curve_svg(curves: dict[str, list[float]], width: int = 220, height: int = 130) -> str:
    """Deletion (red) and insertion (blue) curves over the fraction of pixels, as inline SVG."""
    values = [v for c in curves.values() for v in c]
    if not values:
        return ""
    low, high = min(0.0, min(values)), max(1.0, max(values))
    pad = 6
    lines = []
    for kind, colour in (("deletion", "#c0392b"), ("insertion", "#2460a7")):
        c = curves.get(kind) or []
        if len(c) < 2:
            continue
        points = " ".join(f"{pad + i / (len(c) - 1) * (width - 2 * pad):.1f},"
                          f"{height - pad - (v - low) / ((high - low) or 1) * (height - 2 * pad):.1f}"
                          for i, v in enumerate(c))
        lines.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{points}'/>")
    frame = (f"<rect x='{pad}' y='{pad}' width='{width - 2 * pad}' height='{height - 2 * pad}' fill='none' "
             "stroke='#ccd'/>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"role='img' aria-label='deletion and insertion curves'>{frame}{''.join(lines)}</svg>")


def _figure(data: str | None, caption: str) -> str:
    return f"<figure>{_img(data)}<figcaption>{_e(caption)}</figcaption></figure>"


def _img(data: str | None) -> str:
    return f"<img class='thumb' alt='' src='data:image/png;base64,{data}'>" if data else ""


def _num(value: Any, suffix: str = "") -> str:
    if value is None or value != value:
        return "<td class='num' data-value=''>n/a</td>"
    return f"<td class='num' data-value='{float(value):.6g}'>{float(value):.3f}{_e(suffix)}</td>"


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
