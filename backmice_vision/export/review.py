"""The review page of a batch (``OUT_DIR/index.html``) and the notebook view of one result.

The page is one self-contained HTML file: no server, no network, only relative links into ``OUT_DIR``,
so it works from ``file://`` and after the folder is copied elsewhere. The run's data is embedded once
as compact JSON (:func:`page_data`) and a few lines of plain JavaScript draw the table from it, so the
page stays small (about 150 bytes per series, see ``tests/test_review.py``). What it shows:

* a header with the run's settings (models, thresholds, formats) and totals, summary plots (inline SVG:
  confidences, findings per series, longest diameters) and links to ``backmice evaluate`` plots when
  ``OUT_DIR/evaluation.json`` or ``OUT_DIR/*/evaluation.json`` exists;
* one row per series: a label with no patient identifier (modality, Series Number and Description,
  Study Date, shortened UIDs with the full value on hover), status, series probability, and per finding
  the longest diameter (mm), depth (mm), side, confidence and fascia-defect probability; sortable by
  clicking the headers, filterable (text, status, minimum confidence, fascia defect, failures only);
* a click on a row opens the series: montage and overlays at full size, links to ``report.json``, SEG,
  SR and Secondary Captures (previous / next with the arrow keys);
* every failure and ignored input with its reason.

The view state (sort, filters, open series) lives in the URL fragment, e.g.
``index.html#sort=conf&dir=desc&defect=1&open=<study>/<series>``, so a view can be bookmarked.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..batch import BatchReport, SeriesOutcome
    from ..types import DetectionResult

# one letter per fixed output name, "o<k>" / "c<k>" for the overlay PNG / Secondary Capture of frame k
_OUTPUT_CODES = {
    "montage.png": "m",
    "report.json": "j",
    "seg.dcm": "g",
    "sr.dcm": "r",
    "seg_probability.dcm": "q",
}
_FRAME_OUTPUT = re.compile(r"^(overlay_k([0-9]+)\.png|sc_k([0-9]+)\.dcm)$")
_STATUS_CODES = {"done": "d", "skipped": "s", "failed": "f"}
_SIDE_CODES = {"left": "L", "right": "R"}


def _num(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def _encode_outputs(outcome: SeriesOutcome) -> str:
    """The series' output names (relative to its folder), space-separated, known names as short codes."""
    prefix = outcome.key + "/"
    codes = []
    for rel in outcome.outputs:
        if not rel.startswith(prefix):
            continue
        name = rel[len(prefix) :]
        match = _FRAME_OUTPUT.match(name)
        if match:
            codes.append(f"o{int(match[2])}" if match[2] else f"c{int(match[3])}")
        else:
            codes.append(_OUTPUT_CODES.get(name, name))
    return " ".join(codes)


def page_data(report: BatchReport, out_dir: Path) -> dict[str, Any]:
    """What the page script reads (compact arrays; field order in ``_PAGE_SCRIPT``'s ``rows``):

    ``studies``: ``[folder, full UID or "" when equal to the folder, study date]``;
    ``series``: ``[study index, folder, full UID or "", modality, series number, description, status code,
    series probability, seconds, error, outputs (:func:`_encode_outputs`), findings]``; each finding
    ``[id, confidence, longest diameter mm, depth mm, side code, defect probability, defect present 0/1,
    key frame k]``; ``files``: ``[name, "failed" or "ignored", reason index]`` with ``reasons`` the
    distinct reasons (an archive can hold thousands of ignored files with the same one)."""
    studies: dict[str, int] = {}
    study_rows: list[list[Any]] = []
    series_rows: list[list[Any]] = []
    for o in report.outcomes:
        study, _, folder = o.key.partition("/")
        if study not in studies:
            studies[study] = len(study_rows)
            study_rows.append([study, "" if o.study_uid in ("", study) else o.study_uid, o.study_date])
        elif o.study_date and not study_rows[studies[study]][2]:
            study_rows[studies[study]][2] = o.study_date
        findings = [
            [
                f["id"],
                f["confidence"],
                f["longest_diameter_mm"],
                f["depth_mm"],
                _SIDE_CODES.get(f["side"] or "", ""),
                f["fascia_defect_probability"],
                int(bool(f["fascia_defect_present"])),
                f.get("frame"),
                int(bool(f.get("truncated", False))),
            ]
            for f in o.findings
        ]
        series_rows.append(
            [
                studies[study],
                folder,
                "" if o.series_uid in ("", folder) else o.series_uid,
                o.modality,
                o.series_number,
                o.description,
                _STATUS_CODES.get(o.status, o.status),
                _num(o.series_probability, 4),
                _num(o.seconds, 1),
                o.error,
                _encode_outputs(o),
                findings,
            ]
        )
    reasons: dict[str, int] = {}
    files = []
    listed = [(Path(p).name, "failed", r) for p, r in report.unreadable]
    listed += [(name, "ignored", r) for name, r in report.ignored_rows]
    for name, status, reason in listed:
        files.append([name, status, reasons.setdefault(reason, len(reasons))])
    return {
        "studies": study_rows,
        "series": series_rows,
        "files": files,
        "reasons": list(reasons),
    }


