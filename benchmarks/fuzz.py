"""Mutation fuzzer: real DICOM files, mutated, through load_series → detect → save in a guarded worker.

Seeds are pydicom's bundled test files and the project's own phantoms (one US case and the first slice
of each MR series of one MR case, generated with ``backmice phantom`` when ``--phantoms`` is missing).
Each mutated file is written to disk and handed to a worker process that runs
``load_series(path)`` and, for files that load, ``Detector.detect`` and ``DetectionResult.save`` (all
formats). The worker runs under ``RLIMIT_AS`` (``--limit-gb``) and a per-file wall limit, so a file that
kills or hangs it is counted (and kept under ``--out``) instead of taking the fuzzer down.

Outcomes per file: ``ok`` (detected and written), ``error`` (a BackmiceError: the intended one-line
refusal), ``crash`` (any other exception: a bug), ``death`` (the worker died: signal, memory limit),
``hang`` (over ``--timeout`` seconds). Printed at the end with the worker's peak RSS (``ru_maxrss``).
Project errors that a writer guard made out of another exception are listed apart
(``wrapped_by_writer_guard``): refusals, but worth a look.

    nice -n 10 .venv/bin/python benchmarks/fuzz.py --count 10000 --out build/fuzz

Seeds: 70 % of the files come from an MR/US image seed (weighted by :func:`image_weight`), 30 % from
any seed. Mutators (chosen at random per file, 1-3 applied): bit flips, "interesting" integers written
over random bytes, truncation, deleting / duplicating a chunk, splicing bytes from another seed, and
structural edits through pydicom: an image-pixel, geometry, ultrasound-region, date/time/name/code-string
attribute (or any element, nested ones included) set to a hostile value, an element deleted, the transfer
syntax swapped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 32767, 32768, 65535, 2**31 - 1, 2**32 - 1, -1]
INTERESTING_STR = [
    "", " ", "0", "-1", "1e308", "-1e308", "nan", "inf", "14:04:38", "2024-13-45", "20241345", "99999999",
    "abc", "^^^^^", "Doe^John^^^^^^^", "\\\\\\", "x" * 300, "\x1b[31m", "\x00\x01\x02", "ÄÖÜ", "1\\2\\3",
    "0\\0\\0\\0\\0\\0", "1\\0\\0\\0\\0\\0", "-0", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME1", "RGB",
]  # fmt: skip
TARGETS = [
    "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
    "PixelRepresentation", "PlanarConfiguration", "PhotometricInterpretation", "RescaleSlope",
    "RescaleIntercept", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "InstanceNumber", "Modality", "SOPClassUID", "StudyDate", "StudyTime",
    "SeriesDate", "SeriesTime", "ContentDate", "ContentTime", "AcquisitionDateTime", "PatientName",
    "ReferringPhysicianName", "PatientBirthDate", "PatientSex", "PatientID", "AccessionNumber", "StudyID",
    "Laterality", "ImageLaterality", "PatientOrientation", "FrameOfReferenceUID", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "SpecificCharacterSet", "RedPaletteColorLookupTableDescriptor",
    "PhysicalDeltaX", "PhysicalDeltaY", "RegionLocationMinX0", "RegionLocationMaxY1",
    "PhysicalUnitsXDirection",
    "RegionSpatialFormat", "RegionDataType", "ReferencePixelY0", "ReferencePixelPhysicalValueY",
    "PixelData", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
    "SequenceOfUltrasoundRegions", "RepetitionTime", "EchoTime", "InversionTime", "ImageType",
]  # fmt: skip
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1.99", "1.2.3.4",
]  # fmt: skip


# --------------------------------------------------------------------------------------------- seeds
def seed_files(phantoms: Path, python: str) -> list[Path]:
    """pydicom's test files (files only) and the phantom DICOM files (generated when missing)."""
    from pydicom.data import get_testdata_files

    seeds = sorted(Path(p) for p in get_testdata_files() if os.path.isfile(p) and os.path.getsize(p) < 4e6)
    for modality in ("us", "mr"):
        out = phantoms / modality
        if not any(out.rglob("*.dcm")):
            subprocess.run(
                [python, "-m", "backmice_vision", "phantom", "--modality", modality, "--cases", "1",
                 "--seed", "5", "--out", str(out), "--quiet"],
                check=True,
            )  # fmt: skip
        dicom = sorted(out.glob("case_*/dicom/*"))
        for folder in dicom:
            files = sorted(folder.glob("*.dcm"))
            seeds.extend(files if modality == "us" else files[:1])
    return seeds


