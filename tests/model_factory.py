"""Small annotated DICOM for the model tests: an axial MR series of a layered back with a fat nodule and a
fascial defect, plus a DICOM SEG (highdicom) referencing it. Built in well under a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

# class labels of the synthetic anatomy (0 background, 1 fat, 2 fascia, 3 nodule, 4 defect)
SEGMENT_NAMES = {1: "Subcutaneous fat", 2: "TLF", 3: "Lipoma", 4: "Fascial defect"}
SEGMENT_MAP = {"Subcutaneous fat": "fat", "TLF": "fascia", "Lipoma": "nodule", "Fascial defect": "defect"}


def phantom_labels(n: int, rows: int, cols: int, centre_col: int) -> np.ndarray:
    """uint8 (n, rows, cols) class labels: air above row 6, fat rows 6-25, fascia 26-28, muscle below;
    a nodule (radius 6 px) in slices 1..n-2 and a defect through the fascia beneath it."""
    lab = np.zeros((n, rows, cols), np.uint8)
    lab[:, 6:26] = 1
    lab[:, 26:29] = 2
    yy, xx = np.mgrid[:rows, :cols]
    for k in range(1, n - 1):
        disc = (yy - 18) ** 2 + (xx - centre_col) ** 2 <= 36
        lab[k][disc] = 3
        lab[k, 25:29, centre_col - 2 : centre_col + 3] = 4
    return lab


def mr_image(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T1-like intensities for ``lab``: fat bright, fascia dark, muscle grey, nodule brighter, noise."""
    value = np.array([20.0, 800.0, 150.0, 1000.0, 900.0], np.float32)
    img = value[lab]
    img[(lab == 0) & (np.arange(lab.shape[1])[None, :, None] >= 29)] = 400.0  # muscle
    return np.clip(img + rng.normal(0, 25, lab.shape), 0, 4000).astype(np.float32)


def write_mr_with_seg(
    folder: Path, n: int = 5, rows: int = 48, cols: int = 56, spacing: float = 1.5, seed: int = 0
) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Write ``folder/mr/*.dcm`` and ``folder/seg.dcm``; returns (series dir, seg path, image, labels)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rng = np.random.default_rng(seed)
    lab = phantom_labels(n, rows, cols, centre_col=cols // 2 + int(rng.integers(-6, 7)))
    img = mr_image(lab, rng)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    (folder / "mr").mkdir(parents=True, exist_ok=True)
    datasets = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Model", "TM1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.Manufacturer, ds.PositionReferenceIndicator = "test", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 10, 500, 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial: rows run posterior, slices superior
        ds.ImagePositionPatient = [0.0, 0.0, 4.0 * k]
        ds.SliceThickness, ds.SpacingBetweenSlices, ds.SliceLocation = 4.0, 4.0, 4.0 * k
        ds.PixelSpacing = [spacing, spacing]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = img[k].round().astype(np.uint16).tobytes()
        ds.save_as(folder / "mr" / f"{k:03d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.AdiposeTissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, name in SEGMENT_NAMES.items()
    ]
    masks = np.stack([lab == c for c in SEGMENT_NAMES], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=True,
    )
    seg_path = folder / "seg.dcm"
    seg.save_as(seg_path)
    return folder / "mr", seg_path, img, lab


TINY_NET = {
    "class": "UNet",
    "kwargs": {
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 5,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
    },
}


def tiny_bundle(out: Path, modality: str = "MR", seed: int = 0, norm: object = None) -> Path:
    """An untrained (seeded) tiny-UNet bundle for ``modality`` written with the library's own writer;
    ``norm`` (a MONAI norm spec, e.g. ``["instance", {"affine": True}]``) replaces the net's batch norm."""
    import copy

    import torch

    from backmice_vision.model.bundle import make_metadata, save_bundle
    from backmice_vision.model.inference import DEFAULT_MR, DEFAULT_US
    from backmice_vision.model.network import build_network

    prep = DEFAULT_MR if modality == "MR" else DEFAULT_US
    spec = copy.deepcopy(TINY_NET)
    spec["kwargs"]["in_channels"] = prep.in_channels
    if norm is not None:
        spec["kwargs"]["norm"] = norm
    torch.manual_seed(seed)
    net = build_network(spec)
    meta = make_metadata(
        name=f"tiny_{modality.lower()}", prep=prep, network_spec=spec, training={}, metrics={}
    )
    return save_bundle(out, net.state_dict(), meta, "# tiny test model\n")
