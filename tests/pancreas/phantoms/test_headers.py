"""Header variety and world-space equivalence of the stored variants."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.phantoms import make_case
from pancreas.phantoms.headers import DIRECTION_WEIGHTS, STORAGE_WEIGHTS, draw_header
from pancreas.phantoms.preview import read_canonical  # read_volume minus a dangling-view crash


def test_header_draws_cover_every_kind() -> None:
    rng = np.random.default_rng(0)
    specs = [draw_header(rng) for _ in range(300)]
    kinds, storages = Counter(s.kind for s in specs), Counter(s.storage for s in specs)
    assert set(kinds) == set(DIRECTION_WEIGHTS) and set(storages) == set(STORAGE_WEIGHTS)
    for spec in specs:
        d = spec.direction
        assert np.allclose(d.T @ d, np.eye(3), atol=1e-9)
        if spec.kind == "oblique":
            tilt = np.degrees(np.arccos(np.clip(np.abs(d).max(axis=0).min(), -1, 1)))
            assert 2 <= tilt <= 16


def _find_seeds(wanted: set[str], key: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for seed in range(200):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]).spawn(5)[4])
        spec = draw_header(rng)
        found.setdefault(getattr(spec, key), seed)
        if wanted <= set(found):
            return found
    raise AssertionError(f"no seeds found for {wanted - set(found)}")


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path, Path]]:
    """For one seed per direction kind and storage: (varied image, varied mask, canonical image, mask)."""
    out = tmp_path_factory.mktemp("variants")
    seeds = {**_find_seeds(set(DIRECTION_WEIGHTS), "kind"), **_find_seeds(set(STORAGE_WEIGHTS), "storage")}
    paths = {}
    for name, seed in seeds.items():
        for headers in ("varied", "canonical"):
            case = make_case(seed, 0, headers=headers)
            case.write(out / f"{name}_{headers}_0000.nii.gz", out / f"{name}_{headers}.nii.gz")
        paths[name] = tuple(out / f"{name}_{h}{s}.nii.gz" for h in ("varied", "canonical") for s in ("_0000", ""))
    return paths


def test_canonical_arrays_equal_across_headers(variants: dict) -> None:
    for name, (image, mask, canon_image, canon_mask) in variants.items():
        a, b = read_canonical(image), read_canonical(canon_image)
        assert a.array.shape == b.array.shape, name
        assert np.abs(a.array - b.array).max() <= 0.51, name  # float32 keeps the unrounded HU
        assert np.allclose(a.spacing, b.spacing, atol=1e-4), name
        assert np.array_equal(read_canonical(mask).array, read_canonical(canon_mask).array), name


def test_world_positions_match_for_non_oblique(variants: dict) -> None:
    for name in ("LPS", "RAS", "LAS", "permuted"):
        _, mask, _, canon_mask = variants[name]
        points = []
        for path in (mask, canon_mask):
            m = sitk.ReadImage(str(path))
            idx = np.argwhere(sitk.GetArrayFromImage(m) == 2).mean(0)[::-1]
            points.append(m.TransformContinuousIndexToPhysicalPoint([float(i) for i in idx]))
        assert np.allclose(points[0], points[1], atol=1e-3), name


def test_mask_shares_image_header(variants: dict) -> None:
    for name, (image, mask, *_) in variants.items():
        a, b = nib.load(str(image)), nib.load(str(mask))
        assert np.array_equal(a.affine, b.affine) and a.shape == b.shape, name
        assert b.get_data_dtype() == np.uint8
        si, sm = sitk.ReadImage(str(image)), sitk.ReadImage(str(mask))
        assert si.GetDirection() == sm.GetDirection() and si.GetOrigin() == sm.GetOrigin()


def test_storage_types_round_trip(variants: dict) -> None:
    expected = {"int16": (np.int16, None), "float32": (np.float32, None), "uint16_scaled": (np.uint16, -1024.0)}
    for name, (dtype, inter) in expected.items():
        image = variants[name][0]
        nii = nib.load(str(image))
        assert nii.get_data_dtype() == dtype
        if inter is not None:
            assert nii.dataobj.slope == 1.0 and nii.dataobj.inter == inter
            assert np.asarray(nii.dataobj.get_unscaled()).min() >= 0
        via_nib = np.asarray(nii.dataobj, dtype=np.float32).transpose(2, 1, 0)
        via_sitk = sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(np.float32)
        assert np.allclose(via_nib, via_sitk, atol=1e-3), name
        assert -1024 <= via_sitk.min() < -50 and via_sitk.max() > 150


def test_oblique_direction_is_tilted(variants: dict) -> None:
    d = np.asarray(sitk.ReadImage(str(variants["oblique"][0])).GetDirection()).reshape(3, 3)
    off_axis = np.degrees(np.arccos(np.abs(d).max(axis=0)))
    assert off_axis.max() >= 4
