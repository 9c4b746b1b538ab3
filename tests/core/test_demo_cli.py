"""The README's main job: `pancreas demo` on the bundled demo model, as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from pancreas.bundle import Bundle, default_bundle_path


def test_demo_command_segments_a_fresh_phantom(tmp_path: Path) -> None:
    bundle = Bundle.load(default_bundle_path())
    proc = subprocess.run([sys.executable, "-m", "pancreas", "demo", "--out", str(tmp_path), "--subtype", "2"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "demo_result.json").read_text())
    assert result["model"]["name"] == bundle.metadata.name
    assert result["predicted_subtype"] in (0, 1, 2)
    assert abs(sum(result["probabilities"]) - 1.0) < 1e-3
    # the demo bundle recorded its held-out phantom DSC; one fresh phantom should be in that range
    assert result["dice_whole_pancreas"] > bundle.metadata.metrics["phantom_whole_dsc"] - 0.15
    image = sitk.ReadImage(result["files"]["image"])
    pred = sitk.ReadImage(result["files"]["prediction"])
    assert pred.GetSize() == image.GetSize() and pred.GetDirection() == image.GetDirection()
    assert pred.GetOrigin() == image.GetOrigin() and pred.GetSpacing() == image.GetSpacing()
