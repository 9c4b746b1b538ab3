"""nnU-Net v2's own predictor running OUR weights: the honest baseline for ``pancreas bench compare``.

The multi-task network is wrapped in :class:`~pancreas.network.SegmentationView` (forward → segmentation
only; state-dict keys identical to the ``MultiTaskUNet``'s), and handed to
``nnUNetPredictor.manual_initialization`` with one state dict per fold. Nothing of nnU-Net is replaced:
preprocessing (``DefaultPreprocessor.run_case``: read with the plans' reader, crop to non-zero, CT
normalization, scipy resampling), sliding window (Gaussian, ``tile_step_size``, mirroring TTA) and export
(``export_prediction_from_logits``: resampling back, argmax, writing the NIfTI) are nnU-Net's code.

:meth:`NnUNetBaseline.predict_file` runs these three calls for one case, file on disk → mask on disk, which is
exactly what ``nnUNetPredictor.predict_from_files_sequential`` does per case; the calls are timed one by
one to give the per-stage breakdown. (``predict_from_files`` only adds worker pools that overlap
preprocessing/export of *different* cases; for single-case latency it is the same work plus pool start-up.)

``initialize_from_trained_model_folder`` is deliberately not used: its trainer lookup imports torchvision.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pancreas.bundle import Bundle
from pancreas.errors import BundleError

logger = logging.getLogger(__name__)

#: nnU-Net's own default for 3D networks (``nnUNetTrainer.configure_rotation_dummyDA_mirroring...``).
DEFAULT_MIRROR_AXES = (0, 1, 2)


@dataclass(frozen=True)
class NnUNetSettings:
    """``nnUNetPredictor`` options; the defaults are nnU-Net v2's own defaults."""

    tile_step_size: float = 0.5
    use_gaussian: bool = True
    use_mirroring: bool = True
    perform_everything_on_device: bool = True
    device: str = "cpu"
    #: print nnU-Net's own progress output (it uses ``print``); silenced by default
    verbose: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_dicts(bundle: Bundle) -> list[dict[str, Any]]:
    """The fp32 torch state dicts of all folds of ``bundle`` (keys of ``MultiTaskUNet``)."""
    import torch

    arts = bundle.artifacts("torch", "fp32") or bundle.artifacts("torch")
    if not arts:
        raise BundleError(f"bundle {bundle.root} has no torch artifact; nnU-Net's predictor needs the "
                          "torch state dict (use the training bundle, not an ONNX-only bundle)")
    return [torch.load(bundle.path(a), map_location="cpu", weights_only=True) for a in arts]


class NnUNetBaseline:
    """``nnUNetPredictor`` initialized with the bundle's weights. Use :meth:`predict_file`."""

    def __init__(self, bundle: Bundle, settings: NnUNetSettings | None = None) -> None:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from pancreas.network import SegmentationView, build_network

        self.settings = settings or NnUNetSettings()
        s = self.settings
        self.bundle = bundle
        config = bundle.metadata.network
        net = build_network(bundle.plans, config, deep_supervision=False)
        view = SegmentationView(net).to(torch.device(s.device)).eval()
        params = state_dicts(bundle)
        self.plans_manager = PlansManager(copy.deepcopy(bundle.plans))
        self.configuration_manager = self.plans_manager.get_configuration(config.configuration)
        self.dataset_json = copy.deepcopy(bundle.dataset)
        axes = tuple(bundle.metadata.inference.get("mirror_axes", DEFAULT_MIRROR_AXES))
        with self._quiet():
            self.predictor = nnUNetPredictor(tile_step_size=s.tile_step_size, use_gaussian=s.use_gaussian,
                                             use_mirroring=s.use_mirroring,
                                             perform_everything_on_device=s.perform_everything_on_device,
                                             device=torch.device(s.device), verbose=False,
                                             verbose_preprocessing=False, allow_tqdm=False)
            self.predictor.manual_initialization(view, self.plans_manager, self.configuration_manager, params,
                                                 self.dataset_json, "nnUNetTrainer", axes)
        self.preprocessor = self.configuration_manager.preprocessor_class(verbose=False)

    def _quiet(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if self.settings.verbose else contextlib.redirect_stdout(io.StringIO())

    @property
    def file_ending(self) -> str:
        return str(self.dataset_json.get("file_ending", ".nii.gz"))

    def warmup(self) -> None:
        """One patch through nnU-Net's own predict path, as a case would go (not a per-case cost).

        ``predict_logits_from_preprocessed_data`` on a zero volume of exactly one patch: every fold, the
        mirroring TTA, fp16 autocast on CUDA and ``cudnn.benchmark`` (set by ``nnUNetPredictor`` on CUDA), so
        cuDNN's autotuning for the patch shape and dtype happens here and not in the first timed case.
        """
        import torch

        patch = tuple(self.configuration_manager.patch_size)
        x = torch.zeros(self.bundle.metadata.network.input_channels, *patch)
        with self._quiet():
            self.predictor.predict_logits_from_preprocessed_data(x)
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize()

    def predict_file(self, image: str | Path, output: str | Path) -> dict[str, float]:
        """Predict ``image`` and write the mask to ``output`` (a ``.nii.gz`` path); return stage times (ms)."""
        from nnunetv2.inference.export_prediction import export_prediction_from_logits

        output = str(output)
        if not output.endswith(self.file_ending):
            raise ValueError(f"output {output!r} must end with {self.file_ending!r}")
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        times: dict[str, float] = {}
        with self._quiet():
            t0 = time.perf_counter()
            data, _, properties = self.preprocessor.run_case([str(image)], None, self.plans_manager,
                                                             self.configuration_manager, self.dataset_json)
            t1 = time.perf_counter()
            import torch

            logits = self.predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
            t2 = time.perf_counter()
            export_prediction_from_logits(logits, properties, self.configuration_manager, self.plans_manager,
                                          self.dataset_json, output[: -len(self.file_ending)], False)
            t3 = time.perf_counter()
        times["read_preprocess"] = (t1 - t0) * 1e3
        times["sliding_window"] = (t2 - t1) * 1e3
        times["resample_export"] = (t3 - t2) * 1e3
        return times