def image_weight(path: Path) -> float:
    """0 for seeds that are not MR/US images; else ``1 / (1 + pixels / 250 000)``, so that large cines
    (seconds of detection each) are mutated less often than small images and the run keeps its pace."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if str(ds.get("Modality", "")) not in ("MR", "US") or "Rows" not in ds:
            return 0.0
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:
        return 0.0
    return 1.0 / (1.0 + pixels / 50_000)


# ------------------------------------------------------------------------------------------ mutators
def _bitflip(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)


def _interesting(data: bytearray, rng: random.Random) -> None:
    value = rng.choice(INTERESTING_INTS) & 0xFFFFFFFF
    fmt = rng.choice(["<H", ">H", "<I", ">I", "B"])
    packed = struct.pack(fmt, value & {"B": 0xFF, "<H": 0xFFFF, ">H": 0xFFFF}.get(fmt, 0xFFFFFFFF))
    pos = rng.randrange(max(1, len(data) - len(packed)))
    data[pos : pos + len(packed)] = packed


def _truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randrange(len(data)) :]


def _chunk(data: bytearray, rng: random.Random) -> None:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.choice([1, 2, 4, 8, 64, 1024]))
    if rng.random() < 0.5:
        del data[a:b]
    else:
        data[a:a] = data[a:b]


def _structural(data: bytes, rng: random.Random) -> bytes | None:
    """Edit elements through pydicom; None when the file does not parse or cannot be written back."""
    import pydicom
    from pydicom.dataelem import DataElement

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        elements: list[tuple[Any, DataElement]] = []
        stack = [ds]
        while stack:
            d = stack.pop()
            for elem in d:
                elements.append((d, elem))
                if elem.VR == "SQ":
                    stack.extend(list(elem.value))
    except Exception:
        return None
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.1 and hasattr(ds, "file_meta"):
            ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(rng.choice(TRANSFER_SYNTAXES))
            continue
        targeted = [(d, e) for d, e in elements if e.keyword in TARGETS]
        pool = targeted if targeted and choice < 0.8 else elements
        if not pool:
            return None
        parent, elem = rng.choice(pool)
        if rng.random() < 0.15:
            with contextlib.suppress(Exception):
                del parent[elem.tag]
            continue
        try:
            if elem.VR in ("US", "SS", "UL", "SL", "IS", "FL", "FD", "DS", "AT", "SV", "UV"):
                v: Any = rng.choice(INTERESTING_INTS)
                if elem.VR in ("DS", "FL", "FD") and rng.random() < 0.5:
                    v = rng.choice([0.0, -0.0, 1e-30, -5.5, 1e30, float("nan"), float("inf")])
                if elem.VR in ("US", "UL", "UV") and v < 0:
                    v = 2**16 - 1 if elem.VR == "US" else 2**32 - 1
                if elem.VR == "SS" and not -(2**15) <= v < 2**15:
                    v = -(2**15)
                if elem.VR == "IS":
                    v = str(v)
                if elem.VR == "DS":
                    v = repr(v)[:16]
                parent[elem.tag] = DataElement(elem.tag, elem.VR, v)
            elif elem.VR == "SQ":
                if elem.value and rng.random() < 0.5:
                    elem.value = list(elem.value)[: rng.randrange(len(elem.value))]
                else:
                    elem.value = list(elem.value) * rng.randint(2, 4)
            elif elem.VR in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
                raw = bytearray(elem.value if isinstance(elem.value, bytes) else b"")
                if raw:
                    _bitflip(raw, rng) if rng.random() < 0.5 else _truncate(raw, rng)
                elem.value = bytes(raw)
            else:
                parent[elem.tag] = DataElement(elem.tag, elem.VR, rng.choice(INTERESTING_STR))
        except Exception:
            continue
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=False)
    except Exception:
        return None
    return out.getvalue()


def mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """1-3 mutations of ``data``: structural (pydicom) half of the time, else byte-level."""
    if rng.random() < 0.5:
        edited = _structural(data, rng)
        if edited is not None:
            return edited
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not buf:
            break
        op = rng.random()
        if op < 0.4:
            _bitflip(buf, rng)
        elif op < 0.7:
            _interesting(buf, rng)
        elif op < 0.8:
            _truncate(buf, rng)
        elif op < 0.95:
            _chunk(buf, rng)
        else:
            other = rng.choice(seeds)
            a = rng.randrange(len(buf))
            b = rng.randrange(len(other))
            buf[a:] = other[b : b + rng.randint(1, 4096)] + buf[a:]
    return bytes(buf)


# -------------------------------------------------------------------------------------------- worker
def worker() -> None:
    """Read file paths on stdin; for each print one JSON line: outcome, exception, peak RSS (KiB)."""
    import warnings

    warnings.simplefilter("ignore")
    import backmice_vision as bmv
    from backmice_vision.errors import BackmiceError
    from backmice_vision.pipeline import bound_heap

    bound_heap()  # as the batch and node workers do
    detector = bmv.Detector.from_pretrained(device="cpu")
    print(
        json.dumps({"ready": True, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True
    )
    for line in sys.stdin:
        path = Path(line.strip())
        record: dict[str, Any] = {"file": str(path)}
        started = time.perf_counter()
        out_dir = Path(tempfile.mkdtemp(prefix="out.", dir=path.parent))
        stage = "load"
        try:
            series = bmv.load_series(path)
            stage = "detect"
            result = detector.detect(series)
            stage = "save"
            result.save(out_dir)
            record["outcome"] = "ok"
        except BackmiceError as exc:
            record.update(outcome="error", stage=stage, reason=" ".join(exc.reason.split())[:80])
            cause = exc.__cause__
            if cause is not None and not isinstance(cause, BackmiceError):  # a writer guard caught it
                tb = traceback.extract_tb(cause.__traceback__)[-1]
                record["wrapped"] = f"{type(cause).__name__} at {Path(tb.filename).name}:{tb.lineno}"
            if "\n" in str(exc):
                record.update(outcome="crash", exc="multi-line BackmiceError")
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(tb.filename).name}:{tb.lineno}"
            record.update(outcome="crash", stage=stage, exc=f"{type(exc).__name__} at {where}",
                          message=str(exc)[:200])  # fmt: skip
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        record["rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        record["seconds"] = round(time.perf_counter() - started, 3)
        print(json.dumps(record), flush=True)


class Worker:
    """A worker process under RLIMIT_AS; :meth:`run` returns its record, or a death / hang record."""

    def __init__(self, python: str, limit_bytes: int, timeout: float) -> None:
        self.python, self.limit, self.timeout = python, limit_bytes, timeout
        self.proc: subprocess.Popen[str] | None = None
        self.peak_kib = 0

    def _start(self) -> subprocess.Popen[str]:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (self.limit, self.limit))

        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.Popen(
            [self.python, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, preexec_fn=limit, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if not ready:
            raise SystemExit(f"the worker did not start under RLIMIT_AS {self.limit / 2**30:.1f} GiB")
        self.peak_kib = max(self.peak_kib, json.loads(ready)["rss_kib"])
        return proc

    def run(self, path: Path) -> dict[str, Any]:
        import select

        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            record = json.loads(line)
            self.peak_kib = max(self.peak_kib, record["rss_kib"])
            return record
        hung = not ready
        self.proc.kill()
        code = self.proc.wait()
        self.proc = None
        return {"file": str(path), "outcome": "hang" if hung else "death", "exit": code}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=10_000, help="mutated files to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("build/fuzz"))
    parser.add_argument("--phantoms", type=Path, default=Path("build/fuzz/seeds"))
    parser.add_argument("--limit-gb", type=float, default=3.0, help="RLIMIT_AS of the worker (GiB)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per file")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    ns = parser.parse_args(argv)
    if ns.worker:
        worker()
        return 0
    python = sys.executable
    seeds = seed_files(ns.phantoms, python)
    blobs = {p: p.read_bytes() for p in seeds}
    weights = {p: image_weight(p) for p in seeds}
    image_seeds = [p for p in seeds if weights[p] > 0]
    image_weights = [weights[p] for p in image_seeds]
    rng = random.Random(ns.seed)
    work = ns.out / "work"
    kept = ns.out / "findings"
    work.mkdir(parents=True, exist_ok=True)
    kept.mkdir(parents=True, exist_ok=True)
    runner = Worker(python, int(ns.limit_gb * 2**30), ns.timeout)
    counts: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    crashes: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    wrapped: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    print(f"{len(seeds)} seeds ({len(image_seeds)} MR/US images); {ns.count} mutated files", flush=True)
    log = (ns.out / "records.jsonl").open("w")  # one line per file: outcome, reason, worker's peak RSS
    try:
        for n in range(ns.count):
            image = rng.random() < 0.7  # an MR/US image (detected and written when it loads), else any file
            seed = rng.choices(image_seeds, image_weights)[0] if image else rng.choice(seeds)
            data = mutate(blobs[seed], rng, list(blobs.values()))
            path = work / f"m{n:06d}.dcm"
            path.write_bytes(data)
            record = runner.run(path)
            record["seed"] = seed.name
            log.write(json.dumps(record) + "\n")
            outcome = record["outcome"]
            counts[outcome] += 1
            if outcome == "error":
                stages[record["stage"]] += 1
                reasons[record["reason"].split(" (")[0][:50]] += 1
                if "wrapped" in record:
                    wrapped[record["wrapped"]] += 1
                    if wrapped[record["wrapped"]] <= 2:
                        shutil.copy(path, kept / f"wrapped_{n:06d}_{seed.name}")
                        (kept / f"wrapped_{n:06d}.json").write_text(json.dumps(record, indent=1))
            if outcome in ("crash", "death", "hang"):
                key = record.get("exc", f"{outcome} exit {record.get('exit')}")
                crashes[key] += 1
                if crashes[key] <= 3:
                    shutil.copy(path, kept / f"{outcome}_{n:06d}_{seed.name}")
                    (kept / f"{outcome}_{n:06d}.json").write_text(json.dumps(record, indent=1))
            path.unlink()
            if (n + 1) % 500 == 0:
                print(f"{n + 1} files, {dict(counts)}, peak RSS {runner.peak_kib / 1024:.0f} MiB, "
                      f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    finally:
        runner.close()
        log.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = {
        "files": ns.count,
        "seeds": len(seeds),
        "outcomes": dict(counts),
        "crashes": counts["crash"],
        "deaths": counts["death"],
        "hangs": counts["hang"],
        "peak_rss_mib": round(max(runner.peak_kib, children) / 1024, 1),
        "rlimit_as_gib": ns.limit_gb,
        "seconds": round(time.monotonic() - started),
        "errors_by_stage": dict(stages),
        "top_error_reasons": dict(reasons.most_common(12)),
        "crash_kinds": dict(crashes.most_common()),
        "wrapped_by_writer_guard": dict(wrapped.most_common()),
    }
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    if ns.json:
        ns.json.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return 1 if counts["crash"] or counts["death"] or counts["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
