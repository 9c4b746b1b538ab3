"""Fallback blob phantoms written straight into an nnU-Net raw dataset (used when pancreas.phantoms or
training.convert are not available). Pancreas = ellipsoid, lesion = sphere inside it whose appearance
depends on the subtype (0 hypodense, 1 hyperdense, 2 hypodense with bright rim)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (40, 64, 64)
SPACING_ZYX = (2.0, 1.0, 1.0)


def blob_case(seed: int, subtype: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij")
    c = np.array(SHAPE) / 2 + rng.uniform(-4, 4, 3)
    r = np.array([8, 18, 22]) * rng.uniform(0.8, 1.2, 3)
    pancreas = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
    lc = c + rng.uniform(-0.3, 0.3, 3) * r
    lr = rng.uniform(4, 7)
    d = np.sqrt(((z - lc[0]) * 2) ** 2 + (y - lc[1]) ** 2 + (x - lc[2]) ** 2)
    lesion = (d <= lr) & pancreas
    img = rng.normal(0, 20, SHAPE).astype(np.float32) - 50
    img[pancreas] += 150
    img[lesion] = {0: -20.0, 1: 260.0, 2: -20.0}[subtype] + rng.normal(0, 20, int(lesion.sum()))
    if subtype == 2:
        img[(d > lr - 1.5) & lesion] = 300
    seg = pancreas.astype(np.uint8)
    seg[lesion] = 2
    return img, seg


def write_raw_dataset(folder: Path, n_cases: int, seed: int = 0, prefix: str = "quiz") -> dict[str, int]:
    """Write ``n_cases`` blob cases as an nnU-Net raw dataset; return case id -> subtype."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    subtypes = {}
    for i in range(n_cases):
        st = i % 3
        case = f"{prefix}_{st}_{i:03d}"
        img, seg = blob_case(seed * 1000 + i, st)
        write_case(folder / "imagesTr" / f"{case}_0000.nii.gz", img)
        write_case(folder / "labelsTr" / f"{case}.nii.gz", seg)
        subtypes[case] = st
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "pancreas": 1, "lesion": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    with open(folder / "subtypes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "subtype", "split"])
        for k, v in subtypes.items():
            w.writerow([k, v, "train"])
    return subtypes


def write_case(path: Path, array: np.ndarray) -> None:
    im = sitk.GetImageFromArray(array)
    im.SetSpacing(tuple(reversed(SPACING_ZYX)))
    sitk.WriteImage(im, str(path))
