"""Batch runs over a folder with good series, a corrupt file and a non-DICOM file (real DICOM, real model)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from model_factory import tiny_bundle, write_mr_with_seg

from backmice_vision.batch import plan_jobs, read_manifest, run_batch, run_tag, safe_name
from backmice_vision.errors import ConfigError


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import shutil

    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("archive")
    for i in range(2):
        write_mr_with_seg(root / f"study{i}", seed=i)  # each with its ground-truth SEG (not an image)
    (root / "notes.txt").write_text("not dicom")
    (root / "ct").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct" / "ct.dcm")  # an unsupported series
    corrupt = root / "broken.dcm"
    corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff garbage")
    bundle = tiny_bundle(tmp_path_factory.mktemp("models") / "tiny_mr", "MR")
    return root, bundle


def test_batch_reports_failures_and_writes_good_series(archive: tuple[Path, Path], tmp_path: Path) -> None:
    root, bundle = archive
    report = run_batch(
        root, tmp_path, model=str(bundle), device="cpu", progress="quiet", formats=["json", "png"]
    )
    assert report.exit_code == 1
    done = [o for o in report.outcomes if o.status == "done"]
    assert len(done) == 2
    assert [Path(p).name for p, _ in report.unreadable] == ["broken.dcm"]
    (ct,) = [o for o in report.outcomes if o.status == "failed"]
    assert (
        ct.modality == "CT" and ct.error == "unsupported series: modality CT is not analysed (MR and US only)"
    )
    assert [(Path(p).name, r) for p, r in report.ignored] == [
        ("notes.txt", "not a DICOM file (or a DICOMDIR)")
    ]
    assert [r for _, r in report.non_image] == ["not an image series (SEG)"] * 2  # the ground-truth SEGs
    for o in done:
        study, series = o.key.split("/")
        assert study == safe_name(study) and series == safe_name(series)
        report_json = json.loads((tmp_path / o.key / "report.json").read_text())
        assert report_json["schema"] == "backmice.report/1"
        assert report_json["series_instance_uid"].endswith(series)
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert sorted(r["status"] for r in rows if r["status"] != "done") == [
        "failed",
        "failed",
        *["ignored"] * 3,
    ]
    errors = {r["series"]: r["error"] for r in rows}
    assert errors["notes.txt"] == "not a DICOM file (or a DICOMDIR)" and errors[ct.key] == ct.error
    assert errors["broken.dcm"] == report.unreadable[0][1] != ""
    page = (tmp_path / "index.html").read_text()
    assert "broken.dcm" in page and "notes.txt" in page and "modality CT" in page and "Test^Model" not in page

    again = run_batch(
        root,
        tmp_path,
        model=str(bundle),
        device="cpu",
        progress="quiet",
        formats=["json", "png"],
        resume=True,
    )
    assert sorted(o.status for o in again.outcomes) == ["failed", "skipped", "skipped"]
    assert set(read_manifest(tmp_path)) == {o.key for o in done}


def test_dry_run_lists_everything_and_writes_nothing(
    archive: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backmice_vision.cli import main

    root, _ = archive
    assert main(["batch", str(root), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "MR",
        "MR",
        "unsupported",
        "unreadable",
        *["ignored"] * 3,
        "2",
    ]
    assert lines[-1] == "2 series would be processed"
    assert "modality CT is not analysed" in lines[2] and "broken.dcm" in lines[3]
    assert not (tmp_path / "out").exists()


def test_resume_redoes_a_series_whose_outputs_are_gone(archive: tuple[Path, Path], tmp_path: Path) -> None:
    root, bundle = archive
    first = run_batch(root, tmp_path, model=str(bundle), device="cpu", progress="quiet", formats=["json"])
    victim = next(o for o in first.outcomes if o.status == "done")
    (tmp_path / victim.outputs[0]).unlink()
    again = run_batch(
        root, tmp_path, model=str(bundle), device="cpu", progress="quiet", formats=["json"], resume=True
    )
    status = {o.key: o.status for o in again.outcomes}
    assert status[victim.key] == "done"
    assert sorted(status.values()) == ["done", "failed", "skipped"]


def test_resume_redoes_series_when_formats_or_thresholds_change(
    archive: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backmice_vision import findings

    root, bundle = archive

    def run(formats: list[str]):  # type: ignore[no-untyped-def]
        rep = run_batch(
            root, tmp_path, model=str(bundle), device="cpu", progress="quiet", formats=formats, resume=True
        )
        return sorted(o.status for o in rep.outcomes if o.modality == "MR")

    assert run(["json"]) == ["done", "done"]
    assert run(["json"]) == ["skipped", "skipped"]
    assert run(["json", "seg"]) == ["done", "done"]  # SEGs asked for now: redone, not trusted
    assert all((tmp_path / k / "seg.dcm").is_file() for k in read_manifest(tmp_path))
    changed = findings.DEFAULT_THRESHOLDS.replace({"confidence_threshold": 0.99})
    monkeypatch.setattr(findings, "load_thresholds", lambda path=None: changed)
    assert run(["json", "seg"]) == ["done", "done"]  # other thresholds, other findings: redone


def test_bfloat16_batch_is_its_own_run_for_resume(archive: tuple[Path, Path], tmp_path: Path) -> None:
    root, bundle = archive

    def run(precision: str):  # type: ignore[no-untyped-def]
        rep = run_batch(
            root,
            tmp_path,
            model=str(bundle),
            device="cpu",
            precision=precision,  # type: ignore[arg-type]
            progress="quiet",
            formats=["json"],
            resume=True,
        )
        return sorted(o.status for o in rep.outcomes if o.modality == "MR")

    assert run("float32") == ["done", "done"]
    assert run("bfloat16") == ["done", "done"]  # another precision, other probabilities: redone
    assert run("bfloat16") == ["skipped", "skipped"]
    assert all((tmp_path / key / "report.json").is_file() for key in read_manifest(tmp_path))
    # float32 keeps the resume hash of runs from before the option existed
    assert run_tag(str(bundle), ["json"], "float32") == run_tag(str(bundle), ["json"])
    with pytest.raises(ConfigError, match="precision must be float32 or bfloat16"):
        run("float16")


def test_a_rerun_removes_what_a_killed_run_left_half_written(
    archive: tuple[Path, Path], tmp_path: Path
) -> None:
    """Temporaries of a killed writer (``.<name>.<pid>.tmp``) go when their series or the summary is
    written again; other files stay."""
    root, bundle = archive
    key = plan_jobs(root).jobs[0].key
    stale = [tmp_path / key / ".report.json.4242.tmp", tmp_path / ".summary.csv.4242.tmp"]
    kept = [tmp_path / key / ".keep", tmp_path / key / "notes.tmp"]
    for p in [*stale, *kept]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half")
    run_batch(root, tmp_path, model=str(bundle), device="cpu", progress="quiet", formats=["json"])
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    assert json.loads((tmp_path / key / "report.json").read_text())["schema"] == "backmice.report/1"


def test_a_series_whose_outputs_cannot_be_written_fails_alone(
    archive: tuple[Path, Path], tmp_path: Path
) -> None:
    root, bundle = archive
    blocked = plan_jobs(root).jobs[0].key
    (tmp_path / blocked.split("/")[0]).write_text("a file where the study folder would go")
    report = run_batch(root, tmp_path, model=str(bundle), device="cpu", progress="quiet", formats=["json"])
    status = {o.key: o for o in report.outcomes}
    assert status[blocked].status == "failed" and status[blocked].error.startswith(("FileExists", "NotADir"))
    assert status[blocked].outputs == [] and report.exit_code == 1
    assert sorted(o.status for k, o in status.items() if k != blocked) == ["done", "failed"]  # CT: failed
    assert set(read_manifest(tmp_path)) == {k for k, o in status.items() if o.status == "done"}


@pytest.mark.slow
def test_every_local_mode_gives_the_same_results(
    archive: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker overlapping writing with detecting (a core left free), one worker series after series
    (torch on every core), and two worker processes: the same outcomes, outputs and findings."""
    import torch

    from backmice_vision import batch
    from backmice_vision.model import inference

    root, bundle = archive
    threads = torch.get_num_threads()
    overlapped = []
    real = batch._pipelined
    monkeypatch.setattr(batch, "_pipelined", lambda *a: overlapped.append(len(a[0])) or real(*a))
    runs = {}
    for name, cores, workers in (("overlapped", 64, 1), ("sequential", 1, 1), ("processes", 64, 2)):
        monkeypatch.setattr(inference, "usable_cores", lambda cores=cores: cores)
        runs[name] = run_batch(
            root,
            tmp_path / name,
            model=str(bundle),
            device="cpu",
            progress="quiet",
            formats=["json", "seg"],
            workers=workers,
            threads=1,
        )
        assert torch.get_num_threads() == threads  # the caller's setting is back
    assert overlapped == [2]  # only the one-worker run with a free core overlapped (its 2 series)

    def summary(rep):  # type: ignore[no-untyped-def]
        return {o.key: (o.status, o.outputs, o.findings, o.series_probability) for o in rep.outcomes}

    first = summary(runs["overlapped"])
    assert sorted(s for s, *_ in first.values()) == ["done", "done", "failed"]
    assert all(summary(r) == first for r in runs.values())


