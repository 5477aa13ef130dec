"""Helpers for the DICOM node tests: real DICOM inputs, free loopback ports, Orthanc and node processes."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

REPO = Path(__file__).resolve().parents[1]
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _patient_study(ds: Dataset, patient_id: str, study_uid: str, series_uid: str, modality: str) -> None:
    ds.PatientName = f"Test^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "node-tests"


def _file_meta(ds: Dataset, transfer_syntax: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)


def us_cine_jpeg(
    path: Path, patient_id: str = "NODE-US", study_uid: str | None = None, frames: int = 6, seed: int = 0
) -> Dataset:
    """An ultrasound multi-frame cine, JPEG baseline (YBR_FULL_422), frames encoded by Pillow."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = 96, 128
    encoded = []
    for k in range(frames):
        grey = (rng.random((rows, cols)) * 60 + np.linspace(20, 180, rows)[:, None] + 5 * k).clip(0, 255)
        rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=90, subsampling=1)  # 4:2:2
        encoded.append(buf.getvalue())
    ds = Dataset()
    _patient_study(ds, patient_id, study_uid or generate_uid(), generate_uid(), "US")
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.Laterality = ""
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.NumberOfFrames = frames
    ds.FrameTime = 33.3
    ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    _file_meta(ds, JPEGBaseline8Bit)
    ds.save_as(path, enforce_file_format=True)
    return ds


def enhanced_mr(
    path: Path, patient_id: str = "NODE-MR", study_uid: str | None = None, frames: int = 5, seed: int = 0
) -> Dataset:
    """An Enhanced MR multi-frame image (uncompressed, 16-bit) with its geometry in functional groups."""
    rng = np.random.default_rng(seed)
    rows, cols = 64, 64
    pixels = (rng.random((frames, rows, cols)) * 1000).astype(np.uint16)
    ds = Dataset()
    _patient_study(ds, patient_id, study_uid or generate_uid(), generate_uid(), "MR")
    ds.SOPClassUID = ENHANCED_MR
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T2", "NONE"]
    ds.FrameOfReferenceUID = generate_uid()
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.8]
    measures.SliceThickness = 4.0
    shared.PixelMeasuresSequence = [measures]
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    shared.PlaneOrientationSequence = [orient]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(frames):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [-25.6, 40.0 + 4.0 * k, 25.6]
        item.PlanePositionSequence = [pos]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = pixels.tobytes()
    _file_meta(ds, ExplicitVRLittleEndian)
    ds.save_as(path, enforce_file_format=True)
    return ds


def mr_series(
    folder: Path, patient_id: str, study_uid: str | None = None, slices: int = 3, seed: int = 0
) -> str:
    """A small classic MR series (one file per slice); returns its SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    for k in range(slices):
        ds = Dataset()
        _patient_study(ds, patient_id, study_uid, series_uid, "MR")
        ds.SOPClassUID = MR_IMAGE
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImagePositionPatient = [-25.6, 40.0 + 4.0 * k, 25.6]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.PixelSpacing = [0.8, 0.8]
        ds.SliceThickness = 4.0
        ds.Rows, ds.Columns = 48, 48
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (rng.random((48, 48)) * 800).astype(np.uint16).tobytes()
        _file_meta(ds, ExplicitVRLittleEndian)
        ds.save_as(folder / f"slice_{k:02d}.dcm", enforce_file_format=True)
    return series_uid


def write_node_config(path: Path, **settings: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


# --- processes -----------------------------------------------------------------------------------


class NodeProcess:
    """``python -m backmice_vision serve --config X`` as a real subprocess (log in ``log_path``)."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.config, self.port, self.log_path = config, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> NodeProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backmice_vision", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )  # fmt: skip
        log.close()
        wait_for(self._listening, timeout, "the node to listen")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def status(self) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "backmice_vision", "serve", "--config", str(self.config), "--status"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


def orthanc_plugins_dir() -> str | None:
    for candidate in ("/usr/share/orthanc/plugins",):
        if Path(candidate, "libOrthancDicomWeb.so").exists():
            return candidate
    return None


class Orthanc:
    """A throw-away Orthanc (Debian package) as the PACS: loopback modalities only, its own storage."""

    def __init__(self, root: Path, modalities: dict[str, list[Any]], aet: str = "ORTHANC") -> None:
        self.root = root
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        root.mkdir(parents=True, exist_ok=True)
        plugins = orthanc_plugins_dir()
        config: dict[str, Any] = {
            "Name": "node-tests",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": modalities,
            "StableAge": 1,
            "HttpTimeout": 30,
            "Plugins": [plugins] if plugins else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Orthanc:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(self.root / "orthanc.json")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )  # fmt: skip
        log.close()
        wait_for(self._up, timeout, "Orthanc to answer")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> Any:
        import urllib.request

        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", ctype)
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        return self.request("POST", path, json.dumps(payload).encode())

    def upload(self, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/instances", path.read_bytes(), "application/dicom")
        return result

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Main DICOM tags of every instance Orthanc holds in the study ([] if the study is unknown)."""
        found = self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        out: list[dict[str, Any]] = []
        for study_id in found:
            for inst in self.get(f"/studies/{study_id}/instances"):
                tags = self.get(f"/instances/{inst['ID']}/simplified-tags")
                tags["OrthancID"] = inst["ID"]
                out.append(tags)
        return out

    def file(self, orthanc_id: str) -> Dataset:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/instances/{orthanc_id}/file", timeout=60) as resp:
            return pydicom.dcmread(io.BytesIO(resp.read()))


def crashing_pipeline(input_dir: Path, output_dir: Path, settings: Any) -> list[Path]:
    """An injected ``process_series`` whose worker process dies (as on a segfault or the OOM killer)."""
    os._exit(3)
