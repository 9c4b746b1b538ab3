"""nnU-Net fingerprint extraction, experiment planning and preprocessing for a converted dataset.
``--tiny`` plans a small CPU-friendly network (plans identifier nnUNetPlansTiny); ``--lowres-factor F`` adds the
low-res stage and the cascade. Examples: ``pancreas plan 501 --configs 3d_fullres --tiny --workdir work_dirs``,
``pancreas plan 501 --configs 3d_lowres,3d_cascade_fullres --tiny --lowres-factor 2``"""

from __future__ import annotations

import argparse
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET_ID_OR_FOLDER",
                        help="dataset id (501), name (Dataset501_Name) or raw dataset folder")
    parser.add_argument("--configs", default="3d_fullres",
                        help="comma-separated configurations to preprocess: 2d,3d_fullres,3d_lowres,3d_cascade_fullres "
                             "(%(default)s)")
    parser.add_argument("--tiny", action="store_true", help="small network and patch for CPU work and CI")
    parser.add_argument("--tiny-patch-voxels", type=int, default=None,
                        help="tiny planner: max voxels of the 3D patch (default 40*56*56)")
    parser.add_argument("--tiny-features", default=None, metavar="BASE,MAX",
                        help="tiny planner: base and max feature widths (default 8,64)")
    parser.add_argument("--spacing-factor", type=float, default=1.0,
                        help="tiny planner: multiply nnU-Net's target spacing (coarser grid, faster CPU training)")
    parser.add_argument("--lowres-factor", type=float, default=None, metavar="F",
                        help="tiny planner: also plan 3d_lowres at F x the 3d_fullres spacing and 3d_cascade_fullres "
                             "(nnU-Net itself plans low-res only for images far larger than the patch)")
    parser.add_argument("--target-spacing", type=_floats, default=None, metavar="Z,Y,X",
                        help="override nnU-Net's 3d_fullres target spacing (mm)")
    parser.add_argument("--planner", default="default", help="default (PlainConvUNet) or resenc (ResEnc M)")
    parser.add_argument("--plans-name", default=None, help="plans identifier (default nnUNetPlans / nnUNetPlansTiny)")
    parser.add_argument("--workers", type=int, default=2, help="processes for fingerprinting/preprocessing (2)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="work root (default: implied by a raw dataset folder, else work_dirs)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from training.nnunet_env import configure, dataset_workdir
    from training.planning import TinyOptions, plan_and_preprocess

    workdir = args.workdir or dataset_workdir(args.dataset) or Path("work_dirs")
    configure(workdir)
    tiny = TinyOptions(spacing_factor=args.spacing_factor, lowres_factor=args.lowres_factor)
    if args.tiny_patch_voxels:
        tiny = replace(tiny, max_patch_voxels=args.tiny_patch_voxels)
    if args.tiny_features:
        base, top = (int(v) for v in args.tiny_features.split(","))
        tiny = replace(tiny, base_features=base, max_features=top)
    result = plan_and_preprocess(args.dataset, configurations=tuple(c for c in args.configs.split(",") if c),
                                 tiny=args.tiny, tiny_options=tiny, planner=args.planner,
                                 plans_name=args.plans_name, num_processes=args.workers,
                                 overwrite_target_spacing=args.target_spacing)
    print("\n".join(result.summary()))
    return 0
