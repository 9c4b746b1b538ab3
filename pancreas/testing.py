"""Test support: tiny, realistic-looking bundles built without training.

``make_random_bundle`` writes a complete bundle (nnU-Net v2 plans, dataset.json, metadata, random-init
weights of the real :class:`~pancreas.network.MultiTaskUNet`) so engine, service, optimize and benchmark
tests can exercise the real code paths in seconds. Predictions of such a bundle are meaningless.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pancreas import LABELS
from pancreas.bundle import Artifact, Bundle, BundleMetadata, HeadConfig, NetworkConfig, provenance

_ARCH_IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def tiny_plans(*, patch_size: tuple[int, int, int] = (32, 64, 64),
               spacing: tuple[float, float, float] = (2.0, 1.5, 1.5),
               features: tuple[int, ...] = (8, 16, 32, 64), residual: bool = False,
               convs_per_stage: int = 2) -> dict[str, Any]:
    """An nnU-Net v2 plans dict (one ``3d_fullres`` configuration) for tiny networks.

    ``residual`` selects ResidualEncoderUNet (``convs_per_stage`` residual blocks per encoder stage) instead
    of PlainConvUNet (``convs_per_stage`` convolutions per stage).
    """
    n = len(features)
    cls, blocks_key = (("ResidualEncoderUNet", "n_blocks_per_stage") if residual
                       else ("PlainConvUNet", "n_conv_per_stage"))
    strides = [[1, 1, 1]] + [[1, 2, 2]] + [[2, 2, 2]] * (n - 2)
    kernels = [[1, 3, 3]] + [[3, 3, 3]] * (n - 1)
    resample = {"order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlansTiny_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": [64, 58, 87],
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resample},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resample},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resample},
        "architecture": {
            "network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
            "arch_kwargs": {
                "n_stages": n,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": kernels,
                "strides": strides,
                blocks_key: [convs_per_stage] * n,
                "n_conv_per_stage_decoder": [convs_per_stage] * (n - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": False},
            },
            "_kw_requires_import": list(_ARCH_IMPORTS),
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset999_RandomTiny",
        "plans_name": "nnUNetPlansTiny",
        "original_median_spacing_after_transp": [2.0, 0.73, 0.73],
        "original_median_shape_after_transp": [64, 119, 178],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "TinyPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 400.0, "mean": 85.0, "median": 88.0, "min": -150.0,
                  "percentile_00_5": -60.0, "percentile_99_5": 230.0, "std": 45.0},
        },
    }


def write_nifti(path: str | Path, array: Any, header: dict[str, Any]) -> Path:
    """Write ``array`` (numpy ``(z, y, x)``) as a compressed NIfTI with ``header`` keys spacing/origin/direction."""
    import numpy as np
    import SimpleITK as sitk

    from pancreas.nifti import write_image

    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(header["spacing"])
    image.SetOrigin(header["origin"])
    image.SetDirection(tuple(float(v) for v in header["direction"]))
    return write_image(image, path)


def tiny_dataset_json(num_training: int = 0) -> dict[str, Any]:
    return {"channel_names": {"0": "CT"}, "labels": dict(LABELS), "numTraining": num_training,
            "file_ending": ".nii.gz", "name": "RandomTiny"}


def make_random_bundle(root: str | Path, *, seed: int = 0, head: str = "mask", folds: int = 1,
                       plans: dict[str, Any] | None = None, name: str = "random-tiny") -> Bundle:
    """Write a bundle with random-init weights of the real multi-task network and return it loaded."""
    import torch

    from pancreas.network import build_network

    root = Path(root)
    plans = copy.deepcopy(plans) if plans is not None else tiny_plans()
    net_config = NetworkConfig(head=HeadConfig(variant=head))
    (root / "models").mkdir(parents=True, exist_ok=True)
    artifacts = []
    patch = plans["configurations"][net_config.configuration]["patch_size"]
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        net = build_network(plans, net_config, deep_supervision=False)
        rel = f"models/fold_{fold}.pt"
        torch.save(net.state_dict(), root / rel)
        artifacts.append(Artifact(kind="torch", path=rel, precision="fp32", fold=fold, patch_size=list(patch)))
    meta = BundleMetadata(name=name, description="random-init test bundle (meaningless predictions)",
                          network=net_config, artifacts=artifacts,
                          provenance=provenance(f"pancreas.testing.make_random_bundle(seed={seed})"))
    return Bundle.write(root, meta, plans, tiny_dataset_json())
