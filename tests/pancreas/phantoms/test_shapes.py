"""``pancreas synth --shapes DIR``: gland and lesion shapes from real label masks (written here as NIfTI files)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pancreas.cli import main
from pancreas.errors import DatasetError, PancreasError
from pancreas.phantoms import PhantomCase, SynthConfig, make_case, synthesize
from pancreas.phantoms.anatomy import Anatomy, draw_anatomy, draw_pancreas
from pancreas.phantoms.distributions import Uniform
from pancreas.phantoms.fov import CropModel, FullModel
from pancreas.phantoms.geometry import Grid, axis_angle
from pancreas.phantoms.shapes import ShapeSource, load_shape

GLAND_SEMI_MM = (45.0, 14.0, 18.0)  # ~47.5 mL
LESION_MM = ((-20.0, 0.0, 0.0), 9.0)  # centre offset along the gland's long axis, radius: ~3 mL
#: a rotation that makes the gland's long axis oblique in the patient frame
TILT = axis_angle(np.array([0.3, 1.0, 0.6]), np.deg2rad(35.0))
OBLIQUE = axis_angle(np.array([1.0, 1.0, 0.3]), np.deg2rad(25.0)) @ np.diag([-1.0, -1.0, 1.0])  # RAS-like + tilt
PERMUTED = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
#: subtype -> (size x, y, z; spacing x, y, z mm; direction): identity, oblique anisotropic, permuted axes
GRIDS = {0: ((100, 60, 55), (1.0, 1.0, 1.2), np.eye(3)),
         1: ((110, 80, 32), (0.9, 0.9, 2.5), OBLIQUE),
         2: ((55, 100, 67), (1.2, 1.0, 0.9), PERMUTED)}


def write_mask(path: Path, size: tuple[int, int, int], spacing: tuple[float, float, float],
               direction: np.ndarray, labels: str = "quiz", dtype: type = np.float32) -> Path:
    """An ellipsoid gland (long axis along ``TILT[:, 0]``) with a spherical lesion, labelled 0.9999847 and
    2.0000153 (float labels, as the real quiz masks store them: they must be rounded, not truncated);
    ``labels="three"`` adds a label-3 voxel, ``"empty"`` writes zeros, ``"no_lesion"`` labels the lesion 1."""
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    image.SetOrigin((-40.0, 120.0, -300.0))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    points = np.asarray(image.GetOrigin()) + (index * np.asarray(spacing)) @ np.asarray(direction).T
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    local = (points - centre) @ TILT  # coordinates in the gland's own frame
    gland = ((local / GLAND_SEMI_MM) ** 2).sum(1) < 1.0
    offset, radius = LESION_MM
    lesion = gland & ((((local - offset) / radius) ** 2).sum(1) < 1.0)
    values = np.where(lesion, 2.0000153, np.where(gland, 0.9999847, 0.0))
    if labels == "three":
        values[np.flatnonzero(gland)[0]] = 3.0
    if labels == "empty":
        values[:] = 0.0
    if labels == "no_lesion":
        values[lesion] = 1.0
    out = sitk.GetImageFromArray(values.reshape(size).transpose(2, 1, 0).astype(dtype))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path), useCompression=True)
    return path


def mask_dir(root: Path, bad: str | None = None, subtypes: tuple[int, ...] = (0, 1, 2)) -> Path:
    """quiz_{s}_00{s}.nii.gz per subtype; ``bad`` spoils the subtype-0 mask (the first one synthesize uses)."""
    root.mkdir(parents=True, exist_ok=True)
    for s in subtypes:
        size, spacing, direction = GRIDS[s]
        write_mask(root / f"quiz_{s}_00{s + 1}.nii.gz", size, spacing, direction,
                   labels=bad if (bad and s == 0) else "quiz", dtype=np.float64 if s == 2 else np.float32)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapeSource:
    return ShapeSource.scan(mask_dir(tmp_path_factory.mktemp("masks")))


@pytest.fixture(scope="module")
def cases(shapes: ShapeSource) -> dict[int, PhantomCase]:
    return {s: make_case(5, s, headers="canonical", shapes=shapes) for s in (0, 1, 2)}


def _arrays(case: PhantomCase) -> tuple[np.ndarray, np.ndarray]:
    return sitk.GetArrayFromImage(case.image).astype(np.float32), sitk.GetArrayFromImage(case.mask)


def _points(image: sitk.Image, inside: np.ndarray) -> np.ndarray:
    """Physical (x, y, z) mm of the voxels of a (z, y, x) boolean array on ``image``'s grid."""
    index = np.argwhere(inside)[:, ::-1].astype(float)
    return np.asarray(image.GetOrigin()) + (index * image.GetSpacing()) @ np.reshape(image.GetDirection(), (3, 3)).T


