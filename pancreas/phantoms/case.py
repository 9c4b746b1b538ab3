"""One phantom case: draw the anatomy, choose the field of view, form the image, store it under a header."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pancreas.errors import PancreasError
from pancreas.phantoms.anatomy import Anatomy, draw_anatomy, draw_pancreas, paint
from pancreas.phantoms.geometry import Grid
from pancreas.phantoms.headers import HEADER_MODES, STORAGES, HeaderSpec, place
from pancreas.phantoms.lesions import Lesion, draw_lesion, render
from pancreas.phantoms.noise import NoiseModel, form_image, texture
from pancreas.phantoms.tissues import Phase

#: the real quiz crops: median 64 x 119 x 178 voxels at 2.0 x 0.73 x 0.73 mm -> extent in mm (z, y, x)
QUIZ_EXTENT_MM = (128.0, 87.0, 130.0)


@dataclass(frozen=True)
class PhantomCase:
    """A generated CT (``image``, HU) and its mask (uint8 0/1/2, same header), subtype and metadata."""

    image: sitk.Image
    mask: sitk.Image
    subtype: int
    meta: dict = field(default_factory=dict)

    def write(self, image_path: str | Path, mask_path: str | Path | None = None) -> None:
        """Write the image (with the case's storage type, e.g. uint16 + scl_slope/scl_inter) and mask."""
        from pancreas.phantoms.writer import write_nifti

        write_nifti(self.image, image_path, STORAGES[self.meta["storage"]])
        if mask_path is not None:
            write_nifti(self.mask, mask_path, None)


def _inplane(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.6, 0.9))


def crop_grid(rng: np.random.Generator, anatomy: Anatomy) -> Grid:
    """A quiz-like ROI around the pancreas. z spacing is mostly 1.5-3 mm (80 %), else 0.7-1.5 or 3-5 mm,
    so that most crops keep 50-80 slices; the extent varies by +-15 % around the quiz median and always
    covers the pancreas with a margin."""
    u = rng.random()
    sz = rng.uniform(1.5, 3.0) if u < 0.8 else (rng.uniform(0.7, 1.5) if u < 0.9 else rng.uniform(3.0, 5.0))
    sxy = _inplane(rng)
    lo, hi = anatomy.pancreas.bbox()
    center = (lo + hi) / 2 + rng.normal(0, 4, 3)
    extent_xyz = np.asarray(QUIZ_EXTENT_MM[::-1]) * rng.uniform(0.85, 1.15, 3)
    extent_xyz = np.maximum(extent_xyz, hi - lo + 2 * np.abs(center - (lo + hi) / 2) + 8.0)
    spacing_xyz = np.array([sxy, sxy, sz])
    shape_xyz = np.rint(extent_xyz / spacing_xyz).astype(int)
    shape_xyz[2] = int(np.clip(shape_xyz[2], 24, 112))
    origin = center - spacing_xyz * (shape_xyz - 1) / 2
    return Grid(shape=tuple(int(n) for n in shape_xyz[::-1]), spacing=(sz, sxy, sxy),
                origin=tuple(float(o) for o in origin))


def full_grid(rng: np.random.Generator, anatomy: Anatomy) -> Grid:
    """A whole abdominal CT: 512 x 512 in-plane, 80-300 slices of 0.7-5 mm; the in-plane field of view
    (0.6-0.9 mm pixels) is fitted to the body width, as scanner operators do."""
    u = rng.random()
    sz = rng.uniform(0.7, 1.25) if u < 0.3 else (rng.uniform(1.25, 3.0) if u < 0.7 else rng.uniform(3.0, 5.0))
    sxy = float(np.clip(2 * anatomy.body.semi[0] * rng.uniform(1.05, 1.3) / 512, 0.6, 0.9))
    nz = int(np.clip(np.rint(rng.uniform(240, 400) / sz), 80, 300))
    lo, hi = anatomy.pancreas.bbox()
    zc = (lo[2] + hi[2]) / 2 + rng.uniform(-30, 30)
    cx, cy = anatomy.body.center
    origin = (cx - sxy * 511 / 2, cy - sxy * 511 / 2, zc - sz * (nz - 1) / 2)
    return Grid(shape=(nz, 512, 512), spacing=(sz, sxy, sxy), origin=tuple(float(o) for o in origin))


