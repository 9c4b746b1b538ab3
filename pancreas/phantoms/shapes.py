"""Pancreas and lesion shapes taken from real label masks (``pancreas synth --shapes DIR``).

A :class:`ShapeSource` lists the masks directly in one folder, ``quiz_{subtype}_{NNN}.nii[.gz]`` (labels 0
background, 1 pancreas, 2 lesion; float labels such as 1.0000153 are rounded and checked by
:func:`pancreas.evaluation.label_array`), and draws one of the case's
subtype per case. :func:`load_shape` reads it with :func:`pancreas.nifti.read_image` (SimpleITK) and turns the
gland (labels 1 + 2) and the lesion (label 2) into :class:`MaskField` s: signed distances in mm on the mask's
own grid, so its spacing, origin and direction (axis-permuted or oblique included) are honoured.

SimpleITK's physical frame (LPS) is the phantom's (x to the patient's left, y posterior, z superior), so
placing a shape is a translation (:meth:`RealShape.placed`): the gland's centroid goes where the drawn tube
gland's centroid is. A field is sampled on a phantom grid by linear interpolation; its zero level lies half-way
between the mask's inside and outside voxel centres, so resampling keeps the volumes to within a few percent
(more for regions only a few voxels thick). A mask's labels are checked when it is first loaded, not when the
folder is scanned. The masks are only ever read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pancreas import SUBTYPES
from pancreas.errors import DatasetError
from pancreas.evaluation import label_array
from pancreas.nifti import read_image
from pancreas.phantoms.geometry import Grid, Slices
from pancreas.phantoms.lesions import Lesion
from pancreas.quiz import QUIZ_MASK, case_id_of, is_image, is_nifti

logger = logging.getLogger(__name__)

#: distance kept around a region (the widest lesion edge blend fades out within ~6 mm)
MARGIN_MM = 8.0
#: distance reported outside the kept box
FAR_MM = 1000.0
#: scale of the gland field handed to :func:`pancreas.phantoms.anatomy.paint` (only its < 1 matters)
FIELD_MM = 10.0


@dataclass(frozen=True)
class MaskField:
    """A signed distance map (mm, negative inside) of one region of a mask, on a crop of the mask's grid.

    ``shift`` moves it into the phantom frame: phantom point + shift = mask point. ``lo``/``hi`` bound the
    region's voxels in the mask frame. Serves as a lesion's region (:meth:`distance`) and as a gland
    (:meth:`field`, :meth:`bbox`).
    """

    distances: sitk.Image
    lo: np.ndarray
    hi: np.ndarray
    shift: np.ndarray

    def distance(self, grid: Grid) -> tuple[Slices, np.ndarray] | None:
        """Signed distance (mm) on the part of ``grid`` the map covers; None where it misses the grid."""
        lo, hi = _bounds(self.distances, -0.5, np.asarray(self.distances.GetSize()) - 0.5)
        found = grid.region(lo - self.shift, hi - self.shift)
        if found is None:
            return None
        slices, _ = found
        sub = grid.sub(slices)
        resample = sitk.ResampleImageFilter()
        resample.SetSize([int(n) for n in sub.shape[::-1]])
        resample.SetOutputSpacing([float(s) for s in sub.spacing[::-1]])
        resample.SetOutputOrigin([float(o) for o in sub.origin])
        resample.SetTransform(sitk.TranslationTransform(3, [float(s) for s in self.shift]))
        resample.SetInterpolator(sitk.sitkLinear)
        resample.SetDefaultPixelValue(FAR_MM)
        resample.SetOutputPixelType(sitk.sitkFloat32)
        return slices, sitk.GetArrayFromImage(resample.Execute(self.distances))

    def field(self, grid: Grid) -> tuple[Slices, np.ndarray] | None:
        """Normalized field, < 1 inside: ``1 + distance / FIELD_MM``."""
        found = self.distance(grid)
        return None if found is None else (found[0], 1.0 + found[1] / np.float32(FIELD_MM))

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y, z) mm box of the region's voxels in the phantom frame."""
        return self.lo - self.shift, self.hi - self.shift


@dataclass(frozen=True)
class RealShape:
    """The gland and lesion of one mask, with their centroids (x, y, z mm) and volumes (mL)."""

    name: str  # file name of the mask
    gland: MaskField  # labels 1 + 2
    lesion: MaskField  # label 2
    centroid: np.ndarray  # of the gland, in the frame the fields are shifted to
    lesion_centroid: np.ndarray
    pancreas_ml: float  # labels 1 + 2
    lesion_ml: float

    def placed(self, centroid: np.ndarray) -> RealShape:
        """The shape moved so that its gland's centroid lies at ``centroid`` (phantom frame)."""
        move = np.asarray(self.centroid, float) - np.asarray(centroid, float)
        return replace(self, gland=replace(self.gland, shift=self.gland.shift + move),
                       lesion=replace(self.lesion, shift=self.lesion.shift + move),
                       centroid=self.centroid - move, lesion_centroid=self.lesion_centroid - move)

    def lesion_of(self, lesion: Lesion) -> Lesion:
        """``lesion`` (its drawn subtype look) on this shape's lesion voxels."""
        diameter = float(np.cbrt(6.0 * 1000.0 * self.lesion_ml / np.pi))
        return replace(lesion, location="mask", center=self.lesion_centroid, diameter_mm=diameter,
                       region=self.lesion)

    def meta(self) -> dict:
        return {"shape_file": self.name, "shape_pancreas_ml": round(self.pancreas_ml, 3),
                "shape_lesion_ml": round(self.lesion_ml, 3)}


