"""Phantom case generation: folder contract, ground truth vs SEG, determinism, nodule-free cases, CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from backmice_vision.cli import main
from backmice_vision.phantoms.generate import generate_cases

# small, fast settings: 300 x 400 px images, one image per single series, a 3-frame cine, a dual view
US_FAST = {
    "anatomy": {"force_nodules": 1},
    "probe": {"depth_mm": 30.0, "width_mm": 40.0, "pixel_mm": 0.1},
    "single_series": [1, 1],
    "images_per_series": [1, 1],
    "cine_frames": [3, 3],
    "p_dual": 1.0,
    "p_on_nodule": 1.0,
}
HAS_MR = importlib.util.find_spec("backmice_vision.phantoms.mr") is not None


def _has_io() -> bool:
    try:
        from backmice_vision.io import load_series  # noqa: F401
    except ImportError:
        return False
    return True


HAS_IO = _has_io()


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _frames_and_sources(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    dss = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: int(d.InstanceNumber))
    arrays = [d.pixel_array for d in dss]
    frames = np.concatenate(
        [a if int(d.get("NumberOfFrames", 1)) > 1 else a[None] for a, d in zip(arrays, dss, strict=True)]
    )
    return frames, dss


def _seg_masks(path: Path, dss: list[pydicom.Dataset], n: int) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["fat", "fascia", "nodule", "defect"]
    if len(dss) == 1 and int(dss[0].get("NumberOfFrames", 1)) > 1:
        arr = seg.get_pixels_by_source_frame(
            dss[0].SOPInstanceUID, list(range(1, n + 1)), segment_numbers=[1, 2, 3, 4]
        )
    else:
        arr = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in dss], segment_numbers=[1, 2, 3, 4])
    return np.asarray(arr, bool)


@pytest.fixture(scope="module")
def us_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("us")
    (case,) = generate_cases("us", 1, 5, out, US_FAST, progress=False)
    return case


def test_us_case_folder_and_truth_match_seg(us_case: Path) -> None:
    truth = json.loads((us_case / "ground_truth.json").read_text())
    assert (
        truth["schema"] == "backmice.phantom/1" and truth["modality"] == "US" and truth["case"] == "case_0000"
    )
    assert len(truth["nodules"]) == 1
    kinds = sorted(s["kind"] for s in truth["series"])
    assert kinds == ["us_cine", "us_dual", "us_single"]
    checked = 0
    for entry in truth["series"]:
        frames, dss = _frames_and_sources(us_case / entry["folder"])
        assert frames.shape[0] == entry["n_frames"] == (3 if entry["kind"] == "us_cine" else 1)
        regions = dss[0].SequenceOfUltrasoundRegions
        assert len(regions) == len(entry["regions"]) == (2 if entry["kind"] == "us_dual" else 1)
        for reg, want in zip(regions, entry["regions"], strict=True):
            box = [
                reg.RegionLocationMinY0,
                reg.RegionLocationMinX0,
                reg.RegionLocationMaxY1 + 1,
                reg.RegionLocationMaxX1 + 1,
            ]
            assert box == want["box"]
            assert [reg.PhysicalDeltaY * 10, reg.PhysicalDeltaX * 10] == pytest.approx(want["spacing_mm"])
        masks = _seg_masks(us_case / entry["seg"], dss, frames.shape[0])
        assert masks.shape[:3] == frames.shape[:3]
        assert not masks[:, : entry["regions"][0]["box"][0]].any()  # nothing above the image region
        for nod in entry["nodules"]:
            k, i, j = nod["center_voxel"]
            assert nod["center_patient_mm"] is None and nod["side"] in ("left", "right")
            r0, c0, r1, c1 = entry["regions"][nod["region_index"]]["box"]
            assert r0 <= i < r1 and c0 <= j < c1
            if nod["visible"] and not nod["truncated"]:
                # the SEG nodule segment of that frame and region is centred on the ground-truth centre
                m = masks[int(k), r0:r1, c0:c1, 2]
                ii, jj = np.nonzero(m)
                assert abs(ii.mean() + r0 - i) < 1.0 and abs(jj.mean() + c0 - j) < 1.0
                checked += 1
    assert checked >= 2  # p_on_nodule = 1: every plane is over the nodule


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_generated_us_files_pass_dciodvfy(us_case: Path) -> None:
    files = sorted(us_case.rglob("*.dcm"))
    assert len(files) == 6
    assert {f.name: e for f in files if (e := _dciodvfy_errors(f))} == {}


def test_same_seed_same_bytes_other_seed_differs(us_case: Path, tmp_path: Path) -> None:
    cfg = {**US_FAST, "p_dual": 0.0, "p_cine": 0.0}
    a = generate_cases("us", 1, 5, tmp_path / "a", cfg, progress=False)[0]
    b = generate_cases("us", 1, 5, tmp_path / "b", cfg, progress=False)[0]
    c = generate_cases("us", 1, 6, tmp_path / "c", cfg, progress=False)[0]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "ground_truth.json").read_text() != (c / "ground_truth.json").read_text()


def test_nodule_free_case_is_valid(tmp_path: Path) -> None:
    cfg = {**US_FAST, "anatomy": {"force_nodules": 0}, "p_dual": 0.0, "p_cine": 0.0}
    (case,) = generate_cases("us", 1, 9, tmp_path, cfg, progress=False)
    truth = json.loads((case / "ground_truth.json").read_text())
    assert truth["nodules"] == [] and all(s["nodules"] == [] for s in truth["series"])
    entry = truth["series"][0]
    frames, dss = _frames_and_sources(case / entry["folder"])
    masks = _seg_masks(case / entry["seg"], dss, frames.shape[0])
    assert masks[..., 0].any() and not masks[..., 2].any() and not masks[..., 3].any()
    if shutil.which("dciodvfy"):
        assert [e for f in case.rglob("*.dcm") for e in _dciodvfy_errors(f)] == []


def test_cli_phantom_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump({**US_FAST, "p_dual": 0.0, "p_cine": 0.0}))
    out = tmp_path / "out"
    assert (
        main(
            [
                "phantom",
                "--modality",
                "us",
                "--cases",
                "2",
                "--seed",
                "1",
                "--out",
                str(out),
                "--config",
                str(cfg),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["case_0000", "case_0001"]
    assert "2/2 cases" in capsys.readouterr().err
    # one process gives the same cases, file for file (each case depends on the seed and its index only)
    one = tmp_path / "one"
    args = ["phantom", "--modality", "us", "--cases", "2", "--seed", "1", "--config", str(cfg), "--quiet"]
    assert main([*args, "--out", str(one), "--workers", "1"]) == 0
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    dicom = [f for f in written if f.suffix == ".dcm"]
    assert dicom and all((out / f).read_bytes() == (one / f).read_bytes() for f in dicom)
    assert main([*args, "--out", str(tmp_path / "none"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--workers must be at least 1" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("probe:\n  frequency: 12\n")
    assert main(["phantom", "--modality", "us", "--out", str(tmp_path / "x"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "frequency" in err and "Traceback" not in err
    bad.write_text("images_per_sries: 3\n")
    assert (
        main(["phantom", "--modality", "us", "--out", str(tmp_path / "x"), "--config", str(bad), "--quiet"])
        == 2
    )
    assert "images_per_sries" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_IO, reason="backmice_vision.io not available yet")
def test_us_loads_through_io_with_generator_geometry(us_case: Path) -> None:
    from backmice_vision.io import load_series

    truth = json.loads((us_case / "ground_truth.json").read_text())
    for entry in truth["series"]:
        series = load_series(us_case / entry["folder"])
        assert series.modality == "US" and series.shape[0] == entry["n_frames"]
        assert [list(r.box) for r in series.regions] == [e["box"] for e in entry["regions"]]
        for reg, want in zip(series.regions, entry["regions"], strict=True):
            assert reg.spacing_mm == pytest.approx(want["spacing_mm"])
            assert reg.depth_offset_mm == pytest.approx(0.0)


MR_FAST = {
    "anatomy": {"force_nodules": 2},
    "protocol": {
        "axial_slices": [5, 5],
        "sagittal_coverage_mm": [6.0, 6.0],
        "flip_prob": 1.0,  # row and column cosines reversed: geometry must stay honest
        "axial_tilt_deg": [6.0, 9.0],
    },
    "contrasts": ["T1", "STIR"],
    "p_sagittal": 1.0,
    "p_enhanced": 1.0,
}


@pytest.fixture(scope="module")
def mr_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_MR:
        pytest.skip("phantoms.mr not available yet")
    (case,) = generate_cases("mr", 1, 2, tmp_path_factory.mktemp("mr"), MR_FAST, progress=False)
    return case


def _affine_from_files(dss: list[pydicom.Dataset]) -> np.ndarray:
    """LPS affine of (k, i, j) from the stored attributes (classic files or Enhanced MR)."""
    ds = dss[0]
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        ori = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
        pos = np.array(
            [f.PlanePositionSequence[0].ImagePositionPatient for f in ds.PerFrameFunctionalGroupsSequence],
            float,
        )
    else:
        ori = np.asarray(ds.ImageOrientationPatient, float)
        spacing = [float(v) for v in ds.PixelSpacing]
        pos = np.array([d.ImagePositionPatient for d in dss], float)
    normal = np.cross(ori[:3], ori[3:])
    pos = pos[np.argsort(pos @ normal)]
    a = np.eye(4)
    a[:3, 0] = pos[1] - pos[0]
    a[:3, 1] = ori[3:] * spacing[0]
    a[:3, 2] = ori[:3] * spacing[1]
    a[:3, 3] = pos[0]
    return a


def test_mr_case_geometry_is_honest(mr_case: Path) -> None:
    truth = json.loads((mr_case / "ground_truth.json").read_text())
    kinds = sorted(s["kind"] for s in truth["series"])
    assert len(kinds) == 3 and "mr_enhanced" in kinds  # T1, STIR, sagittal T2; one as Enhanced MR
    flipped = 0
    for entry in truth["series"]:
        dss = [pydicom.dcmread(p) for p in (mr_case / entry["folder"]).glob("*.dcm")]
        assert ("PerFrameFunctionalGroupsSequence" in dss[0]) == (entry["kind"] == "mr_enhanced")
        affine = _affine_from_files(dss)
        flipped += int(affine[0, 2] < 0)
        for nod in entry["nodules"]:
            kij1 = np.array([*nod["center_voxel"], 1.0])
            assert (affine @ kij1)[:3] == pytest.approx(nod["center_patient_mm"], abs=0.01)
        n_frames = entry["n_frames"]
        masks = _seg_masks(mr_case / entry["seg"], _sorted_mr(dss), n_frames)
        assert masks.shape[0] == n_frames
        n_nodule = sum(n.get("n_voxels", 0) for n in entry["nodules"])
        assert int(masks[..., 2].sum()) == n_nodule
    assert flipped >= 2  # the axial stacks were stored mirrored


def _sorted_mr(dss: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    if len(dss) == 1:
        return dss
    ori = np.asarray(dss[0].ImageOrientationPatient, float)
    normal = np.cross(ori[:3], ori[3:])
    return sorted(dss, key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_generated_mr_files_pass_dciodvfy(mr_case: Path) -> None:
    files = sorted(mr_case.rglob("*.dcm"))
    errors = {f.name: e for f in files if (e := _dciodvfy_errors(f))}
    assert errors == {}


@pytest.mark.skipif(not HAS_IO, reason="backmice_vision.io not available yet")
def test_mr_loads_through_io_with_generator_geometry(mr_case: Path) -> None:
    from backmice_vision.io import load_series

    truth = json.loads((mr_case / "ground_truth.json").read_text())
    for entry in truth["series"]:
        series = load_series(mr_case / entry["folder"])
        assert series.modality == "MR" and series.shape[0] == entry["n_frames"]
        assert series.spacing_mm is not None
        assert list(series.spacing_mm[1:]) == pytest.approx(entry["pixel_spacing_mm"])
        assert series.affine is not None
        for nod in entry["nodules"]:
            xyz = series.affine @ np.array([*nod["center_voxel"], 1.0])
            assert xyz[:3] == pytest.approx(nod["center_patient_mm"], abs=0.01)


@pytest.mark.skipif(not HAS_IO, reason="backmice_vision.io not available yet")
def test_default_mr_axial_is_stored_as_scanners_store_it_and_uids_differ_across_modalities(
    tmp_path: Path,
) -> None:
    from backmice_vision.io import find_series

    mr_default = {
        "protocol": {"axial_slices": [3, 3]},
        "contrasts": ["T1"],
        "p_sagittal": 0.0,
        "p_enhanced": 0.0,
    }
    (mr,) = generate_cases("mr", 1, 11, tmp_path, mr_default, progress=False)
    ds = pydicom.dcmread(next((mr / "dicom").rglob("*.dcm")))
    # rows along patient left, columns along posterior: anterior at the top of the image (anatomy.md §2)
    assert [float(v) for v in ds.ImageOrientationPatient] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    # the same seed for US into the same folder: one subject, two studies, no shared UIDs
    us_dir = tmp_path / "us"
    (us,) = generate_cases("us", 1, 11, us_dir, US_FAST, progress=False)
    refs = find_series(tmp_path)
    assert sorted({r.modality for r in refs}) == ["MR", "US"]
    assert not [p for r in refs for p in r.problems if "mixed" in p], [r.problems for r in refs]
    studies = {json.loads((c / "ground_truth.json").read_text())["study_instance_uid"] for c in (mr, us)}
    assert len(studies) == 2