def _totals(report: BatchReport) -> list[tuple[str, str]]:
    counts = {s: sum(o.status == s for o in report.outcomes) for s in ("done", "skipped", "failed")}
    findings = [f for o in report.outcomes for f in o.findings]
    positive = sum(bool(o.findings) for o in report.outcomes)
    defects = sum(any(f["fascia_defect_present"] for f in o.findings) for o in report.outcomes)
    rate = len(report.outcomes) / report.seconds * 60 if report.seconds > 0 else 0.0
    return [
        ("series", f"{len(report.outcomes)}: {counts['done']} done, {counts['skipped']} kept (resume), "
         f"{counts['failed']} failed"),
        ("findings", f"{len(findings)} in {positive} series, {defects} series with a fascia defect"),
        ("files", f"{len(report.unreadable)} unreadable, {len(report.ignored_rows)} ignored"),
        ("time", f"{report.seconds:.1f} s ({rate:.1f} series/min)"),
    ]  # fmt: skip


def _evaluation_links(out_dir: Path) -> list[tuple[str, str]]:
    """``(label, relative path)`` of the plots of ``backmice evaluate`` outputs in or one level under
    ``out_dir`` (FROC, reliability per modality, the Markdown summary), those that exist."""
    links: list[tuple[str, str]] = []
    for meta in [out_dir / "evaluation.json", *sorted(out_dir.glob("*/evaluation.json"))]:
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        where = meta.parent.relative_to(out_dir).as_posix()
        names = [("FROC", info.get("froc_png"))]
        for modality, m in sorted((info.get("modalities") or {}).items()):
            if isinstance(m, dict):
                names.append((f"reliability {modality}", m.get("reliability_png")))
        names.append(("summary", "evaluation.md"))
        for label, name in names:
            if isinstance(name, str) and (meta.parent / name).is_file():
                rel = name if where == "." else f"{where}/{name}"
                links.append((label if where == "." else f"{where}: {label}", rel))
    return links


def bar_chart_svg(title: str, labels: list[str], counts: list[int], xlabel: str) -> str:
    """A small inline SVG bar chart (320 x 170 px) of ``counts`` per ``labels``; hover shows each count."""
    width, height, left, right, top, bottom = 320, 170, 34, 8, 22, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts, default=0)
    step = max(1, math.ceil(peak / 4))
    ymax = max(step * 4, 1)
    bar = plot_w / max(1, len(counts))
    parts = [
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}"><text x="{left}" y="14" class="t">{html.escape(title)}</text>'
    ]
    for tick in range(0, ymax + 1, step):
        y = top + plot_h - tick / ymax * plot_h
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.0f}" y2="{y:.0f}" class="g"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.0f}" class="y">{tick}</text>')
    every = max(1, math.ceil(len(labels) / 8))
    for n, (label, count) in enumerate(zip(labels, counts, strict=True)):
        x = left + n * bar
        h = count / ymax * plot_h
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar - 2, 1):.1f}" '
            f'height="{h:.1f}">'
            f"<title>{html.escape(label)}: {count}</title></rect>"
        )
        if n % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.0f}" y="{top + plot_h + 14}" class="x">{html.escape(label)}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" class="x">{html.escape(xlabel)}</text></svg>'
    )
    return "".join(parts)