@dataclass(frozen=True)
class ShapeSource:
    """The label masks directly in ``root``: ``(subtype, file name)`` pairs, sorted by name."""

    root: Path
    files: tuple[tuple[int, str], ...]

    @classmethod
    def scan(cls, root: str | Path) -> ShapeSource:
        """List the masks of ``root`` (other files, e.g. ``*_0000`` images, are ignored); logs counts."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"shapes folder {root} does not exist or is not a folder", code="not_found")
        files = []
        for path in sorted(root.iterdir()):
            match = QUIZ_MASK.match(case_id_of(path.name))
            if match and path.is_file() and is_nifti(path.name) and not is_image(path.name) \
                    and int(match.group(1)) in SUBTYPES:
                files.append((int(match.group(1)), path.name))
        if not files:
            raise DatasetError(f"shapes folder {root} holds no label mask named quiz_{{subtype}}_{{NNN}}.nii.gz "
                               f"with subtype in {list(SUBTYPES)}", code="no_masks")
        source = cls(root=root, files=tuple(files))
        logger.info("shapes: masks per subtype in %s: %s", root, source.counts())
        return source

    def counts(self) -> dict[int, int]:
        """Number of masks per subtype (every subtype listed, 0 where none)."""
        return {s: sum(1 for t, _ in self.files if t == s) for s in SUBTYPES}

    def require(self, subtypes: tuple[int, ...]) -> None:
        """Raise :class:`DatasetError` naming the first subtype without a mask."""
        counts = self.counts()
        for s in subtypes:
            if not counts.get(s):
                raise DatasetError(f"shapes folder {self.root} has no mask of subtype {s} (quiz_{s}_NNN.nii.gz); "
                                   f"masks per subtype: {counts}", code="missing_subtype")

    def draw(self, rng: np.random.Generator, subtype: int) -> RealShape:
        """Load one mask of ``subtype``, chosen by ``rng``."""
        self.require((subtype,))
        names = [name for s, name in self.files if s == subtype]
        return load_shape(self.root / names[int(rng.integers(len(names)))])

    def summary(self) -> dict:
        """What the manifest records: masks per subtype (no paths)."""
        return {"masks_per_subtype": {str(s): n for s, n in self.counts().items()}}


def load_shape(path: str | Path) -> RealShape:
    """Read a label mask and build its gland and lesion fields (mask frame, no shift)."""
    path = Path(path)
    image = read_image(path, name=path.name)
    labels = label_array(sitk.GetArrayViewFromImage(image), f"shape mask {path.name}")  # (z, y, x), rounded
    gland, lesion = labels > 0, labels == 2
    if not gland.any():
        raise DatasetError(f"shape mask {path.name}: no pancreas (no voxel labelled 1 or 2)", code="no_pancreas")
    if not lesion.any():
        raise DatasetError(f"shape mask {path.name}: no lesion (no voxel labelled 2); each case needs one",
                           code="no_lesion")
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return RealShape(name=path.name, gland=_field(image, gland), lesion=_field(image, lesion),
                     centroid=_centroid(image, gland), lesion_centroid=_centroid(image, lesion),
                     pancreas_ml=float(np.count_nonzero(gland)) * voxel_ml,
                     lesion_ml=float(np.count_nonzero(lesion)) * voxel_ml)


def _bounds(image: sitk.Image, lo_index: np.ndarray, hi_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Physical (x, y, z) box of the continuous-index box ``[lo_index, hi_index]`` (x, y, z order)."""
    lo_index, hi_index = np.broadcast_to(lo_index, (3,)), np.broadcast_to(hi_index, (3,))
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in product(*zip(lo_index, hi_index))]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def _centroid(image: sitk.Image, inside: np.ndarray) -> np.ndarray:
    """Physical (x, y, z) mean of the voxel centres of ``inside`` (a (z, y, x) array on ``image``'s grid)."""
    index_xyz = np.argwhere(inside).mean(0)[::-1]
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index_xyz]))


def _field(image: sitk.Image, inside: np.ndarray) -> MaskField:
    """Signed distance of ``inside`` on its bounding box (plus :data:`MARGIN_MM`) of ``image``'s grid."""
    pad = np.ceil(MARGIN_MM / np.asarray(image.GetSpacing())[::-1]).astype(int) + 1  # (z, y, x) voxels
    where = np.argwhere(inside)
    first, last = where.min(0), where.max(0)
    crop = inside[first[0]:last[0] + 1, first[1]:last[1] + 1, first[2]:last[2] + 1]
    crop = np.pad(crop, [(int(p), int(p)) for p in pad])
    start = (first - pad)[::-1].astype(float)  # (x, y, z) index of the crop's first voxel
    box = sitk.GetImageFromArray(crop.astype(np.uint8))
    box.SetSpacing(image.GetSpacing())
    box.SetDirection(image.GetDirection())
    box.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([float(s) for s in start]))
    lo, hi = _bounds(image, first[::-1] - 0.5, last[::-1] + 0.5)
    return MaskField(distances=_signed_distance(box), lo=lo, hi=hi, shift=np.zeros(3))


def _signed_distance(mask: sitk.Image) -> sitk.Image:
    """Signed distance (mm, < 0 inside) whose zero level lies half-way between inside and outside voxels.

    Each Maurer map is 0 on the border voxels of its own foreground; their mean is -s/2 on the inside
    border and +s/2 just outside it.
    """
    outside = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(mask) == 0).astype(np.uint8))
    outside.CopyInformation(mask)
    maurer = sitk.SignedMaurerDistanceMapImageFilter()
    maurer.SetInsideIsPositive(False)
    maurer.SetSquaredDistance(False)
    maurer.SetUseImageSpacing(True)
    inner, outer = maurer.Execute(mask), maurer.Execute(outside)
    return sitk.Cast((inner - outer) * 0.5, sitk.sitkFloat32)