def test_scan_counts_masks_and_logs(shapes: ShapeSource, caplog: pytest.LogCaptureFixture) -> None:
    (shapes.root / "quiz_1_001_0000.nii.gz").write_bytes(b"")  # an image name: not a mask
    (shapes.root / "notes.txt").write_text("x")
    with caplog.at_level("INFO", logger="pancreas.phantoms.shapes"):
        again = ShapeSource.scan(shapes.root)
    assert again.counts() == {0: 1, 1: 1, 2: 1} == shapes.counts()
    assert "{0: 1, 1: 1, 2: 1}" in caplog.text


def test_labels_and_whole_gland_in_the_crop(cases: dict[int, PhantomCase]) -> None:
    for case in cases.values():
        _, mask = _arrays(case)
        assert set(np.unique(mask).tolist()) == {0, 1, 2}
        lesion = mask == 2
        assert ndimage.binary_fill_holes(mask > 0)[lesion].all(), "label 2 lies inside the gland"
        shell = ndimage.binary_dilation(lesion) & ~lesion
        assert (mask[shell] == 1).mean() > 0.9, "the lesion (inside the source gland) is surrounded by label 1"
        faces = [mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]]
        assert not any(f.any() for f in faces), "the crop holds the whole gland"


def test_volumes_match_the_source_mask(cases: dict[int, PhantomCase], shapes: ShapeSource) -> None:
    """Resampling moves the boundary by a fraction of a voxel: for a ~47 mL gland at ~1 mm voxels that is
    under 2 % (5 % allowed); the ~3 mL lesion has ~3x the surface per volume (10 % allowed)."""
    for s, case in cases.items():
        _, mask = _arrays(case)
        source = load_shape(shapes.root / case.meta["shape_file"])
        ml = float(np.prod(case.mask.GetSpacing())) / 1000.0
        assert np.count_nonzero(mask) * ml == pytest.approx(source.pancreas_ml, rel=0.05), s
        assert np.count_nonzero(mask == 2) * ml == pytest.approx(source.lesion_ml, rel=0.10), s
        assert source.pancreas_ml == pytest.approx(47.5, rel=0.02)  # the mask itself, 0.9999847 rounded to 1
        assert case.meta["shape_pancreas_ml"] == pytest.approx(source.pancreas_ml, abs=1e-3)


def test_orientation_follows_the_mask_geometry(cases: dict[int, PhantomCase], shapes: ShapeSource) -> None:
    """The long axis and the lesion's offset from the gland centroid are the mask's, in patient mm: a wrong
    spacing, axis order or direction (the subtype-1 mask is oblique, RAS-like, 0.9 x 0.9 x 2.5 mm; subtype 2
    permuted) would turn or mirror them."""
    for s, case in cases.items():
        _, mask = _arrays(case)
        gland, lesion = _points(case.mask, mask > 0), _points(case.mask, mask == 2)
        axis = np.linalg.eigh(np.cov(gland.T))[1][:, -1]
        assert abs(axis @ TILT[:, 0]) > 0.99, (s, axis)
        expected = TILT @ np.asarray(LESION_MM[0])
        assert np.linalg.norm(lesion.mean(0) - gland.mean(0) - expected) < 2.0, s
        source = load_shape(shapes.root / case.meta["shape_file"])
        assert np.linalg.norm(source.lesion_centroid - source.centroid - expected) < 1.0, s


def test_placed_shape_is_centred_on_the_target(shapes: ShapeSource) -> None:
    target = np.array([-12.0, 4.0, -9.0])
    real = load_shape(shapes.root / "quiz_1_002.nii.gz").placed(target)
    assert np.allclose(real.centroid, target)
    lo, hi = real.gland.bbox()
    grid = Grid(shape=(64, 64, 110), spacing=(1.5, 1.0, 1.0), origin=tuple(lo - 5.0))
    assert np.all(hi < np.asarray(grid.origin) + [110.0, 64.0, 96.0]), "the grid holds the whole gland"
    s, f = real.gland.field(grid)
    inside = np.zeros(grid.shape, bool)
    inside[s] = f < 1.0
    zyx = np.argwhere(inside).mean(0)
    centroid = np.asarray(grid.origin) + zyx[::-1] * np.asarray(grid.spacing)[::-1]
    assert np.linalg.norm(centroid - target) < 0.5
    assert np.count_nonzero(inside) * 1.5e-3 == pytest.approx(real.pancreas_ml, rel=0.03)


