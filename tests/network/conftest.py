"""Tiny nnU-Net plans (hand-written in nnunetv2 2.8 format) for network unit tests."""

from __future__ import annotations

from typing import Any

import pytest


def _arch(cls: str, blocks_key: str) -> dict[str, Any]:
    return {
        "network_class_name": cls,
        "arch_kwargs": {
            "n_stages": 4,
            "features_per_stage": [4, 8, 16, 16],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
            blocks_key: [1, 1, 1, 1] if blocks_key == "n_blocks_per_stage" else [2, 2, 2, 2],
            "n_conv_per_stage_decoder": [1, 1, 1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def make_plans(residual: bool = False) -> dict[str, Any]:
    arch = (_arch("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", "n_blocks_per_stage")
            if residual else _arch("dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                   "n_conv_per_stage"))
    return {
        "dataset_name": "Dataset999_Unit",
        "plans_name": "nnUNetPlansUnit",
        "original_median_spacing_after_transp": [2.0, 1.0, 1.0],
        "original_median_shape_after_transp": [16, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlansUnit_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [8, 16, 16],
                "median_image_size_in_voxels": [16, 32, 32],
                "spacing": [2.0, 1.0, 1.0],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "architecture": arch,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "hand-written",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 300.0, "mean": 50.0, "median": 50.0, "min": -100.0, "percentile_00_5": -90.0,
                  "percentile_99_5": 250.0, "std": 40.0}
        },
    }


@pytest.fixture(scope="session")
def tiny_plans() -> dict[str, Any]:
    return make_plans()


@pytest.fixture(scope="session")
def tiny_res_plans() -> dict[str, Any]:
    return make_plans(residual=True)
