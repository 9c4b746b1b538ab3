"""Benchmark CTs of exact, named sizes: a quiz-median crop and full abdominal CTs, from the phantom generator.

A phantom (``pancreas.phantoms.make_case``, canonical headers) is resampled onto a grid of exactly the
:data:`CASES` shape and spacing, centred on the phantom (linear for the image, nearest for the mask; air
outside the phantom's field of view). Files: ``OUT/<name>_0000.nii.gz`` and mask ``OUT/<name>.nii.gz``;
existing files are kept (the folder works as a cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pancreas.errors import PancreasError
from pancreas.quiz import image_name, mask_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseSpec:
    """One benchmark volume: the phantom field of view it starts from, its shape and spacing (z, y, x)."""

    fov: str  # "crop" or "full" (pancreas.phantoms)
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


#: the benchmark sizes; ``tiny`` keeps the CPU smoke run short
CASES: dict[str, CaseSpec] = {
    "crop": CaseSpec("crop", (64, 119, 178), (2.0, 0.73, 0.73)),  # median real quiz crop
    "full111": CaseSpec("full", (111, 512, 512), (2.5, 0.78, 0.78)),
    "full300": CaseSpec("full", (300, 512, 512), (1.0, 0.78, 0.78)),
    "tiny": CaseSpec("crop", (24, 40, 56), (2.0, 2.0, 2.0)),
}


def write_case(out: Path, name: str, *, seed: int = 0) -> Path:
    """Write (or reuse) case ``name`` of :data:`CASES` into ``out``; return the image path."""
    import SimpleITK as sitk

    from pancreas.phantoms import make_case

    if name not in CASES:
        raise PancreasError(f"unknown benchmark case {name!r}; use one of {sorted(CASES)}", code="invalid_option")
    spec = CASES[name]
    image_path, mask_path = out / image_name(name), out / mask_name(name)
    if image_path.is_file() and mask_path.is_file():
        return image_path
    phantom = make_case(seed, seed % 3, shape=spec.fov, headers="canonical")
    ref = _grid(phantom.image, spec)
    image = sitk.Resample(phantom.image, ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    mask = sitk.Resample(phantom.mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    out.mkdir(parents=True, exist_ok=True)
    for img, path in ((mask, mask_path), (image, image_path)):  # image last: its presence marks a whole case
        tmp = path.with_name("tmp_" + path.name)
        sitk.WriteImage(img, str(tmp), True)
        tmp.replace(path)
    logger.info("wrote %s (%s at %s mm)", image_path, "×".join(map(str, spec.shape)), spec.spacing)
    return image_path


def _grid(image: object, spec: CaseSpec) -> object:
    """An empty image of ``spec``'s size and spacing, same direction, centred where ``image`` is."""
    import SimpleITK as sitk

    size, spacing = spec.shape[::-1], spec.spacing[::-1]  # SimpleITK orders axes (x, y, z)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    ref = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin([c - s * (n - 1) / 2 for c, s, n in zip(centre, spacing, size)])
    return ref


def write_cases(out: str | Path, names: list[str], *, seed: int = 0) -> list[Path]:
    """Write (or reuse) every case in ``names``; return the image paths."""
    return [write_case(Path(out), name, seed=seed + i) for i, name in enumerate(names)]
