"""The detector: series → class probabilities → measured nodules (:class:`DetectionResult`).

``Detector.from_pretrained()`` uses the shipped bundles ``models/backmice_us`` and ``models/backmice_mr``,
choosing by the series' modality at :meth:`Detector.detect` time; each bundle is loaded (and its sha256
verified) once, on first use. ``model=`` names one bundle folder instead (then only its modality works).

``backend="onnxruntime"`` runs the networks with onnxruntime on the CPU (an optional dependency; the
ONNX graph is exported from the loaded bundle on first use). Measured with one thread on a loaded 2-core
machine, before the torch CPU path ran channels-last (NHWC, ~30 % faster; see ``load_bundle``): network
alone 1.1-1.4× faster than torch (batches of 8 tiles), :meth:`Detector.probabilities` on phantom series
1.2× (US cine) and 1.4× (MR), probabilities equal to 1e-5.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import ConfigError, ModelError
from ..labels import NODULE
from ..profiles import profile_for
from ..types import DetectionResult, ImageSeries, Precision
from .bundle import Bundle, default_bundle_dir, load_bundle

if TYPE_CHECKING:
    from ..findings import Thresholds
    from .export import OnnxNetwork


class Detector:
    """Find back mice in an :class:`ImageSeries`. Thresholds: ``configs/inference.yaml`` or ``thresholds``.

    ``flip`` averages the prediction with the left-right mirrored input (test-time augmentation; twice
    the model time). ``precision``: ``"float32"`` or ``"bfloat16"`` (the forward pass under autocast:
    about 1.6 times as fast on CPUs with AMX and on recent GPUs, probabilities within about 1e-2; torch
    backend only). ``backend``: ``"torch"`` or ``"onnxruntime"`` (CPU only: ``device`` "auto" becomes
    CPU; raises :class:`ModelError` when onnxruntime is not installed).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        *,
        thresholds: Mapping[str, float] | None = None,
        config: str | Path | None = None,
        flip: bool = False,
        precision: Precision = "float32",
        backend: Literal["torch", "onnxruntime"] = "torch",
    ) -> None:
        from .inference import check_precision, resolve_device

        if backend not in ("torch", "onnxruntime"):
            raise ConfigError(f"backend must be torch or onnxruntime, not {backend!r}")
        if backend == "onnxruntime":
            try:
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                raise ModelError("backend 'onnxruntime' needs the onnxruntime package") from exc
            device = "cpu" if device == "auto" else device
        self.backend = backend
        check_precision(precision, backend)
        self.precision = precision
        self.device = resolve_device(device)
        if backend == "onnxruntime" and self.device.type != "cpu":
            raise ConfigError(f"the onnxruntime backend runs on the CPU, not on {self.device.type}")
        self._onnx: dict[str, OnnxNetwork] = {}
        # called with (series, probabilities) after each detection, e.g. to post-process them again under
        # other thresholds (backmice evaluate --variant); the array is the detector's, not a copy
        self.on_probabilities: Callable[[ImageSeries, np.ndarray], None] | None = None
        self.model_dir = None if model is None else Path(model)
        self.flip = flip
        from ..findings import Thresholds, load_thresholds

        self._config = config
        load_thresholds(config)  # a missing file or an unknown name fails now, not at the first series
        # a typo in a name is a ConfigError here, never silently ignored
        checked = None if thresholds is None else Thresholds.check(thresholds, "Detector(thresholds=...)")
        self._thresholds = checked
        self._bundles: dict[str, Bundle] = {}
        if self.model_dir is not None:  # an explicit model must exist: fail now, not at the first series
            bundle = load_bundle(self.model_dir, device=self.device)
            self._bundles[bundle.modality] = bundle

    @classmethod
    def from_pretrained(
        cls, model: str | Path | None = None, device: str = "auto", **kwargs: Any
    ) -> Detector:
        """A detector on the shipped models (``model=None``) or on one bundle folder."""
        return cls(model, device, **kwargs)

    @property
    def thresholds(self) -> Thresholds:
        """The operating point (``config``, default ``configs/inference.yaml``) with the ``thresholds``
        given to the constructor."""
        from ..findings import load_thresholds

        return load_thresholds(self._config).replace(self._thresholds)

    def thresholds_for(self, modality: str) -> Thresholds:
        """The thresholds a series of ``modality`` is analysed with: ``config``, then the bundle's
        ``postprocessing`` (chosen for its network), then the ``thresholds`` given to the constructor."""
        from ..findings import load_thresholds

        post = self.bundle_for(modality).postprocessing
        return load_thresholds(self._config).replace(post).replace(self._thresholds)

    def bundle_for(self, modality: str) -> Bundle:
        """The bundle for ``modality`` (loaded on first use); :class:`UnsupportedSeries` for a modality
        without a profile (:mod:`backmice_vision.profiles`)."""
        modality = profile_for(modality).modality
        if modality not in self._bundles:
            if self.model_dir is not None:
                only = next(iter(self._bundles.values()))
                raise ModelError(f"model is for {only.modality}, the series is {modality}", self.model_dir)
            self._bundles[modality] = load_bundle(
                default_bundle_dir(modality), modality=modality, device=self.device
            )
        return self._bundles[modality]

    def probabilities(self, series: ImageSeries, timings: dict[str, float] | None = None) -> np.ndarray:
        """Class probabilities float32 ``(C, n, rows, cols)`` on the series' source grid."""
        from .inference import predict_probabilities

        bundle = self.bundle_for(series.modality)
        if self.backend == "torch":
            return predict_probabilities(
                bundle, series, self.device, flip=self.flip, precision=self.precision, timings=timings
            )
        if bundle.modality not in self._onnx:
            from .export import OnnxNetwork

            self._onnx[bundle.modality] = OnnxNetwork(bundle)
        net = self._onnx[bundle.modality]
        return predict_probabilities(
            net, series, self.device, prep=bundle.preprocessing, flip=self.flip, timings=timings
        )

    def detect(self, series: ImageSeries) -> DetectionResult:
        """Run the whole detection on one series: probabilities, instances and measurements."""
        from ..findings import extract_nodules
        from .inference import class_labels

        bundle = self.bundle_for(series.modality)
        timings: dict[str, float] = {}
        probs = self.probabilities(series, timings)
        t0 = time.perf_counter()
        thresholds = self.thresholds_for(series.modality)
        nodules, series_p = extract_nodules(
            series, probs, calibration=bundle.calibration, thresholds=thresholds
        )
        label_map = class_labels(probs)
        nodule_p = probs[NODULE].copy()  # a copy: a view would keep all five channels alive with the result
        timings["postprocess"] = time.perf_counter() - t0
        if self.on_probabilities is not None:
            self.on_probabilities(series, probs)
        return DetectionResult(
            series=series,
            nodules=nodules,
            series_probability=float(series_p),
            label_map=label_map,
            nodule_probability=nodule_p,
            model_id=bundle.model_id,
            model_version=bundle.version,
            timings_s={k: round(v, 4) for k, v in timings.items()},
            thresholds=dict(thresholds),
        )


def detect(path: str | Path, **kwargs: Any) -> DetectionResult:
    """Load the series at ``path`` and detect (``kwargs`` as for :meth:`DetectorSpec.of
    <backmice_vision.pipeline.DetectorSpec.of>`: model, device, config, thresholds, flip, backend), with the
    detector of this process's cache; raises the :class:`~backmice_vision.errors.BackmiceError` of a bad
    series (:func:`backmice_vision.run_series` returns it as a failed outcome instead)."""
    from ..io import load_series
    from ..pipeline import DetectorSpec, get_detector

    return get_detector(DetectorSpec.of(**kwargs)).detect(load_series(path))