def test_lesion_hu_follows_the_subtype_look(cases: dict[int, PhantomCase]) -> None:
    image, mask = _arrays(cases[1])
    pancreas, lesion = np.median(image[mask == 1]), np.median(image[mask == 2])
    assert -10 < lesion < 50 and lesion < pancreas - 30, "a subtype-1 cyst is near water"
    image, mask = _arrays(cases[0])
    assert np.median(image[mask == 2]) < np.median(image[mask == 1]) - 5, "a subtype-0 lesion is hypodense"


def test_same_seed_same_case_and_the_pick_is_seeded(shapes: ShapeSource, cases: dict[int, PhantomCase],
                                                     tmp_path: Path) -> None:
    again = make_case(5, 1, headers="canonical", shapes=shapes)
    for a, b in zip(_arrays(again), _arrays(cases[1])):
        assert np.array_equal(a, b)
    assert again.meta == cases[1].meta and again.meta["shape_file"] == "quiz_1_002.nii.gz"
    root = mask_dir(tmp_path / "two", subtypes=(1,))
    write_mask(root / "quiz_1_007.nii.gz", *GRIDS[0])
    two = ShapeSource.scan(root)
    picks = [two.draw(np.random.default_rng(seed), 1).name for seed in range(8)]
    assert picks == [two.draw(np.random.default_rng(seed), 1).name for seed in range(8)]
    assert set(picks) == {"quiz_1_002.nii.gz", "quiz_1_007.nii.gz"}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.nii.gz")}


def test_synthesize_records_the_shape_files(shapes: ShapeSource, tmp_path: Path) -> None:
    config = SynthConfig(cases_per_subtype=1, splits=("test",), seed=3, shapes=shapes)
    for run in ("a", "b"):
        synthesize(tmp_path / run, config)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b") and len(_digests(tmp_path / "a")) == 6
    manifest = json.loads((tmp_path / "a" / "phantoms.json").read_text())
    assert manifest["config"]["shapes"] == {"masks_per_subtype": {"0": 1, "1": 1, "2": 1}}
    for case in manifest["cases"]:
        assert case["shape_file"] == f"quiz_{case['subtype']}_00{case['subtype'] + 1}.nii.gz"
        assert case["lesion_location"] == "mask"


def test_default_is_off(tmp_path: Path) -> None:
    """Without shapes nothing changes (the classic digests are checked in test_profiles.py)."""
    assert SynthConfig().shapes is None
    synthesize(tmp_path, SynthConfig(cases_per_subtype=1, splits=("test",), seed=1, shape="crop"))
    manifest = json.loads((tmp_path / "phantoms.json").read_text())
    assert "shapes" not in manifest["config"] and all("shape_file" not in c for c in manifest["cases"])


def test_bad_folders_fail_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(DatasetError, match=f"shapes folder {missing} does not exist"):
        ShapeSource.scan(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "quiz_0_001_0000.nii.gz").write_bytes(b"")
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="holds no label mask named quiz_"):
        ShapeSource.scan(empty)
    partial = ShapeSource.scan(mask_dir(tmp_path / "partial", subtypes=(0, 1)))
    with pytest.raises(DatasetError, match=f"{partial.root} has no mask of subtype 2"):
        SynthConfig(shapes=partial)
    with pytest.raises(PancreasError, match="no mask of subtype 2"):
        make_case(0, 2, shapes=partial)
    with pytest.raises(PancreasError, match="must be a ShapeSource"):
        SynthConfig(shapes=tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bad", "message"), [("three", "label values [3] are outside"),
                                              ("empty", "no pancreas"), ("no_lesion", "no lesion")])
def test_bad_masks_fail_clearly(tmp_path: Path, bad: str, message: str) -> None:
    root = mask_dir(tmp_path / "masks", bad=bad)
    with pytest.raises(DatasetError, match=re.escape(f"quiz_0_001.nii.gz: {message}")):
        make_case(0, 0, shapes=ShapeSource.scan(root))


