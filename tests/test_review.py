"""The batch review page in headless Chromium (Debian ``chromium``), its size, and the notebook view.

The batch is real: a phantom ultrasound study (``backmice phantom --modality us --cases 1 --seed 3``),
a corrupted DICOM file, a text file and an unsupported CT series, detected with the shipped weights. The
page is opened from a copy of the output folder in another place, driven through its own controls by a
script appended to a copy of the page, and every value it shows is compared with ``report.json``.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from export_factory import make_result, mr
from PIL import Image

from backmice_vision.batch import BatchReport, SeriesOutcome, run_batch, write_index_html
from backmice_vision.errors import BackmiceError
from backmice_vision.render import render_overlay

# Appended to a copy of the page: clicks its controls like a user and writes what the DOM shows as JSON.
DRIVER = r"""<script>
(async () => {
  const $ = s => document.querySelector(s);
  const keys = () => Array.from(document.querySelectorAll("#series tbody tr")).map(tr => tr.dataset.key);
  const cell = (f, c) => [f.querySelector("." + c).dataset.v, f.querySelector("." + c).textContent];
  const finding = f => ({id: +f.dataset.finding, size: cell(f, "size"), depth: cell(f, "depth"),
    conf: cell(f, "conf"), defp: cell(f, "defp"), side: f.querySelector(".side").textContent,
    defect: f.querySelector(".dot") !== null || f.querySelector(".defect")?.textContent === "present"});
  const table = () => Array.from(document.querySelectorAll("#series tbody tr")).map(tr => ({
    key: tr.dataset.key, status: tr.className, prob: tr.querySelector(".prob").dataset.v,
    label: tr.querySelector(".lab").textContent, uidTitle: tr.querySelector(".uid").title,
    findings: Array.from(tr.querySelectorAll(".fr[data-finding]")).map(finding)}));
  const input = (s, v) => { $(s).value = v; $(s).dispatchEvent(new Event("input")); };
  const settle = i => i.complete ? Promise.resolve() : new Promise(r => { i.onload = i.onerror = r; });
  const loaded = async imgs => {
    await Promise.all(imgs.map(settle));
    return imgs.map(i => [i.getAttribute("src"), i.naturalWidth, i.naturalHeight]);
  };
  const out = {initial: table(), count: $("#count").textContent, header: $(".top").innerText};
  $('[data-sort="conf"]').click(); out.confDesc = keys(); out.hashAfterSort = location.hash;
  $('[data-sort="conf"]').click(); out.confAsc = keys();
  $('[data-sort="size"]').click(); out.sizeDesc = keys(); $("#reset").click();
  input("#minconf", "0.95"); out.minconf = keys(); $("#reset").click();
  $("#defect").click(); out.defect = keys(); $("#reset").click();
  $("#failures").click(); out.failures = keys(); $("#reset").click();
  input("#q", "cine"); out.text = keys(); $("#reset").click();
  out.afterReset = keys();
  const tr = document.querySelector("#series tbody tr.done");
  tr.cells[1].click();
  const images = await loaded(Array.from(document.querySelectorAll("#detail img")));
  out.detail = {key: tr.dataset.key, hidden: $("#detail").hidden, title: $("#d-title").textContent,
    open: new URLSearchParams(location.hash.slice(1)).get("open"), images,
    links: Array.from(document.querySelectorAll("#detail .links a")).map(a => a.getAttribute("href")),
    findings: Array.from(document.querySelectorAll("#detail tr[data-finding]")).map(finding)};
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight"}));
  out.next = new URLSearchParams(location.hash.slice(1)).get("open");
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape"}));
  out.closed = $("#detail").hidden;
  const changed = new Promise(r => window.addEventListener("hashchange", r, {once: true}));
  location.hash = "status=failed&sort=label";
  await changed;
  out.deepLink = keys();
  out.problems = Array.from(document.querySelectorAll("#problems tr")).slice(1)
    .map(r => Array.from(r.cells).map(c => c.textContent));
  out.evaluation = await loaded(Array.from(document.querySelectorAll(".evl img")));
  out.plots = document.querySelectorAll("svg.plot").length;
  return out;
})().then(out => JSON.stringify(out), e => JSON.stringify({error: String(e) + " " + e.stack}))
  .then(text => { const pre = document.createElement("pre"); pre.id = "test-result";
    pre.textContent = text; document.body.append(pre); });