@pytest.mark.slow
def test_dask_engine_matches_local(archive: tuple[Path, Path], tmp_path: Path) -> None:
    root, bundle = archive
    local = run_batch(
        root, tmp_path / "local", model=str(bundle), device="cpu", progress="quiet", formats=["json"]
    )
    dask = run_batch(
        root,
        tmp_path / "dask",
        model=str(bundle),
        device="cpu",
        progress="quiet",
        formats=["json"],
        engine="dask",
        workers=2,
    )

    def findings(rep):  # type: ignore[no-untyped-def]
        return {o.key: (o.status, o.findings) for o in rep.outcomes}

    assert findings(local) == findings(dask)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(archive: tuple[Path, Path], tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    _, bundle = archive
    root = tmp_path / "six"
    for i in range(6):  # enough series that the kill lands midway
        write_mr_with_seg(root / f"study{i}", seed=10 + i)
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    args = ["--model", str(bundle), "--device", "cpu", "--formats", "json", "--quiet"]
    cmd = [sys.executable, "-m", "backmice_vision", "batch", str(root)]
    proc = subprocess.Popen([*cmd, "--out", str(killed_out), *args], stderr=subprocess.DEVNULL)
    manifest = killed_out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (manifest.exists() and manifest.read_text().count("\n") >= 1):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished_before = set(read_manifest(killed_out))
    assert 1 <= len(finished_before) < 6

    resumed = run_batch(
        root, killed_out, model=str(bundle), device="cpu", progress="quiet", formats=["json"], resume=True
    )
    status = {o.key: o.status for o in resumed.outcomes}
    assert {k for k, s in status.items() if s == "skipped"} == finished_before
    assert {k for k, s in status.items() if s == "done"} == set(status) - finished_before
    assert len(status) == 6

    clean = run_batch(root, clean_out, model=str(bundle), device="cpu", progress="quiet", formats=["json"])
    for o in clean.outcomes:
        if o.status != "done":
            continue
        a = json.loads((clean_out / o.key / "report.json").read_text())
        b = json.loads((killed_out / o.key / "report.json").read_text())
        assert a["findings"] == b["findings"]
        assert a["series_probability"] == b["series_probability"]
    assert not list(killed_out.rglob("*.tmp*"))
