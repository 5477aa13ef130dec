"""Phantom DICOM writers: validity (dciodvfy), pixels and geometry read back, SEG read by highdicom."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from backmice_vision.labels import Tissue
from backmice_vision.phantoms.dicom import (
    MrAcquisition,
    SeriesInfo,
    StudyInfo,
    UsView,
    compose_us,
    make_uid,
    write_mr_series,
    write_seg,
    write_us_series,
)

STUDY = StudyInfo.create("case_0003", 11)


def _view(rng: np.random.Generator, nodule: bool = True, shape: tuple[int, int] = (180, 200)) -> UsView:
    image = rng.integers(20, 200, shape, dtype=np.uint8)
    labels = np.full(shape, int(Tissue.MUSCLE), np.uint8)
    labels[:6] = Tissue.SKIN
    labels[6:90] = Tissue.SUPERFICIAL_FAT
    labels[90:96] = Tissue.TLF
    if nodule:
        labels[40:70, 80:140] = Tissue.NODULE
        labels[70:96, 100:110] = Tissue.STALK
    return UsView(image, labels, (0.1, 0.12))


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _mr_volume(n: int = 6, rows: int = 40, cols: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    vol = rng.random((n, rows, cols)).astype(np.float32)
    labels = np.zeros((n, rows, cols), np.uint8)
    labels[:, 5:20] = Tissue.SUPERFICIAL_FAT
    labels[:, 20:22] = Tissue.TLF
    labels[2:4, 8:14, 10:20] = Tissue.NODULE
    return vol, labels


def _write_all(tmp: Path, nodule: bool = True) -> dict[str, tuple[list[pydicom.Dataset], Path]]:
    rng = np.random.default_rng(0)
    written: dict[str, tuple[list[pydicom.Dataset], Path]] = {}
    specs = [
        ("us_single", "MONOCHROME2", False, 2, 1),
        ("us_cine", "YBR_FULL_422", True, 4, 1),
        ("us_dual", "RGB", False, 1, 2),
    ]
    for number, (name, photometric, multiframe, n_frames, n_regions) in enumerate(specs, start=1):
        views = [[_view(rng, nodule) for _ in range(n_regions)] for _ in range(n_frames)]
        comp = compose_us(views, ["PHANTOM L12-5 12.0MHz", "D 1.8cm G 50"], frame_shape=(300, 400))
        dss = write_us_series(
            tmp / "dicom" / name, STUDY, SeriesInfo(number, name), comp, photometric, multiframe, 33.3
        )
        write_seg(tmp / "seg" / f"{name}.dcm", STUDY, dss, comp.labels, 100 + number)
        written[name] = (dss, tmp / "dicom" / name)
    vol, labels = _mr_volume()
    if not nodule:
        labels[labels == Tissue.NODULE] = Tissue.SUPERFICIAL_FAT
    ori = np.array([-1.0, 0, 0, 0, np.cos(0.1), np.sin(0.1)])
    normal = np.cross(ori[:3], ori[3:])
    pos = np.array([10.0, -40.0, 5.0]) - np.arange(vol.shape[0])[:, None] * 4.4 * normal  # descending
    for number, enhanced in ((10, False), (11, True)):
        name = f"mr_{'enhanced' if enhanced else 'axial'}"
        dss = write_mr_series(
            tmp / "dicom" / name,
            STUDY,
            SeriesInfo(number, "AX STIR"),
            vol,
            pos,
            ori,
            (0.75, 0.8),
            4.0,
            MrAcquisition("STIR", 4200.0, 55.0, 150.0, 12, 150.0, 1.5),
            enhanced=enhanced,
            rescale=None if enhanced else (2.0, -5.0),
        )
        order = np.argsort(pos @ normal)
        write_seg(tmp / "seg" / f"{name}.dcm", STUDY, dss, labels[order], 100 + number)
        written[name] = (dss, tmp / "dicom" / name)
    return written


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("phantom_dicom")
    return tmp, _write_all(tmp)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_every_object_passes_dciodvfy(written: tuple[Path, dict]) -> None:
    tmp, _ = written
    files = sorted(tmp.rglob("*.dcm"))
    assert len(files) == 2 + 1 + 1 + 6 + 1 + 5  # images + 5 SEGs
    problems = {f.name: _dciodvfy_errors(f) for f in files}
    assert {k: v for k, v in problems.items() if v} == {}


def test_us_calibration_and_pixels(written: tuple[Path, dict]) -> None:
    _, series = written
    dual = pydicom.dcmread(next(series["us_dual"][1].glob("*.dcm")))
    assert "PixelSpacing" not in dual
    regions = dual.SequenceOfUltrasoundRegions
    assert len(regions) == 2
    for reg in regions:
        assert (reg.RegionSpatialFormat, reg.RegionDataType, reg.PhysicalUnitsXDirection) == (1, 1, 3)
        assert reg.PhysicalDeltaY == pytest.approx(0.01) and reg.PhysicalDeltaX == pytest.approx(0.012)
        assert reg.RegionLocationMaxY1 - reg.RegionLocationMinY0 + 1 == 180
        assert reg.RegionLocationMaxX1 - reg.RegionLocationMinX0 + 1 == 200
    assert regions[1].RegionLocationMinX0 > regions[0].RegionLocationMaxX1  # side by side
    rgb = dual.pixel_array
    assert rgb.shape == (300, 544, 3) and dual.PhotometricInterpretation == "RGB"
    # burned-in annotation outside the regions is coloured, the image inside is grey
    r0, c0 = regions[0].RegionLocationMinY0, regions[0].RegionLocationMinX0
    inside = rgb[r0 : r0 + 180, c0 : c0 + 200].astype(int)
    assert np.array_equal(inside[..., 0], inside[..., 1])
    assert (np.abs(rgb[:r0].astype(int)[..., 0] - rgb[:r0].astype(int)[..., 2]) > 50).sum() > 100

    cine = pydicom.dcmread(next(series["us_cine"][1].glob("*.dcm")))
    assert cine.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert (cine.NumberOfFrames, cine.PhotometricInterpretation, cine.LossyImageCompression) == (
        4,
        "YBR_FULL_422",
        "01",
    )
    assert cine.FrameIncrementPointer == 0x00181063 and float(cine.FrameTime) == pytest.approx(33.3)
    frames = cine.pixel_array  # decoded to RGB
    ref = series["us_cine"][0][0]
    assert frames.shape == (4, 300, 400, 3)
    r0, c0 = (
        ref.SequenceOfUltrasoundRegions[0].RegionLocationMinY0,
        ref.SequenceOfUltrasoundRegions[0].RegionLocationMinX0,
    )
    # JPEG quality 90 on speckle: the grey region survives within a few grey levels on average
    grey = frames[:, r0 : r0 + 180, c0 : c0 + 200].astype(np.float32).mean(-1)
    assert float(np.abs(grey.mean() - 110).max()) < 10


def test_mr_geometry_shuffling_and_rescale(written: tuple[Path, dict]) -> None:
    _, series = written
    folder = series["mr_axial"][1]
    files = sorted(folder.glob("*.dcm"))
    read = [pydicom.dcmread(f) for f in files]
    normal = np.cross(np.array(read[0].ImageOrientationPatient[:3]), read[0].ImageOrientationPatient[3:])
    by_pos = sorted(read, key=lambda d: float(np.dot(d.ImagePositionPatient, normal)))
    numbers = [int(d.InstanceNumber) for d in by_pos]
    assert sorted(numbers) == list(range(1, 7)) and numbers != list(range(1, 7))
    assert [d.SOPInstanceUID for d in by_pos] != [d.SOPInstanceUID for d in read]  # names not in order
    steps = np.diff([float(np.dot(d.ImagePositionPatient, normal)) for d in by_pos])
    assert np.allclose(steps, 4.4, atol=1e-3) and float(by_pos[0].SpacingBetweenSlices) == pytest.approx(4.4)
    assert [float(v) for v in by_pos[0].PixelSpacing] == [0.75, 0.8]
    assert (by_pos[0].BitsStored, float(by_pos[0].RescaleSlope), float(by_pos[0].RescaleIntercept)) == (
        12,
        2,
        -5,
    )
    assert int(by_pos[0].pixel_array.max()) <= 4095

    enh = series["mr_enhanced"][0][0]
    frames = enh.PerFrameFunctionalGroupsSequence
    along = [float(np.dot(f.PlanePositionSequence[0].ImagePositionPatient, normal)) for f in frames]
    assert enh.NumberOfFrames == 6 and np.all(np.diff(along) > 0)
    stored = pydicom.dcmread(next(series["mr_enhanced"][1].glob("*.dcm"))).pixel_array
    assert np.array_equal(stored, np.stack([d.pixel_array for d in by_pos]))


def test_seg_read_back_by_highdicom(written: tuple[Path, dict]) -> None:
    import highdicom as hd

    tmp, series = written
    for name in ("us_single", "us_cine", "us_dual", "mr_axial", "mr_enhanced"):
        seg = hd.seg.segread(tmp / "seg" / f"{name}.dcm")
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["fat", "fascia", "nodule", "defect"]
        dss = series[name][0]
        if len(dss) == 1 and int(dss[0].get("NumberOfFrames", 1)) > 1:
            n = int(dss[0].NumberOfFrames)
            arr = seg.get_pixels_by_source_frame(
                dss[0].SOPInstanceUID, list(range(1, n + 1)), segment_numbers=[1, 2, 3, 4]
            )
        else:
            arr = seg.get_pixels_by_source_instance(
                [d.SOPInstanceUID for d in dss], segment_numbers=[1, 2, 3, 4]
            )
        counts = arr.reshape(-1, 4).sum(0)
        n_views = {"us_single": 2, "us_cine": 4, "us_dual": 2}.get(name)
        if n_views:
            # per view: fat rows 6:90 minus the nodule box, fascia rows 90:96 minus the stalk, nodule 30x60
            assert counts.tolist() == [
                n_views * (84 * 200 - 1800 - 200),
                n_views * (6 * 200 - 60),
                n_views * 1800,
                n_views * 260,
            ]
        else:
            assert counts.tolist() == [6 * 15 * 48 - 2 * 60, 6 * 2 * 48, 2 * 60, 0]


def test_nodule_free_seg_is_valid(tmp_path: Path) -> None:
    import highdicom as hd

    _write_all(tmp_path, nodule=False)
    for name in ("us_cine", "mr_axial"):
        path = tmp_path / "seg" / f"{name}.dcm"
        seg = hd.seg.segread(path)
        assert len(seg.SegmentSequence) == 4
        referenced = {
            int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            for f in seg.PerFrameFunctionalGroupsSequence
        }
        assert referenced == {1, 2}
        if shutil.which("dciodvfy"):
            assert _dciodvfy_errors(path) == []


def test_uids_are_deterministic() -> None:
    assert make_uid(1, "a") == make_uid(1, "a") != make_uid(2, "a")
    assert make_uid(1, "a").startswith("2.25.") and len(make_uid(1, "a")) <= 64
    assert StudyInfo.create("case_0000", 5) == StudyInfo.create("case_0000", 5)
    assert (
        StudyInfo.create("case_0000", 5).study_instance_uid
        != StudyInfo.create("case_0001", 5).study_instance_uid
    )
