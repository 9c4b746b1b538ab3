"""`pancreas demo`: the bundled demo model on a phantom (a real subprocess), and on one's own CT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from pancreas.bundle import Bundle, default_bundle_path
from pancreas.cli import main
from pancreas.metrics import dice
from pancreas.nifti import same_grid
from pancreas.testing import OBLIQUE_DIRECTION, write_case


def test_demo_command_segments_a_fresh_phantom(tmp_path: Path) -> None:
    bundle = Bundle.load(default_bundle_path())
    proc = subprocess.run([sys.executable, "-m", "pancreas", "demo", "--out", str(tmp_path), "--subtype", "2"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "demo_result.json").read_text())
    assert result["model"]["name"] == bundle.metadata.name
    # what it was trained on, per task: segmentation on real crops + phantoms, the subtype on phantoms only
    assert result["trained_on"] == {"segmentation": ["phantom", "real"], "classification": ["phantom"],
                                    "cases": bundle.metadata.training_data["sources"]}
    assert result["predicted_subtype"] in (0, 1, 2)
    assert abs(sum(result["probabilities"]) - 1.0) < 1e-3
    assert isinstance(result["warnings"], list)  # a crop phantom is what the demo model was trained on
    # the demo bundle recorded its held-out phantom DSC; one fresh phantom should be in that range
    assert result["dice_whole_pancreas"] > bundle.metadata.metrics["phantom_whole_dsc"] - 0.15
    image = sitk.ReadImage(result["files"]["image"])
    pred = sitk.ReadImage(result["files"]["prediction"])
    assert pred.GetSize() == image.GetSize() and pred.GetDirection() == image.GetDirection()
    assert pred.GetOrigin() == image.GetOrigin() and pred.GetSpacing() == image.GetSpacing()


# ---- --image / --mask: the same engine on the user's own CT (a fast random bundle via --model) -------------
def _demo(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, dict | None, str]:
    code = main(["demo", *(str(a) for a in args)])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


@pytest.mark.usefixtures("few_threads")
def test_own_image_and_mask_on_an_oblique_grid(tmp_path: Path, tiny_bundle, capsys) -> None:
    image = write_case(tmp_path / "my_ct.nii.gz", (30, 40, 48), (1.4, 1.1, 2.5), OBLIQUE_DIRECTION,
                            mask_path=tmp_path / "my_mask.nii.gz")
    code, result, err = _demo(capsys, "--image", image, "--mask", tmp_path / "my_mask.nii.gz",
                              "--model", tiny_bundle.root, "--out", tmp_path / "out")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "demo_result.json").read_text()) == result
    assert result["predicted_subtype"] in (0, 1, 2) and "true_subtype" not in result
    assert isinstance(result["warnings"], list) and set(result["volumes_ml"]) == {"pancreas", "lesion"}
    assert {"read", "inference", "write", "total"} <= set(result["timings_ms"])
    pred_path = Path(result["files"]["prediction"])
    assert pred_path == tmp_path / "out" / "my_ct_pred.nii.gz"
    original, pred = sitk.ReadImage(str(image)), sitk.ReadImage(str(pred_path))
    assert pred.GetSize() == original.GetSize() and pred.GetSpacing() == original.GetSpacing()
    assert same_grid(pred, original, tol=1e-6)  # an oblique NIfTI qform round-trips to ~1e-9 only
    labels = sitk.GetArrayFromImage(pred)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "my_mask.nii.gz")))
    assert result["dice_whole_pancreas"] == round(dice(labels > 0, truth > 0), 4)
    assert result["dice_lesion"] == round(dice(labels == 2, truth == 2), 4)


@pytest.mark.usefixtures("few_threads")
def test_own_image_without_mask_has_no_dice(tmp_path: Path, tiny_bundle, capsys) -> None:
    image = write_case(tmp_path / "ct_0000.nii.gz", (24, 32, 32), (1.5, 1.5, 3.0))
    code, result, err = _demo(capsys, "--image", image, "--model", tiny_bundle.root, "--out", tmp_path)
    assert code == 0, err
    assert not [k for k in result if k.startswith("dice")]
    assert result["files"] == {"image": str(image), "prediction": str(tmp_path / "ct_pred.nii.gz")}
    assert sitk.ReadImage(str(tmp_path / "ct_pred.nii.gz")).GetSize() == sitk.ReadImage(str(image)).GetSize()


def test_mask_on_another_grid_is_refused(tmp_path: Path, tiny_bundle, capsys) -> None:
    image = write_case(tmp_path / "ct.nii.gz", (24, 32, 32), (1.5, 1.5, 3.0))
    shifted = write_case(tmp_path / "other.nii.gz", (24, 32, 32), (1.5, 1.5, 3.0), OBLIQUE_DIRECTION)
    code, _, err = _demo(capsys, "--image", image, "--mask", shifted, "--model", tiny_bundle.root,
                         "--out", tmp_path / "out")
    assert code == 1
    assert f"--mask {shifted} is not on the grid of --image {image}" in err and "direction" in err
    assert not (tmp_path / "out" / "ct_pred.nii.gz").exists()  # refused before predicting


@pytest.mark.parametrize("problem", ["missing image", "unreadable image", "missing mask", "probability mask",
                                     "mask without image"])
def test_bad_files_fail_naming_the_file(tmp_path: Path, tiny_bundle, capsys, problem: str) -> None:
    image = write_case(tmp_path / "ct.nii.gz", (8, 16, 16), (1.5, 1.5, 3.0))
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a NIfTI file")
    probs = tmp_path / "probs.nii.gz"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(image)), sitk.sitkFloat32) * 0.0 + 0.4, str(probs))
    nope, no_mask = tmp_path / "nope.nii.gz", tmp_path / "m.nii.gz"
    args, named = {
        "missing image": (["--image", nope], f"--image {nope}: no such file"),
        "unreadable image": (["--image", garbage], f"--image {garbage}: unreadable file"),
        "missing mask": (["--image", image, "--mask", no_mask], f"--mask {no_mask}: no such file"),
        "probability mask": (["--image", image, "--mask", probs], f"--mask {probs}: mask values are not"),
        "mask without image": (["--mask", probs], "--mask needs --image"),
    }[problem]
    code, _, err = _demo(capsys, *args, "--model", tiny_bundle.root, "--out", tmp_path / "out")
    assert code == 1 and named in err, err
    assert not list(tmp_path.rglob("*_pred.nii.gz"))