def summary_plots(report: BatchReport) -> list[str]:
    """The page's plots: confidence of every finding, findings per analysed series, longest diameters."""
    findings = [f for o in report.outcomes for f in o.findings]
    conf = [0] * 10
    for f in findings:
        conf[min(int(f["confidence"] * 10), 9)] += 1
    per_series = [0] * 6
    for o in report.outcomes:
        if o.status != "failed":
            per_series[min(len(o.findings), 5)] += 1
    sizes = [f["longest_diameter_mm"] for f in findings if f["longest_diameter_mm"] is not None]
    size_bins = [0] * 12
    for s in sizes:
        size_bins[min(int(s // 5), 11)] += 1
    return [
        bar_chart_svg("Confidence of findings", [f"{b / 10:.1f}" for b in range(10)], conf, "confidence"),
        bar_chart_svg("Findings per series", ["0", "1", "2", "3", "4", "5+"], per_series, "findings"),
        bar_chart_svg(
            "Longest diameter", [f"{5 * b}" for b in range(11)] + ["55+"], size_bins, "mm (5 mm bins)"
        ),
    ]


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` (header strings can hold any text)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def review_page(report: BatchReport, out_dir: Path) -> str:
    """The review page of ``report`` for ``out_dir/index.html`` (see the module docstring)."""
    settings = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in report.settings.items()
    )
    totals = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _totals(report)
    )
    links = _evaluation_links(out_dir)
    evaluation = ""
    if links:
        plots = "".join(
            f'<a href="{html.escape(rel)}"><img src="{html.escape(rel)}" alt="{html.escape(label)}">'
            f"<span>{html.escape(label)}</span></a>"
            for label, rel in links
            if rel.endswith(".png")
        )
        texts = " ".join(
            f'<a href="{html.escape(rel)}">{html.escape(label)}</a>'
            for label, rel in links
            if not rel.endswith(".png")
        )
        evaluation = f'<div class="plot eval"><h2>Evaluation {texts}</h2><div class="evl">{plots}</div></div>'
    replacements = {
        "@CSS@": _PAGE_CSS,
        "@SCRIPT@": _PAGE_SCRIPT,
        "@CREATED@": html.escape(time.strftime("%Y-%m-%d %H:%M")),
        "@TOTALS@": totals,
        "@SETTINGS@": settings,
        "@PLOTS@": "".join(summary_plots(report)),
        "@EVALUATION@": evaluation,
        "@DATA@": _json_for_script(page_data(report, out_dir)),
    }
    return re.sub(
        r"@[A-Z]+@", lambda m: replacements[m[0]], _PAGE_TEMPLATE
    )  # one pass: values stay as they are


# --- notebook view -----------------------------------------------------------------------------------


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def result_html(result: DetectionResult) -> str:
    """HTML of one result for Jupyter: the key-image montage (inline PNG) and a findings table."""
    from PIL import Image

    from ..render import png_images

    _, montage = png_images(result)[-1]
    buf = io.BytesIO()
    Image.fromarray(montage, "RGB").save(buf, format="PNG", compress_level=6)
    image = base64.b64encode(buf.getvalue()).decode("ascii")
    series = result.series
    calibrated = series.calibrated
    rows = "".join(
        f"<tr><td>#{n.id}</td><td>{'&gt;' if n.truncated and calibrated and n.longest_diameter_mm else ''}"
        f"{_cell(n.longest_diameter_mm if calibrated else None, '.1f')}</td>"
        f"<td>{_cell(n.depth_mm if calibrated else None, '.1f')}</td><td>{html.escape(n.side or '–')}</td>"
        f"<td>{n.confidence:.2f}</td><td>{n.fascia_defect.probability:.2f}"
        f"{' (defect)' if n.fascia_defect.present else ''}</td><td>{round(n.center_voxel[0])}</td></tr>"
        for n in result.nodules
    )
    table = (
        "<table><thead><tr><th>finding</th><th>longest diameter (mm)</th><th>depth (mm)</th><th>side</th>"
        "<th>confidence</th><th>fascia defect P</th><th>frame k</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if result.nodules
        else "<p>No finding.</p>"
    )
    shape = "×".join(str(v) for v in series.shape)
    return (
        '<div class="backmice-result">'
        f"<p><b>{html.escape(series.modality)}</b> series {shape}, P(back mouse) "
        f"{result.series_probability:.2f}, {len(result.nodules)} finding(s), model "
        f"{html.escape(result.model_id)} {html.escape(result.model_version)}"
        f"{'' if calibrated else ' (uncalibrated: no mm)'}</p>"
        f'<img src="data:image/png;base64,{image}" style="max-width:100%" alt="key images">{table}</div>'
    )


# --- page template -----------------------------------------------------------------------------------

_PAGE_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="color-scheme" content="light">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>backmice batch review</title><style>@CSS@</style></head><body>
<header><h1>backmice batch review</h1><p class="note">Research use only, not for diagnosis.
Written @CREATED@. Click a row to see its overlays; sort by clicking a column header.</p></header>
<section class="top">
<div class="card totals"><h2>Totals</h2><table class="kv">@TOTALS@</table></div>
<div class="card"><h2>Settings</h2><table class="kv">@SETTINGS@</table></div>
</section>
<section class="plots">@PLOTS@@EVALUATION@</section>
<form id="filters" onsubmit="return false">
<input id="q" type="search" placeholder="filter: modality, description, UID …" aria-label="text filter">
<label>status <select id="status"><option value="">all</option><option value="done">done</option>
<option value="skipped">kept</option><option value="failed">failed</option></select></label>
<label>confidence ≥ <input id="minconf" type="number" min="0" max="1" step="0.05" value="0"></label>
<label><input id="findings" type="checkbox"> with findings</label>
<label><input id="defect" type="checkbox"> fascia defect</label>
<button id="failures" type="button">failures only</button><button id="reset" type="button">reset</button>
<span id="count"></span></form>
<table id="series"><colgroup><col class="c-img"><col class="c-label"><col class="c-status"><col class="c-p">
<col class="c-find"><col class="c-sec"></colgroup><thead><tr>
<th>key image</th><th data-sort="label">series</th><th data-sort="status">status</th>
<th data-sort="prob" title="series probability of a back mouse">P(series)</th>
<th class="fh"><div class="fr"><span data-sort="n">#</span><span data-sort="size">longest mm</span>
<span data-sort="depth">depth mm</span><span>side</span><span data-sort="conf">confidence</span>
<span data-sort="defect" title="fascia-defect probability; \u25cf: defect present">defect P \u25cf</span>
</div></th><th data-sort="secs">s</th></tr></thead>
<tbody></tbody></table>
<section id="problems"></section>
<div id="detail" hidden><div class="panel" role="dialog" aria-modal="true"><div class="bar">
<h2 id="d-title"></h2><span id="d-pos"></span><button id="d-prev" type="button">◀ previous</button>
<button id="d-next" type="button">next ▶</button><button id="d-close" type="button">✕ close</button></div>
<div id="d-body"></div></div></div>
<script type="application/json" id="data">@DATA@</script>
<script>@SCRIPT@</script></body></html>
"""

_PAGE_CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 24px 40px;color:#1d2430;
background:#f6f7f9}
h1{font-size:22px;margin:18px 0 2px}h2{font-size:15px;margin:0 0 6px}.note{margin:0 0 12px;color:#5b6472}
.top{display:flex;gap:16px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;flex:1 1 420px}
.card.totals{flex:0 1 440px}
.kv th{text-align:left;color:#5b6472;font-weight:600;padding:1px 12px 1px 0;vertical-align:top;
white-space:nowrap}
.kv td{padding:1px 0;word-break:break-word}.plots{display:flex;gap:16px;flex-wrap:wrap;margin:14px 0}
.plot{background:#fff;border:1px solid #dde1e6;border-radius:6px}.plot rect{fill:#0072b2}
.plot .g{stroke:#e4e7eb}.plot text{font-size:10px;fill:#5b6472}
.plot .t{font-size:12px;font-weight:600;fill:#1d2430}.plot .y{text-anchor:end}.plot .x{text-anchor:middle}
.eval{padding:4px 10px;height:170px}.eval h2{font-size:12px;margin:0 0 4px}
.eval h2 a{font-weight:400;margin-left:8px}
.evl{display:flex;gap:10px}.evl a{display:flex;flex-direction:column;align-items:center;font-size:11px}
.evl img{height:126px}
#filters{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:14px;align-items:center;
background:#e9edf2;border:1px solid #d3d9e0;border-radius:6px;padding:8px 12px;margin-bottom:8px}
#filters input[type=number]{width:64px}#q{width:260px}#count{margin-left:auto;color:#5b6472}
button{cursor:pointer}
table#series{width:100%;min-width:1110px;border-collapse:collapse;table-layout:fixed;background:#fff}
#series th{position:sticky;top:50px;background:#f0f2f5;text-align:left;font-weight:600;padding:6px 8px;
border-bottom:2px solid #cfd5dc;z-index:1}
#series th[data-sort],#series span[data-sort]{cursor:pointer}
#series th[data-sort]:hover,#series span[data-sort]:hover{color:#0072b2}
.sorted::after{content:" \\25B2"}.sorted.desc::after{content:" \\25BC"}
#series td{border-bottom:1px solid #e4e7eb;padding:6px 8px;vertical-align:top}
#series tbody tr{cursor:pointer}#series tbody tr:hover td{background:#f2f7fc}
.c-img{width:190px}.c-label{width:270px}.c-status{width:80px}.c-p{width:80px}.c-sec{width:56px}
td.thumb img{max-width:174px;max-height:100px;display:block;border-radius:3px;background:#000}
.lab{font-weight:600;overflow-wrap:anywhere}
.mod{display:inline-block;background:#1d2430;color:#fff;border-radius:3px;padding:0 5px;margin-right:6px;
font-size:12px}
.sub{color:#5b6472;font-size:12px;overflow-wrap:anywhere}.uid{border-bottom:1px dotted #8a929e;cursor:help}
.st{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;background:#e4e7eb}
.st-done{background:#d9efe2;color:#135c32}.st-skipped{background:#e0e8f5;color:#24467a}
.st-failed{background:#fbdcdc;color:#8a1c1c}
.fr{display:grid;grid-template-columns:28px 84px 70px 44px 84px minmax(72px,1fr);gap:0 6px;
align-items:baseline}
.fh .fr{align-items:end}.find .fr{padding:1px 0}.find .fr+.fr{border-top:1px dashed #e4e7eb}
.num{font-variant-numeric:tabular-nums}.dot{color:#0072b2;font-weight:700}.none{color:#8a929e}
.err{color:#8a1c1c;overflow-wrap:anywhere}tr.failed td{background:#fff7f7}
#problems table{border-collapse:collapse;background:#fff;width:100%}
#problems td,#problems th{text-align:left;border-bottom:1px solid #e4e7eb;padding:4px 8px;vertical-align:top}
#problems h2{margin-top:22px}
#detail{position:fixed;inset:0;background:rgba(20,24,32,.55);z-index:5;display:flex;justify-content:center}
#detail[hidden]{display:none}
.panel{background:#fff;margin:16px;border-radius:8px;width:min(1500px,100%);max-height:calc(100vh - 32px);
overflow:auto;padding:0 18px 18px}
.bar{position:sticky;top:0;background:#fff;display:flex;gap:10px;align-items:center;padding:12px 0;
border-bottom:1px solid #e4e7eb;z-index:1}
.bar h2{margin:0;flex:1;font-size:17px}#d-pos{color:#5b6472}.links a{margin-right:14px}
.dt{border-collapse:collapse;margin:8px 0 12px}
.dt th,.dt td{border:1px solid #dde1e6;padding:3px 10px;text-align:left}.uids{font-size:12px;color:#5b6472}
figure{margin:14px 0}figure img{max-width:100%;display:block;background:#000}
figcaption{color:#5b6472;font-size:12px}
"""

_PAGE_SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const $ = s => document.querySelector(s);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
const CODES = {m: "montage.png", j: "report.json", g: "seg.dcm", r: "sr.dcm", q: "seg_probability.dcm"};
const STATUS = {d: "done", s: "skipped", f: "failed"};
const SIDE = {L: "left", R: "right", "": "\u2013"};
const pad = k => String(k).padStart(4, "0");
function outputName(c) {
  if (CODES[c]) return CODES[c];
  if (/^o\d+$/.test(c)) return "overlay_k" + pad(c.slice(1)) + ".png";
  if (/^c\d+$/.test(c)) return "sc_k" + pad(c.slice(1)) + ".dcm";
  return c;
}
const short = u => u.length > 14 ? "\u2026" + u.slice(-10) : u;
const fmt = (v, d) => v === null || v === undefined ? "\u2013" : v.toFixed(d);
const date = d => d ? d.slice(0, 4) + "-" + d.slice(4, 6) + "-" + d.slice(6, 8) : "";
const most = (a, k) => a.reduce((m, x) => x[k] !== null && x[k] > m ? x[k] : m, -1);
const least = (a, k) => a.reduce((m, x) => x[k] !== null && x[k] < m ? x[k] : m, 1e9);
const rows = D.series.map((s, i) => {
  const [st, folder, uid, mod, num, desc, status, prob, secs, err, outs, finds] = s;
  const study = D.studies[st];
  const f = finds.map(([id, conf, size, depth, side, defp, defect, frame, cut]) =>
    ({id, conf, size, depth, side: SIDE[side], defp, defect, frame, cut}));
  const r = {i, key: study[0] + "/" + folder, studyUid: study[1] || study[0], seriesUid: uid || folder,
    date: date(study[2]), mod, num, desc: desc || "", status: STATUS[status] || status, prob, secs, err,
    files: outs ? outs.split(" ").map(outputName) : [], f};
  r.title = [num === null ? "" : "#" + num, r.desc].filter(Boolean).join(" ");
  r.label = ((mod || "?") + " " + r.title).trim();
  r.text = [r.label, r.date, r.key, r.status, err].join(" ").toLowerCase();
  r.sort = {label: r.label.toLowerCase(), status: r.status, prob: prob === null ? -1 : prob, n: f.length,
    conf: most(f, "conf"), size: most(f, "size"), defect: most(f, "defp"), depth: least(f, "depth"),
    secs: secs || 0};
  return r;
});
const byKey = new Map(rows.map(r => [r.key, r]));
const DEFAULT = {q: "", status: "", minconf: "0", findings: "", defect: "", sort: "", dir: "asc", open: ""};
let state = {...DEFAULT}, shown = [];

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state = {...DEFAULT};
  for (const k of Object.keys(DEFAULT)) if (p.has(k)) state[k] = p.get(k);
  $("#q").value = state.q; $("#status").value = state.status; $("#minconf").value = state.minconf;
  $("#findings").checked = state.findings === "1"; $("#defect").checked = state.defect === "1";
}
function writeHash() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) if (v !== DEFAULT[k]) p.set(k, v);
  const h = p.toString();
  history.replaceState(null, "", h ? "#" + h : location.pathname + location.search);
}
function set(changes) { Object.assign(state, changes); writeHash(); render(); }

function visible(r) {
  const minconf = parseFloat(state.minconf) || 0;
  if (state.q && !state.q.toLowerCase().split(/\s+/).every(w => r.text.includes(w))) return false;
  if (state.status && r.status !== state.status) return false;
  if (state.findings === "1" && !r.f.length) return false;
  if (state.defect === "1" && !r.f.some(x => x.defect)) return false;
  return !(minconf > 0 && !r.f.some(x => x.conf >= minconf));
}
function num(v, d, cls) {
  return el("span", {class: "num " + (cls || ""), "data-v": v === null ? "" : v, text: fmt(v, d)});
}
function findingLine(x) {
  const dot = x.defect ?
    el("span", {class: "dot", title: "fascia defect present", text: " \u25CF"}) : null;
  const size = num(x.size, 2, "size");
  if (x.cut && x.size !== null) {  // cut by the edge of the image: the size is a lower bound
    size.textContent = ">" + size.textContent; size.title = "cut by the image edge: at least this long";
  }
  return el("div", {class: "fr", "data-finding": x.id}, el("span", {class: "num", text: "#" + x.id}),
    size, num(x.depth, 2, "depth"), el("span", {class: "side", text: x.side}),
    num(x.conf, 2, "conf"), el("span", {}, num(x.defp, 2, "defp"), dot));
}
function labelCell(r) {
  const full = "Study Instance UID " + r.studyUid + "\nSeries Instance UID " + r.seriesUid;
  const uids = el("span", {class: "uid", title: full, text: short(r.studyUid) + " / " + short(r.seriesUid)});
  return el("td", {}, el("div", {class: "lab"}, el("span", {class: "mod", text: r.mod || "?"}),
    r.title || "(no description)"), el("div", {class: "sub"}, r.date ? r.date + " \u00b7 " : "", uids));
}
function badge(status) {
  return el("span", {class: "st st-" + status, text: status === "skipped" ? "kept" : status});
}
function row(r) {
  const tr = el("tr", {class: r.status, "data-key": r.key});
  const thumb = r.files.includes("montage.png") ?
    el("img", {src: r.key + "/montage.png", loading: "lazy", alt: "key images"}) : null;
  const find = el("td", {class: "find"});
  if (r.err) find.append(el("div", {class: "err", text: r.err}));
  else if (!r.f.length) find.append(el("span", {class: "none", text: "no finding"}));
  for (const x of r.f) find.append(findingLine(x));
  tr.append(el("td", {class: "thumb"}, thumb), labelCell(r), el("td", {}, badge(r.status)),
    el("td", {}, num(r.prob, 2, "prob")), find, el("td", {}, num(r.secs, 1)));
  tr.addEventListener("click", e => { if (!e.target.closest("a")) set({open: r.key}); });
  return tr;
}
function render() {
  shown = rows.filter(visible);
  if (state.sort) {
    const k = state.sort, dir = state.dir === "desc" ? -1 : 1;
    shown.sort((a, b) => {
      const x = a.sort[k], y = b.sort[k];
      return dir * (typeof x === "string" ? x.localeCompare(y) : x - y) || a.i - b.i;
    });
  }
  $("#series tbody").replaceChildren(...shown.map(row));
  $("#count").textContent = "showing " + shown.length + " of " + rows.length + " series";
  document.querySelectorAll("[data-sort]").forEach(h => {
    h.classList.toggle("sorted", h.dataset.sort === state.sort);
    h.classList.toggle("desc", h.dataset.sort === state.sort && state.dir === "desc");
  });
  renderDetail();
}
function frameLink(k) {  // scrolls to the overlay, leaving the URL fragment (the view state) alone
  const a = el("a", {href: "#", text: "k " + k});
  a.addEventListener("click", e => {
    e.preventDefault();
    document.getElementById("fig-" + k).scrollIntoView();
  });
  return a;
}
function findingTable(r) {
  const heads = ["finding", "longest diameter (mm)", "depth (mm)", "side", "confidence", "fascia defect P",
    "defect", "key frame"];
  const t = el("table", {class: "dt"}, el("tr", {}, ...heads.map(h => el("th", {text: h}))));
  for (const x of r.f) {
    const frame = r.files.includes("overlay_k" + pad(x.frame) + ".png") ? frameLink(x.frame) : "k " + x.frame;
    t.append(el("tr", {"data-finding": x.id}, el("td", {text: "#" + x.id}),
      el("td", {}, num(x.size, 2, "size")), el("td", {}, num(x.depth, 2, "depth")),
      el("td", {class: "side", text: x.side}), el("td", {}, num(x.conf, 2, "conf")),
      el("td", {}, num(x.defp, 2, "defp")),
      el("td", {class: "defect", text: x.defect ? "present" : "\u2013"}), el("td", {}, frame)));
  }
  return t;
}
function renderDetail() {
  const r = byKey.get(state.open), box = $("#detail");
  document.body.style.overflow = r ? "hidden" : "";
  if (!r) { box.hidden = true; return; }
  box.hidden = false;
  const pos = shown.indexOf(r);
  $("#d-title").textContent = r.label;
  $("#d-pos").textContent = pos < 0 ? "" : (pos + 1) + " of " + shown.length;
  const link = n => el("a", {href: r.key + "/" + n, text: n});
  const docs = r.files.filter(n => !n.endsWith(".png"));
  const ids = (r.date ? "Study date " + r.date + " \u00b7 " : "") + "Study Instance UID " + r.studyUid +
    " \u00b7 Series Instance UID " + r.seriesUid + " \u00b7 folder " + r.key;
  const body = el("div", {}, el("p", {class: "uids", text: ids}),
    el("p", {}, badge(r.status), "  P(series) ", num(r.prob, 2, "prob"),
      "  \u00b7  " + r.f.length + " finding(s)  \u00b7  " + fmt(r.secs, 1) + " s"),
    r.err ? el("p", {class: "err", text: r.err}) : null,
    docs.length ? el("p", {class: "links"}, "Files: ", ...docs.map(link)) : null,
    r.f.length ? findingTable(r) : null);
  for (const n of r.files.filter(n => n.endsWith(".png"))) {
    const m = /overlay_k0*(\d+)\.png/.exec(n);
    const caption = m ? "overlay of frame / slice k = " + m[1] : "montage: key images";
    body.append(el("figure", {id: m ? "fig-" + m[1] : null},
      el("a", {href: r.key + "/" + n}, el("img", {src: r.key + "/" + n, alt: n})),
      el("figcaption", {text: caption})));
  }
  $("#d-body").replaceChildren(body);
}
function move(step) {
  const next = shown[shown.indexOf(byKey.get(state.open)) + step];
  if (next) { set({open: next.key}); $(".panel").scrollTop = 0; }
}
function problems() {
  const items = rows.filter(r => r.status === "failed")
    .map(r => [r.label + " (" + r.key + ")", "failed series", r.err]);
  for (const [name, status, reason] of D.files)
    items.push([name, status === "failed" ? "unreadable file" : "ignored", D.reasons[reason]]);
  if (!items.length) return;
  const t = el("table", {}, el("tr", {}, ...["input", "what", "reason"].map(h => el("th", {text: h}))));
  for (const [a, b, c] of items)
    t.append(el("tr", {class: b}, ...[a, b, c].map(v => el("td", {text: v}))));
  const summary = el("summary", {text: items.length + " failure(s) and ignored input(s)"});
  $("#problems").append(el("h2", {text: "Failures and ignored inputs"}),
    el("details", {open: items.length <= 50 ? "" : null}, summary, t));
}
const ASCENDING = ["label", "status", "depth"];  // first click: these ascending, numbers high to low
document.querySelectorAll("[data-sort]").forEach(h => h.addEventListener("click", () => {
  const k = h.dataset.sort;
  if (state.sort === k) set({dir: state.dir === "asc" ? "desc" : "asc"});
  else set({sort: k, dir: ASCENDING.includes(k) ? "asc" : "desc"});
}));
$("#q").addEventListener("input", e => set({q: e.target.value}));
$("#status").addEventListener("change", e => set({status: e.target.value}));
$("#minconf").addEventListener("input", e => set({minconf: e.target.value || "0"}));
$("#findings").addEventListener("change", e => set({findings: e.target.checked ? "1" : ""}));
$("#defect").addEventListener("change", e => set({defect: e.target.checked ? "1" : ""}));
$("#failures").addEventListener("click", () => { $("#status").value = "failed"; set({status: "failed"}); });
$("#reset").addEventListener("click", () => { state = {...DEFAULT}; writeHash(); readHash(); render(); });
$("#d-close").addEventListener("click", () => set({open: ""}));
$("#d-prev").addEventListener("click", () => move(-1));
$("#d-next").addEventListener("click", () => move(1));
$("#detail").addEventListener("click", e => { if (e.target.id === "detail") set({open: ""}); });
document.addEventListener("keydown", e => {
  if (!state.open) return;
  if (e.key === "Escape") set({open: ""});
  else if (e.key === "ArrowRight" || e.key === "j") move(1);
  else if (e.key === "ArrowLeft" || e.key === "k") move(-1);
});
window.addEventListener("hashchange", () => { readHash(); render(); });
readHash(); problems(); render();
"""