</script>"""


def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium with ``args``; its stdout (the DOM for ``--dump-dom``)."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("the review-page tests need Debian's `chromium` on PATH (apt-get install chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    proc = subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pydicom.data import get_testdata_file

    from backmice_vision.cli import main
    from backmice_vision.evaluation import run_evaluation

    root = tmp_path_factory.mktemp("review")
    phantoms = root / "phantoms"
    assert (
        main(
            ["phantom", "--modality", "us", "--cases", "1", "--seed", "3", "--out", str(phantoms), "--quiet"]
        )
        == 0
    )
    inputs = root / "in"
    shutil.copytree(phantoms / "case_0000" / "dicom", inputs / "dicom")
    (inputs / "notes.txt").write_text("not dicom")
    (inputs / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff garbage")
    (inputs / "ct").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), inputs / "ct" / "ct.dcm")
    out = root / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_evaluation([phantoms], out / "evaluation", device="cpu")
    report = run_batch(inputs, out, device="cpu", progress="quiet")
    first = pydicom.dcmread(next((inputs / "dicom").rglob("*.dcm")), stop_before_pixels=True)
    phi = [str(first.PatientName), str(first.PatientID)]
    n_series = len(json.loads((phantoms / "case_0000" / "ground_truth.json").read_text())["series"])
    return {"out": out, "report": report, "phi": phi, "eval_stderr": stderr.getvalue(), "n_eval": n_series}


def _reports(out: Path, report: BatchReport) -> dict[str, dict[str, Any]]:
    return {
        o.key: json.loads((out / o.key / "report.json").read_text())
        for o in report.outcomes
        if o.status == "done"
    }


def _check_finding(shown: dict[str, Any], truth: dict[str, Any]) -> None:
    """One finding as the page shows it (``[data-v, text]`` per value) against its report.json entry."""
    for name, key in (("size", "longest_diameter_mm"), ("depth", "depth_mm")):
        value, (attr, text) = truth[key], shown[name]
        if value is None:
            assert (attr, text) == ("", "–"), (name, shown)
        else:
            assert float(attr) == value and text == f"{value:.2f}", (name, shown)
    for name, value in (("conf", truth["confidence"]), ("defp", truth["fascia_defect"]["probability"])):
        assert float(shown[name][0]) == value and shown[name][1] == f"{value:.2f}", (name, shown)
    assert shown["side"] == (truth["side"] or "–")
    assert shown["defect"] is truth["fascia_defect"]["present"]


def test_review_page_in_chromium(batch: dict[str, Any], tmp_path: Path) -> None:
    report: BatchReport = batch["report"]
    copy = tmp_path / "copied elsewhere" / "results"  # the folder moved, a space in its path
    shutil.copytree(batch["out"], copy)
    reports = _reports(copy, report)
    assert len(reports) == 4 and report.unreadable and report.ignored and report.failed
    page = (copy / "index.html").read_text()
    assert not re.search(r"https?://|//[a-z]", page)  # nothing from the network
    assert not any(value and value in page for value in batch["phi"])  # no patient name or ID
    (copy / "driven.html").write_text(page.replace("</body>", DRIVER + "</body>"))
    dom = chromium(
        tmp_path / "profile", "--virtual-time-budget=15000", "--dump-dom", (copy / "driven.html").as_uri()
    )
    found = re.search(r'<pre id="test-result">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    shown = json.loads(html.unescape(found[1]))
    assert "error" not in shown, shown

    outcomes = {o.key: o for o in report.outcomes}
    order = [o.key for o in report.outcomes]
    assert [r["key"] for r in shown["initial"]] == order and shown["count"] == "showing 5 of 5 series"
    for row in shown["initial"]:  # every series' values equal its report.json
        o = outcomes[row["key"]]
        assert row["status"] == o.status
        if o.status == "failed":
            assert row["prob"] == "" and row["findings"] == []
            continue
        truth = reports[o.key]
        assert float(row["prob"]) == truth["series_probability"]
        assert row["label"] == f"US#{o.series_number} {o.description}"
        assert (
            truth["study_instance_uid"] in row["uidTitle"] and truth["series_instance_uid"] in row["uidTitle"]
        )
        assert [f["id"] for f in row["findings"]] == [f["id"] for f in truth["findings"]]
        for f, t in zip(row["findings"], truth["findings"], strict=True):
            _check_finding(f, t)

    def best(key: str, value: Any) -> float:
        return max((value(f) for f in reports.get(key, {"findings": []})["findings"]), default=-1)

    conf = {k: best(k, lambda f: f["confidence"]) for k in order}
    size = {k: best(k, lambda f: f["longest_diameter_mm"]) for k in order}
    assert (
        shown["confDesc"] == sorted(order, key=lambda k: -conf[k]) and "sort=conf" in shown["hashAfterSort"]
    )
    assert shown["confAsc"] == sorted(order, key=lambda k: conf[k])
    assert shown["sizeDesc"] == sorted(order, key=lambda k: -size[k])
    assert shown["minconf"] == [k for k in order if conf[k] >= 0.95] != order
    defect = [
        k
        for k in order
        if any(f["fascia_defect"]["present"] for f in reports.get(k, {"findings": []})["findings"])
    ]
    assert shown["defect"] == defect
    assert shown["failures"] == [o.key for o in report.failed] == shown["deepLink"]
    assert shown["text"] == [k for k in order if "CINE" in outcomes[k].description.upper()] != []
    assert shown["afterReset"] == order

    detail = shown["detail"]
    key = detail["key"]
    assert not detail["hidden"] and detail["open"] == key and detail["title"].startswith("US #")
    files = {p.name for p in (copy / key).iterdir()}
    assert {link.rsplit("/", 1)[1] for link in detail["links"]} == {
        n for n in files if not n.endswith(".png")
    }
    assert {"report.json", "seg.dcm", "sr.dcm"} <= files and any(n.startswith("sc_k") for n in files)
    pngs = sorted(n for n in files if n.endswith(".png"))
    assert sorted(src.rsplit("/", 1)[1] for src, _, _ in detail["images"]) == pngs
    for src, width, height in detail["images"]:  # loaded from the copied folder, at full size
        assert (width, height) == Image.open(copy / src).size
    for f, t in zip(detail["findings"], reports[key]["findings"], strict=True):
        _check_finding(f, t)
    assert len(detail["findings"]) == len(reports[key]["findings"])
    assert shown["next"] == order[order.index(key) + 1] and shown["closed"] is True

    problems = {row[0]: row[1:] for row in shown["problems"]}
    assert problems["broken.dcm"] == ["unreadable file", report.unreadable[0][1]]
    assert problems["notes.txt"] == ["ignored", "not a DICOM file (or a DICOMDIR)"]
    (ct,) = report.failed
    assert [v for k, v in problems.items() if ct.key in k] == [["failed series", ct.error]]
    assert "png, json, seg, sr, sc" in shown["header"] and "confidence_threshold 0.25" in shown["header"]
    assert "backmice_us " + reports[key]["model"]["version"] in shown["header"]
    assert shown["plots"] == 3
    assert shown["evaluation"] and all(w > 0 for _, w, _ in shown["evaluation"])
    assert "evaluation/froc.png" in {src for src, _, _ in shown["evaluation"]}

    shot = tmp_path / "page.png"
    chromium(
        tmp_path / "profile",
        "--window-size=1400,1100",
        f"--screenshot={shot}",
        (copy / "index.html").as_uri(),
    )
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (1100, 1400, 3) and image.std() > 10


def test_evaluation_prints_progress_per_series(batch: dict[str, Any]) -> None:
    lines = [line for line in batch["eval_stderr"].splitlines() if line.startswith("evaluate: ")]
    n = batch["n_eval"]
    assert [line.split()[1] for line in lines] == [f"{i}/{n}" for i in range(1, n + 1)]
    assert "series/min" in lines[-1] and "ETA" in lines[-1]


def _synthetic_report(n: int) -> BatchReport:
    """``n`` series in ``n / 4`` studies with 44-character UIDs, half with findings, all outputs listed."""
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(n):
        study = f"2.25.{10**38 + i // 4}"
        series = f"2.25.{2 * 10**38 + i}"
        key = f"{study}/{series}"
        findings = [
            {
                "id": j + 1,
                "confidence": round(float(rng.uniform(0.25, 1)), 4),
                "longest_diameter_mm": round(float(rng.uniform(5, 40)), 2),
                "depth_mm": round(float(rng.uniform(2, 30)), 2),
                "side": "left" if j else "right",
                "fascia_defect_probability": round(float(rng.uniform(0, 1)), 4),
                "fascia_defect_present": bool(j),
                "frame": 3 + j,
            }
            for j in range(i % 2 + (i % 7 == 0))
        ]
        frames = sorted({f["frame"] for f in findings}) or []
        names = ["montage.png", "report.json", "seg.dcm", "sr.dcm"]
        names += [f"overlay_k{k:04d}.png" for k in frames] + [f"sc_k{k:04d}.dcm" for k in frames]
        outcomes.append(
            SeriesOutcome(
                key=key,
                status="done",
                modality="MR",
                seconds=0.6,
                series_probability=round(float(rng.uniform(0, 1)), 4),
                findings=findings,
                outputs=[f"{key}/{name}" for name in names],
                key_image=f"{key}/montage.png",
                study_uid=study,
                series_uid=series,
                series_number=i % 9 + 1,
                description="AX T1 LUMBAR",
                study_date="20240102",
            )
        )
    outcomes[1].description = "</script><img src=x onerror=alert(1)> & <b>"
    ignored = [(f"/archive/thumb_{i}.jpg", "not a DICOM file (or a DICOMDIR)") for i in range(50)]
    return BatchReport(outcomes, [], 600.0, ignored, [], {"formats": "png, json, seg, sr, sc"})


def test_page_of_1000_series_is_small_atomic_and_escapes_header_text(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_index_html(_synthetic_report(1000), out / "index.html")
    assert [p.name for p in out.iterdir()] == ["index.html"]  # written through a temporary name and renamed
    page = (out / "index.html").read_text()
    size = len(page.encode())
    assert size < 200_000, size
    assert page.count("</script>") == 2 and "<img src=x" not in page
    dom = chromium(
        tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", (out / "index.html").as_uri()
    )
    assert "showing 1000 of 1000 series" in dom
    assert dom.count('<tr class="done"') == 1000
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; &lt;b&gt;" in dom  # shown as text
    assert '<img src="x"' not in dom and "50 failure(s) and ignored input(s)" in dom


def test_repr_html_and_overlay_equal_the_saved_pngs(tmp_path: Path) -> None:
    result = make_result(mr(tmp_path / "mr"), 2)
    written = result.save(tmp_path / "out", ["png"])["png"]
    overlays = [p for p in written if p.name.startswith("overlay_k")]
    assert overlays
    for path in overlays:
        k = int(path.stem.removeprefix("overlay_k"))
        saved = np.asarray(Image.open(path).convert("RGB"))
        drawn = result.overlay(k)
        assert drawn.dtype == np.uint8 and drawn.shape[0] > result.series.shape[1]  # upscaled like the PNG
        assert np.array_equal(drawn, saved)
        assert np.array_equal(result.overlay(k, scale=1), render_overlay(result, k))  # the SC's pixels
    empty = next(
        k for k in range(result.series.shape[0]) if f"overlay_k{k:04d}.png" not in {p.name for p in written}
    )
    assert result.overlay(empty).shape == saved.shape  # a frame without a finding
    with pytest.raises(BackmiceError, match="outside the series"):
        result.overlay(result.series.shape[0])
    with pytest.raises(BackmiceError, match="scale"):
        result.overlay(0, scale=0)

    page = result._repr_html_()
    encoded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert encoded
    montage = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded[1]))).convert("RGB"))
    assert np.array_equal(montage, np.asarray(Image.open(tmp_path / "out" / "montage.png").convert("RGB")))
    for n in result.nodules:
        assert (
            f"<tr><td>#{n.id}</td><td>{n.longest_diameter_mm:.1f}</td><td>{n.depth_mm:.1f}</td>"
            f"<td>{n.side}</td><td>{n.confidence:.2f}</td><td>{n.fascia_defect.probability:.2f}"
        ) in page
    assert f"{len(result.nodules)} finding(s)" in page
