"""Run the bundled demo model on a freshly synthesized phantom CT, or on your own CT, and print what it found.

Without ``--image``: writes the phantom, its ground-truth mask and the predicted mask to ``--out``
(default ``./demo_output``) and prints the subtype, the probabilities, the volumes, the per-stage timings,
any warnings and the Dice against the phantom's ground truth. With ``--image CT.nii.gz``: predicts that CT
and writes ``<case>_pred.nii.gz`` on exactly its grid; ``--mask`` (labels 1 pancreas, 2 lesion, on the
image's grid) adds the Dice scores. The demo model's segmentation was trained on real pancreas CT crops plus
phantoms, its subtype classifier on phantoms only (its ``training_data``, printed with the result).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled demo model)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--image", type=Path, default=None,
                        help="your own CT (.nii/.nii.gz) instead of a phantom")
    parser.add_argument("--mask", type=Path, default=None,
                        help="ground truth of --image on its grid (1 pancreas, 2 lesion): adds Dice scores")
    parser.add_argument("--subtype", type=int, choices=(0, 1, 2), default=1, help="phantom lesion subtype")
    parser.add_argument("--shape", choices=("crop", "full"), default="crop", help="phantom field of view")
    parser.add_argument("--seed", type=int, default=2026, help="phantom seed")
    parser.add_argument("--backend", default="auto", help="auto | torch | onnxruntime | tensorrt")


@dataclass
class _Inputs:
    """One CT to run the demo on: its canonical volume, ground-truth labels (original grid) if any."""

    volume: Any  # pancreas.nifti.Volume
    truth: Any  # numpy labels on the image's (z, y, x) grid, or None
    stem: str  # output file name prefix
    files: dict[str, str]
    read_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from pancreas.bundle import default_bundle_path
    from pancreas.engine import Engine, EngineConfig
    from pancreas.errors import PancreasError

    if args.mask is not None and args.image is None:
        raise PancreasError("--mask needs --image (the phantom mode uses its own ground truth)")
    out: Path = args.out
    inputs = _user_inputs(args.image, args.mask) if args.image is not None else _phantom_inputs(args, out)
    engine = Engine.from_bundle(args.model or default_bundle_path(), EngineConfig(backend=args.backend))
    data = engine.bundle.metadata.training_data
    trained_on = {task: spec.get("trained_on") for task, spec in data.get("tasks", {}).items()}
    result = {"model": engine.info, "trained_on": {**trained_on, "cases": data.get("sources", {})},
              **inputs.extra, **_predict(engine, inputs, out)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_result.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return 0


def _phantom_inputs(args: argparse.Namespace, out: Path) -> _Inputs:
    """A fresh phantom, written with its ground truth to ``out``."""
    import SimpleITK as sitk

    from pancreas.nifti import read_volume, write_image
    from pancreas.phantoms import make_case

    case = make_case(args.seed, args.subtype, shape=args.shape)
    path = write_image(case.image, out / "phantom_0000.nii.gz")
    write_image(case.mask, out / "phantom_truth.nii.gz")
    start = time.perf_counter()
    volume = read_volume(path)
    return _Inputs(volume, sitk.GetArrayFromImage(case.mask), "phantom", {"image": str(path)},
                   (time.perf_counter() - start) * 1000.0, {"true_subtype": args.subtype})


def _user_inputs(image: Path, mask: Path | None) -> _Inputs:
    """The user's CT, and its mask checked to lie on the CT's grid; errors name the file and the fix."""
    import SimpleITK as sitk

    from pancreas.errors import DatasetError, InvalidImageError
    from pancreas.evaluation import grid_mismatch, label_array
    from pancreas.nifti import canonicalize, read_image
    from pancreas.quiz import case_id_of

    for flag, path in (("--image", image), ("--mask", mask)):
        if path is not None and not path.is_file():
            raise InvalidImageError(f"{flag} {path}: no such file", code="missing_file")
    start = time.perf_counter()
    ct = read_image(image, name=f"--image {image}")
    volume = canonicalize(ct, name=f"--image {image}")
    read_ms = (time.perf_counter() - start) * 1000.0
    files, labels = {"image": str(image)}, None
    if mask is not None:
        truth = read_image(mask, name=f"--mask {mask}")
        differ = grid_mismatch(ct, truth)
        if differ is not None:
            raise DatasetError(f"--mask {mask} is not on the grid of --image {image} ({differ}); pass the "
                               "mask that belongs to this image (same size, spacing, origin and direction)",
                               code="grid_mismatch")
        labels, files["mask"] = label_array(sitk.GetArrayViewFromImage(truth), f"--mask {mask}"), str(mask)
    return _Inputs(volume, labels, case_id_of(image.name), files, read_ms)


def _predict(engine: Any, inputs: _Inputs, out: Path) -> dict[str, Any]:
    """Predict, write the mask on the input's exact grid, report (Dice only where there is a truth)."""
    import SimpleITK as sitk

    from pancreas.metrics import dice

    pred = engine.predict(inputs.volume)
    start = time.perf_counter()
    mask_image = inputs.volume.to_image(pred.mask)
    pred_path = inputs.volume.write_mask(pred.mask, out / f"{inputs.stem}_pred.nii.gz")
    stages = {k: v for k, v in pred.timings_ms.items() if k != "total"}
    timings = {"read": inputs.read_ms, **stages, "write": (time.perf_counter() - start) * 1000.0}
    timings["total"] = sum(timings.values())
    result: dict[str, Any] = {
        "predicted_subtype": pred.subtype,
        "probabilities": [round(p, 4) for p in pred.probabilities],
        "volumes_ml": {k: round(v, 2) for k, v in pred.volumes_ml.items()},
        "warnings": [w.to_json() for w in pred.warnings],
    }
    if inputs.truth is not None:
        labels = sitk.GetArrayViewFromImage(mask_image)
        result["dice_whole_pancreas"] = round(dice(labels > 0, inputs.truth > 0), 4)
        result["dice_lesion"] = round(dice(labels == 2, inputs.truth == 2), 4)
    result["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}
    result["files"] = {**inputs.files, "prediction": str(pred_path)}
    return result