#: ``shape`` option -> field-of-view drawer
GRIDS: dict[str, Callable[[np.random.Generator, Anatomy], Grid]] = {"crop": crop_grid, "full": full_grid}


def _check(subtype: int, shape: str, headers: str) -> None:
    if subtype not in (0, 1, 2):
        raise PancreasError(f"subtype {subtype!r} is not one of 0, 1, 2", code="invalid_subtype")
    if shape not in GRIDS:
        raise PancreasError(f"shape {shape!r} is unknown; use one of {sorted(GRIDS)}", code="invalid_option")
    if headers not in HEADER_MODES:
        raise PancreasError(f"headers {headers!r} is unknown; use one of {sorted(HEADER_MODES)}",
                            code="invalid_option")


def make_case(seed: int, subtype: int, *, shape: str = "crop", headers: str = "varied") -> PhantomCase:
    """Generate one phantom. The anatomy, lesion, field of view and noise depend only on ``(seed, subtype,
    shape)``; ``headers`` changes only how the same canonical array is stored."""
    _check(subtype, shape, headers)
    r_anat, r_look, r_grid, r_noise, r_head = (np.random.default_rng(s) for s in
                                               np.random.SeedSequence([int(seed), int(subtype)]).spawn(5))
    phase = Phase.draw(r_look)
    pancreas = draw_pancreas(r_anat)
    lesion, pancreas = draw_lesion(r_anat, subtype, pancreas, phase.pancreas)
    anatomy = draw_anatomy(r_anat, pancreas)
    grid = GRIDS[shape](r_grid, anatomy)
    hu, labels = _form(grid, anatomy, lesion, phase, NoiseModel.draw(r_noise), r_noise)
    spec = HEADER_MODES[headers](r_head)
    world_shift = r_grid.uniform([-40, -260, -700], [40, -120, -200])
    origin = np.asarray(grid.origin) + world_shift
    storage = STORAGES[spec.storage]
    pixel = np.float32 if np.dtype(storage.dtype).kind == "f" or storage.slope_inter else np.int16
    hu_stored = hu if pixel is np.float32 and storage.slope_inter is None else np.rint(hu)
    image = place(hu_stored, grid.spacing, origin, spec, dtype=pixel)
    mask = place(labels, grid.spacing, origin, spec, dtype=np.uint8)
    meta = _meta(grid, spec, lesion, labels, phase, shape, seed)
    return PhantomCase(image=image, mask=mask, subtype=subtype, meta=meta)


def _form(grid: Grid, anatomy: Anatomy, lesion: Lesion, phase: Phase, noise: NoiseModel,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tissue, pancreas = paint(grid, anatomy)
    hu = phase.hu[tissue]
    hu += texture(rng, tissue, phase.texture, grid.spacing)
    lesion_label = render(grid, lesion, hu, pancreas)
    form_image(hu, grid.spacing, noise, rng)
    labels = pancreas.astype(np.uint8)
    labels[lesion_label] = 2
    return hu, labels


def _meta(grid: Grid, spec: HeaderSpec, lesion: Lesion, labels: np.ndarray, phase: Phase, shape: str,
          seed: int) -> dict:
    voxel_mm3 = float(np.prod(grid.spacing))
    n_lesion = int(np.count_nonzero(labels == 2))
    return {
        "seed": int(seed), "subtype": lesion.subtype, "shape": shape,
        "size_zyx": list(grid.shape), "spacing_zyx": [round(float(s), 4) for s in grid.spacing],
        "header": spec.kind, "storage": spec.storage,
        "direction": [round(float(d), 6) for d in spec.direction.ravel()],
        "lesion_location": lesion.location,
        "lesion_diameter_mm": round(float(lesion.diameter_mm), 2),
        "lesion_measured_diameter_mm": round(float(np.cbrt(6 * n_lesion * voxel_mm3 / np.pi)), 2),
        "lesion_core_hu": round(float(lesion.look.core_hu), 1),
        "pancreas_hu": round(phase.pancreas, 1), "contrast_phase": round(phase.p, 3),
    }
