"""JSON report of one :class:`DetectionResult`, schema ``"backmice.report/1"``.

Voxel positions are ``[k, i, j]`` (slice/frame, row, column of the stored source grid, 0-based), patient
positions LPS millimetres; every quantity carries its unit in the key name (``_mm``, ``_ml``, ``_s``).
``bbox_voxel`` is ``[k0, i0, j0, k1, i1, j1]`` with exclusive ends. Masks are not included (see the SEG).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import write_text_atomic
from .dicom_common import software_version

if TYPE_CHECKING:
    from ..types import DetectionResult, Nodule

SCHEMA_ID = "backmice.report/1"

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_VEC3 = {"type": "array", "items": _NUM, "minItems": 3, "maxItems": 3}
_VEC3_OR_NULL = {"oneOf": [_VEC3, {"type": "null"}]}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "backmice_vision detection report",
    "type": "object",
    "required": [
        "schema",
        "software_version",
        "study_instance_uid",
        "series_instance_uid",
        "modality",
        "model",
        "series_probability",
        "calibrated",
        "thresholds",
        "timings_s",
        "findings",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "software_version": {"type": "string"},
        "study_instance_uid": {"type": "string"},
        "series_instance_uid": {"type": "string"},
        "modality": {"enum": ["MR", "US"]},
        "shape_voxels": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
        "model": {
            "type": "object",
            "required": ["id", "version"],
            "properties": {"id": {"type": "string"}, "version": {"type": "string"}},
        },
        "series_probability": {"type": "number", "minimum": 0, "maximum": 1},
        "calibrated": {"type": "boolean", "description": "false: no size in mm could be measured"},
        "thresholds": {"type": "object", "additionalProperties": _NUM},
        "timings_s": {"type": "object", "additionalProperties": _NUM},
        "problems": {"type": "array", "items": {"type": "string"}},
        "outputs": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "id",
                    "confidence",
                    "center_voxel",
                    "bbox_voxel",
                    "diameters_mm",
                    "fascia_defect",
                ],
                "properties": {
                    "id": {"type": "integer"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "center_voxel": _VEC3,
                    "center_patient_mm": _VEC3_OR_NULL,
                    "bbox_voxel": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 6,
                        "maxItems": 6,
                    },
                    "diameters_mm": {"type": "array", "items": _NUM},
                    "longest_diameter_mm": _NUM_OR_NULL,
                    "volume_ml": _NUM_OR_NULL,
                    "depth_mm": _NUM_OR_NULL,
                    "fascia_depth_mm": _NUM_OR_NULL,
                    "side": {"enum": ["left", "right", None]},
                    "region_index": {"type": ["integer", "null"]},
                    "truncated": {"type": "boolean"},
                    "fascia_defect": {
                        "type": "object",
                        "required": ["present", "probability"],
                        "properties": {
                            "present": {"type": "boolean"},
                            "probability": {"type": "number", "minimum": 0, "maximum": 1},
                            "width_mm": _NUM_OR_NULL,
                            "location_voxel": _VEC3_OR_NULL,
                        },
                    },
                    "needle_target": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "required": ["skin_voxel", "depth_mm"],
                                "properties": {
                                    "skin_voxel": _VEC3,
                                    "skin_patient_mm": _VEC3_OR_NULL,
                                    "depth_mm": _NUM,
                                },
                            },
                        ]
                    },
                },
            },
        },
    },
}


def _num(value: float | None, digits: int = 4) -> float | None:
    """A finite float rounded to ``digits`` decimals, or ``None`` (JSON has no NaN)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def _vec(values: tuple[float, ...] | None, digits: int = 3) -> list[float | None] | None:
    return None if values is None else [_num(v, digits) for v in values]


def finding_dict(nodule: Nodule) -> dict[str, Any]:
    """Every :class:`Nodule` field except the mask, units in the key names."""
    d = nodule.fascia_defect
    target = nodule.needle_target
    return {
        "id": int(nodule.id),
        "confidence": _num(nodule.confidence),
        "center_voxel": _vec(nodule.center_voxel),
        "center_patient_mm": _vec(nodule.center_patient_mm),
        "bbox_voxel": [int(v) for v in nodule.bbox],
        "diameters_mm": [_num(v, 2) for v in nodule.diameters_mm],
        "longest_diameter_mm": _num(nodule.longest_diameter_mm, 2),
        "volume_ml": _num(nodule.volume_ml),
        "depth_mm": _num(nodule.depth_mm, 2),
        "fascia_depth_mm": _num(nodule.fascia_depth_mm, 2),
        "side": nodule.side,
        "region_index": nodule.region_index,
        "truncated": bool(nodule.truncated),  # cut by the edge of the imaged field: sizes are lower bounds
        "fascia_defect": {
            "present": bool(d.present),
            "probability": _num(d.probability),
            "width_mm": _num(d.width_mm, 2),
            "location_voxel": _vec(d.location_voxel),
        },
        "needle_target": None
        if target is None
        else {
            "skin_voxel": _vec(target.skin_voxel),
            "skin_patient_mm": _vec(target.skin_patient_mm),
            "depth_mm": _num(target.depth_mm, 2),
        },
    }


def report_dict(result: DetectionResult, outputs: dict[str, list[Path]] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; ``outputs`` lists the other files written (names only)."""
    series = result.series
    report: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "software_version": software_version(),
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "modality": series.modality,
        "shape_voxels": list(series.shape),
        "model": {"id": result.model_id, "version": result.model_version},
        "series_probability": _num(result.series_probability),
        "calibrated": series.calibrated,
        "thresholds": {k: _num(v) for k, v in result.thresholds.items()},
        "timings_s": {k: _num(v) for k, v in result.timings_s.items()},
        "problems": list(series.problems),
        "findings": [finding_dict(n) for n in result.nodules],
    }
    if outputs is not None:
        report["outputs"] = {kind: [p.name for p in paths] for kind, paths in outputs.items()}
    return report


def write_report(result: DetectionResult, path: Path, outputs: dict[str, list[Path]] | None = None) -> Path:
    """Write :func:`report_dict` as indented UTF-8 JSON, atomically."""
    text = json.dumps(report_dict(result, outputs), indent=2, allow_nan=False, ensure_ascii=False)
    return write_text_atomic(text + "\n", path)
