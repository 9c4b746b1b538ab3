"""One phantom case: draw the anatomy, choose the field of view, form the image, store it under a header."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pancreas.errors import PancreasError
from pancreas.nifti import write_nifti1
from pancreas.phantoms.anatomy import Anatomy, PancreasShape, draw_anatomy, draw_pancreas, paint
from pancreas.phantoms.fov import GRIDS, QUIZ_EXTENT_MM, crop_grid, full_grid
from pancreas.phantoms.geometry import Grid
from pancreas.phantoms.headers import HEADER_MODES, STORAGES, HeaderSpec, place
from pancreas.phantoms.lesions import Lesion, draw_lesion, render
from pancreas.phantoms.noise import NoiseModel, form_image, texture
from pancreas.phantoms.profiles import PROFILES
from pancreas.phantoms.shapes import RealShape, ShapeSource
from pancreas.phantoms.sizing import gland_centroid
from pancreas.phantoms.tissues import Phase

__all__ = ["GRIDS", "QUIZ_EXTENT_MM", "PhantomCase", "crop_grid", "full_grid", "make_case"]


@dataclass(frozen=True)
class PhantomCase:
    """A generated CT (``image``, HU) and its mask (uint8 0/1/2, same header), subtype and metadata."""

    image: sitk.Image
    mask: sitk.Image
    subtype: int
    meta: dict = field(default_factory=dict)

    def write(self, image_path: str | Path, mask_path: str | Path | None = None) -> None:
        """Write the image (with the case's storage type, e.g. uint16 + scl_slope/scl_inter) and mask."""
        storage = STORAGES[self.meta["storage"]]
        hu = sitk.GetArrayViewFromImage(self.image)
        write_nifti1(self.image, image_path, data=storage.encode(hu), slope_inter=storage.slope_inter)
        if mask_path is not None:
            write_nifti1(self.mask, mask_path)


def _check(subtype: int, shape: str, headers: str, profile: str) -> None:
    if subtype not in (0, 1, 2):
        raise PancreasError(f"subtype {subtype!r} is not one of 0, 1, 2", code="invalid_subtype")
    if shape not in GRIDS:
        raise PancreasError(f"shape {shape!r} is unknown; use one of {sorted(GRIDS)}", code="invalid_option")
    if headers not in HEADER_MODES:
        raise PancreasError(f"headers {headers!r} is unknown; use one of {sorted(HEADER_MODES)}",
                            code="invalid_option")
    if profile not in PROFILES:
        raise PancreasError(f"profile {profile!r} is unknown; use one of {sorted(PROFILES)}",
                            code="invalid_option")


def make_case(seed: int, subtype: int, *, shape: str = "crop", headers: str = "varied",
              profile: str = "classic", shapes: ShapeSource | None = None) -> PhantomCase:
    """Generate one phantom. The anatomy, lesion, field of view and noise depend only on ``(seed, subtype,
    shape, profile, shapes)``; ``headers`` changes only how the same canonical array is stored. ``profile``
    names the sampling distributions (:data:`pancreas.phantoms.profiles.PROFILES`; ``classic`` by default).
    ``shapes`` (off by default) takes the gland and lesion shapes from a real mask of ``subtype`` drawn
    from it (:mod:`pancreas.phantoms.shapes`) instead of the tube and the ellipsoid."""
    _check(subtype, shape, headers, profile)
    p = PROFILES[profile]
    # extra streams for draws only some cases make; spawning them leaves the first five unchanged
    r_anat, r_look, r_grid, r_noise, r_head, r_size, r_shape = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), int(subtype)]).spawn(7))
    phase = Phase.draw(r_look, p.tissues)
    pancreas = draw_pancreas(r_anat)
    lesion = draw_lesion(r_anat, subtype, pancreas, phase.pancreas, p.lesions)
    pancreas = p.gland.shape(r_size, subtype, pancreas, lesion)
    anatomy = draw_anatomy(r_anat, pancreas)
    fov, shape_meta = p.fov[shape], {}
    if shapes is not None:
        anatomy, lesion, shape_meta = _real_shape(shapes.draw(r_shape, subtype), anatomy, pancreas, lesion)
        fov = fov.covering()
    grid = GRIDS[shape](r_grid, anatomy, fov)
    hu, labels = _form(grid, anatomy, lesion, phase, NoiseModel.draw(r_noise, p.noise), r_noise)
    spec = HEADER_MODES[headers](r_head)
    world_shift = r_grid.uniform([-40, -260, -700], [40, -120, -200])
    origin = np.asarray(grid.origin) + world_shift
    storage = STORAGES[spec.storage]
    pixel = np.float32 if np.dtype(storage.dtype).kind == "f" or storage.slope_inter else np.int16
    hu_stored = hu if pixel is np.float32 and storage.slope_inter is None else np.rint(hu)
    image = place(hu_stored, grid.spacing, origin, spec, dtype=pixel)
    mask = place(labels, grid.spacing, origin, spec, dtype=np.uint8)
    meta = {**_meta(grid, spec, lesion, labels, phase, shape, seed), "profile": profile, **shape_meta}
    return PhantomCase(image=image, mask=mask, subtype=subtype, meta=meta)


def _real_shape(real: RealShape, anatomy: Anatomy, tube: PancreasShape,
                lesion: Lesion) -> tuple[Anatomy, Lesion, dict]:
    """The real gland centred where the tube's centroid is, painted last in its place (the vessels stay
    where the tube put them), and the drawn lesion's look on the real lesion's voxels."""
    real = real.placed(gland_centroid(tube))
    return replace(anatomy, pancreas=real.gland), real.lesion_of(lesion), real.meta()


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