def test_cli_shapes_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--cases-per-subtype", "1", "--splits", "test"]
    assert main(["synth", str(tmp_path / "out"), *args, "--shapes", str(tmp_path / "nowhere")]) == 1
    assert f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "none").mkdir()
    assert main(["synth", str(tmp_path / "out"), *args, "--shapes", str(tmp_path / "none")]) == 1
    assert "holds no label mask" in capsys.readouterr().err
    for bad, message in (("three", "label values [3]"), ("empty", "no pancreas")):
        root = mask_dir(tmp_path / bad, bad=bad)
        assert main(["synth", str(tmp_path / "out"), *args, "--shapes", str(root)]) == 1
        assert message in capsys.readouterr().err
    root = mask_dir(tmp_path / "good")
    assert main(["synth", str(tmp_path / "good_out"), *args, "--shapes", str(root)]) == 0
    cases = json.loads((tmp_path / "good_out" / "phantoms.json").read_text())["cases"]
    assert sorted(c["shape_file"] for c in cases) == sorted(p.name for p in root.glob("quiz_*.nii.gz"))


def test_real_quiz_masks(quiz_real: Path) -> None:
    """One case per subtype from the real masks (read in place; nothing is written)."""
    folder = quiz_real / "masks"
    source = ShapeSource.scan(folder)
    assert sum(source.counts().values()) == len(list(folder.glob("quiz_*.nii.gz")))
    for subtype in (0, 1, 2):
        case = make_case(subtype, subtype, headers="canonical", shapes=source)
        name = case.meta["shape_file"]
        assert name.startswith(f"quiz_{subtype}_") and (folder / name).is_file()
        mask = sitk.GetArrayFromImage(case.mask)
        ml = float(np.prod(case.mask.GetSpacing())) / 1000.0
        assert np.count_nonzero(mask) * ml == pytest.approx(case.meta["shape_pancreas_ml"], rel=0.05)
        assert np.count_nonzero(mask == 2) > 0


@pytest.fixture(scope="module")
def tall_anatomy(tmp_path_factory: pytest.TempPathFactory) -> Anatomy:
    """A drawn abdomen whose gland is a real mask's: an upright ellipsoid 160 mm tall (z 0.5 mm), with a lesion."""
    path = tmp_path_factory.mktemp("tall") / "quiz_2_001.nii.gz"
    zyx = np.stack(np.meshgrid(*[np.arange(n) for n in (360, 50, 50)], indexing="ij"), -1) - (179.5, 24.5, 24.5)
    mm = zyx * (0.5, 1.0, 1.0)
    gland = ((mm / (80.0, 18.0, 18.0)) ** 2).sum(-1) < 1.0
    labels = gland.astype(np.uint8) + (gland & (((mm / 8.0) ** 2).sum(-1) < 1.0))
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.0, 1.0, 0.5))
    sitk.WriteImage(image, str(path))
    rng = np.random.default_rng(0)
    drawn = draw_anatomy(rng, draw_pancreas(rng))
    return replace(drawn, pancreas=load_shape(path).placed(np.zeros(3)).gland)


@pytest.mark.parametrize("model", [CropModel(slice_mm=Uniform(0.45, 0.46)), FullModel(slice_mm=Uniform(0.45, 0.46))])
def test_covering_grids_hold_a_tall_gland_on_thin_slices(model: CropModel | FullModel, tall_anatomy: Anatomy) -> None:
    """A 160 mm tall gland on 0.45 mm slices: past the slice cap (crop 112, full 300 slices), so only the
    covering model holds it; the same draws otherwise (grids alone, nothing rendered)."""
    lo, hi = tall_anatomy.pancreas.bbox()
    assert hi[2] - lo[2] == pytest.approx(160.0, abs=1.0)
    for seed in range(5):
        plain = model.grid(np.random.default_rng(seed), tall_anatomy)
        grid = model.covering().grid(np.random.default_rng(seed), tall_anatomy)
        z = grid.axis(0)
        assert z[0] <= lo[2] - 4.0 and z[-1] >= hi[2] + 4.0, (seed, z[0], z[-1])  # 4 mm clear each side
        assert plain.axis(0)[-1] - plain.axis(0)[0] < 160.0  # the cap alone cuts it
        assert grid.spacing == plain.spacing and grid.shape[1:] == plain.shape[1:]
