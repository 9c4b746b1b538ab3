"""Predict masks and subtypes for a CT file or a folder of CTs with one or more model bundles.

Writes OUT/<case>.nii.gz (the input's exact geometry), OUT/subtype_results.csv (Names,Subtype) and
OUT/predictions.json (probabilities, volumes, per-stage timings). Several --model bundles are ensembled.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pancreas.backends import DEVICES, PRECISIONS, backend_choices
    from pancreas.cli.inference_options import add_inference_options
    from pancreas.engine_config import EngineConfig

    d = EngineConfig()
    parser.add_argument("-i", "--images", required=True, help="a .nii(.gz) file, a quiz split folder or a flat folder")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--model", action="append", default=None, metavar="BUNDLE",
                        help="model bundle folder (default: the demo bundle; repeat for an ensemble over configurations)")
    parser.add_argument("--backend", default=d.backend, choices=backend_choices(), help="(default: %(default)s)")
    parser.add_argument("--device", default=d.device, help=f"{' | '.join(DEVICES)} or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                        help="auto: the bundle's recommended precision, else fp32 (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="patches per backend call (default: %(default)s)")
    parser.add_argument("--step-size", type=float, default=d.step_size, help="sliding-window step, fraction of the patch")
    add_inference_options(parser)
    parser.add_argument("--coarse-to-fine", action="store_true", help="low-resolution ROI pass first")
    parser.add_argument("--no-postprocess", action="store_true", help="skip largest-component/lesion cleanup")
    parser.add_argument("--compile", action="store_true", help="torch.compile the torch backend")
    parser.add_argument("--threads", type=int, default=None, help="torch/onnxruntime CPU threads")


def run(args: argparse.Namespace) -> int:
    from pancreas.cli.inference_options import inference_overrides
    from pancreas.engine import EngineConfig
    from pancreas.predict import predict_cases

    config = EngineConfig(backend=args.backend, device=args.device, precision=args.precision,
                          batch_size=args.batch_size, step_size=args.step_size, **inference_overrides(args),
                          coarse_to_fine=args.coarse_to_fine, postprocess=not args.no_postprocess,
                          compile=args.compile, num_threads=args.threads)
    from pancreas.bundle import default_bundle_path

    models = args.model or [default_bundle_path()]
    summary = predict_cases(images=args.images, out=args.out, models=models, config=config)
    cases = summary["cases"]
    print(f"{'case':<24} {'subtype':>7} {'pancreas_ml':>11} {'lesion_ml':>9} {'total_ms':>9}")
    for cid, r in cases.items():
        print(f"{cid:<24} {r['subtype']:>7} {r['volumes_ml']['pancreas']:>11.1f} {r['volumes_ml']['lesion']:>9.1f} "
              f"{r['timings_ms']['total']:>9.0f}")
    print(f"wrote {len(cases)} masks, subtype_results.csv and predictions.json to {args.out}")
    return 0
