"""Facts about the real quiz data (aggregates only): volumes, crop extents, spacings and HU.

Measures, on ``--quiz`` (see its README.md):

* ``masks/`` (245 ground-truth masks on their original grids): pancreas (labels 1+2), parenchyma (label 1)
  and lesion (label 2) volumes per subtype, crop extents in voxels and mm, in-plane and slice spacing;
* the 59 rebuilt ``train/subtype2`` pairs (HU clipped to [-56, 180]) and the original ``quiz_0_324``: per-case
  median and IQR of the pancreas (label 1) and lesion HU, and of a 5 mm shell around the gland;
* fat (-190..-30 HU) near the pancreas in ``quiz_0_324`` and in ``--ct`` (a real CT with a predicted pancreas
  mask), which the clipped rebuilt images cannot show.

Writes a markdown table (and the same numbers as JSON next to it) with the command at the top. Nothing
voxel-wise is written: every number is a median, percentile or range over cases or voxels.

    python -m benchmarks.real_facts --quiz ../shared/data/quiz-real --out benchmarks/results/real-facts.md
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pancreas.nifti import Volume, read_volume
from pancreas.phantoms import SynthConfig, synthesize
from pancreas.phantoms.profiles import PROFILES
from pancreas.quiz import case_id_of, image_name

logger = logging.getLogger(__name__)

#: percentiles written for every distribution (the calibration samples between the 5th and 95th)
LEVELS = (0, 5, 10, 25, 50, 75, 90, 95, 100)
#: adipose tissue window (HU) and the width of the peri-pancreatic shell / fat band (mm)
FAT_HU = (-190.0, -30.0)
SHELL_MM = 5.0
FAT_BAND_MM = 30.0
#: the rebuilt images are clipped here (README of quiz-real)
CLIP_HU = (-56.0, 180.0)
_NAME = re.compile(r"quiz_(\d)_(\d{3})\.nii\.gz")


@dataclass(frozen=True)
class MaskFacts:
    """One ground-truth mask: subtype, grid and volumes (mL)."""

    subtype: int
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    pancreas_ml: float  # labels 1 + 2
    parenchyma_ml: float  # label 1
    lesion_ml: float  # label 2

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        return tuple(float(n * s) for n, s in zip(self.shape_zyx, self.spacing_zyx))


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of a set of voxels (HU)."""

    median: float
    q25: float
    q75: float

    @classmethod
    def of(cls, values: np.ndarray) -> Spread | None:
        if values.size == 0:
            return None
        q25, median, q75 = np.percentile(values, (25, 50, 75))
        return cls(float(median), float(q25), float(q75))


@dataclass(frozen=True)
class HUFacts:
    """HU of one image with a mask: pancreas, lesion, peri-pancreatic shell and (unclipped only) fat."""

    case: str
    subtype: int | None
    pancreas: Spread
    lesion: Spread | None
    shell: Spread
    shell_low_fraction: float  # shell voxels at or below the -56 HU clip floor (comparable for all images)
    shell_fat_fraction: float | None  # shell voxels below -30 HU; None when clipped
    fat: Spread | None  # fat voxels within FAT_BAND_MM of the gland; None when clipped


def _labels(volume: Volume) -> np.ndarray:
    return np.rint(volume.array).astype(np.uint8)  # original masks store floats such as 1.0000153


def mask_facts(path: Path) -> MaskFacts:
    """Volumes and grid of one ``quiz_{subtype}_{NNN}.nii.gz`` mask."""
    match = _NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name}: not a quiz mask name quiz_{{subtype}}_{{NNN}}.nii.gz")
    volume = read_volume(path)
    labels = _labels(volume)
    ml = float(np.prod(volume.spacing)) / 1000.0
    n1, n2 = int(np.count_nonzero(labels == 1)), int(np.count_nonzero(labels == 2))
    return MaskFacts(subtype=int(match.group(1)), shape_zyx=volume.shape,
                     spacing_zyx=tuple(round(s, 4) for s in volume.spacing),
                     pancreas_ml=(n1 + n2) * ml, parenchyma_ml=n1 * ml, lesion_ml=n2 * ml)


def hu_facts(image_path: Path, mask_path: Path, *, clipped: bool, subtype: int | None) -> HUFacts:
    """HU statistics of one image/mask pair (distances in mm, from the image spacing)."""
    image, mask = read_volume(image_path), read_volume(mask_path)
    if image.shape != mask.shape:
        raise ValueError(f"{image_path.name}: image {image.shape} and mask {mask.shape} differ")
    hu, labels = image.array, _labels(mask)
    gland = labels >= 1
    distance = ndimage.distance_transform_edt(~gland, sampling=image.spacing)
    shell = (distance > 0) & (distance <= SHELL_MM)
    fat, fat_fraction = None, None
    if not clipped:
        band = (distance > 0) & (distance <= FAT_BAND_MM) & (hu >= FAT_HU[0]) & (hu <= FAT_HU[1])
        fat, fat_fraction = Spread.of(hu[band]), float(np.mean(hu[shell] < FAT_HU[1]))
    return HUFacts(case=mask_path.name.removesuffix(".nii.gz"), subtype=subtype,
                   pancreas=Spread.of(hu[labels == 1]), lesion=Spread.of(hu[labels == 2]),
                   shell=Spread.of(hu[shell]), shell_low_fraction=float(np.mean(hu[shell] < CLIP_HU[0] + 0.5)),
                   shell_fat_fraction=fat_fraction, fat=fat)


def percentiles(values: list[float]) -> dict[str, float]:
    """``{"p0": min, "p5": ..., "p100": max}`` of ``values``, rounded to 4 significant digits."""
    q = np.percentile(np.asarray(values, float), LEVELS)
    return {f"p{level}": float(f"{v:.4g}") for level, v in zip(LEVELS, q)}


def summarize_masks(facts: list[MaskFacts]) -> dict:
    """Per-subtype volume percentiles and overall grid percentiles."""
    out: dict = {"n": len(facts), "by_subtype": {}}
    for subtype in sorted({f.subtype for f in facts}):
        sub = [f for f in facts if f.subtype == subtype]
        out["by_subtype"][subtype] = {
            "n": len(sub), "with_lesion": sum(f.lesion_ml > 0 for f in sub),
            "pancreas_ml": percentiles([f.pancreas_ml for f in sub]),
            "parenchyma_ml": percentiles([f.parenchyma_ml for f in sub]),
            "lesion_ml": percentiles([f.lesion_ml for f in sub if f.lesion_ml > 0]),
        }
    out["slice_mm"] = percentiles([f.spacing_zyx[0] for f in facts])
    out["inplane_mm"] = percentiles([f.spacing_zyx[1] for f in facts])
    out["anisotropic_inplane"] = sum(abs(f.spacing_zyx[1] - f.spacing_zyx[2]) > 1e-3 for f in facts)
    for axis, name in enumerate("zyx"):
        out[f"extent_{name}_mm"] = percentiles([f.extent_mm[axis] for f in facts])
        out[f"extent_{name}_voxels"] = percentiles([f.shape_zyx[axis] for f in facts])
    return out


def summarize_hu(facts: list[HUFacts]) -> dict:
    """Percentiles over cases of the per-case medians and IQR widths."""
    with_lesion = [f for f in facts if f.lesion is not None]
    return {
        "n": len(facts),
        "pancreas_median": percentiles([f.pancreas.median for f in facts]),
        "pancreas_iqr": percentiles([f.pancreas.q75 - f.pancreas.q25 for f in facts]),
        "lesion_median": percentiles([f.lesion.median for f in with_lesion]),
        "lesion_iqr": percentiles([f.lesion.q75 - f.lesion.q25 for f in with_lesion]),
        "lesion_minus_pancreas": percentiles([f.lesion.median - f.pancreas.median for f in with_lesion]),
        "shell_median": percentiles([f.shell.median for f in facts]),
        "shell_low_fraction": percentiles([f.shell_low_fraction for f in facts]),
    }


def measure(quiz: Path, ct: Path | None, ct_mask: Path | None) -> dict:
    """All facts as one JSON-able dict (aggregates and single-case summaries only)."""
    masks = sorted((quiz / "masks").glob("quiz_*.nii.gz"))
    if not masks:
        raise FileNotFoundError(f"no quiz_*.nii.gz masks under {quiz / 'masks'}")
    logger.info("reading %d masks", len(masks))
    facts = {"masks": summarize_masks([mask_facts(p) for p in masks])}
    rebuilt = []
    for mask in sorted((quiz / "train" / "subtype2").glob("quiz_2_???.nii.gz")):
        image = mask.with_name(image_name(case_id_of(mask.name)))
        rebuilt.append(hu_facts(image, mask, clipped=True, subtype=2))
    logger.info("measured HU of %d rebuilt subtype-2 pairs", len(rebuilt))
    facts["rebuilt_subtype2"] = summarize_hu(rebuilt)
    singles = []
    original = quiz / "train" / "subtype0" / "quiz_0_324.nii.gz"
    if original.is_file():
        singles.append(hu_facts(original.with_name(image_name("quiz_0_324")), original, clipped=False, subtype=0))
    if ct is not None and ct_mask is not None and ct.is_file() and ct_mask.is_file():
        singles.append(hu_facts(ct, ct_mask, clipped=False, subtype=None))
    facts["unclipped"] = [asdict(f) for f in singles]
    return facts


def measure_phantoms(profile: str, per_subtype: int, seed: int, work: Path) -> dict:
    """The same facts on ``per_subtype`` train phantoms per subtype of ``profile`` (canonical headers)."""
    root = synthesize(work / profile, SynthConfig(cases_per_subtype=per_subtype, splits=("train",), seed=seed,
                                                  headers="canonical", profile=profile))
    masks = sorted(root.glob("train/subtype?/quiz_?_???.nii.gz"))
    hu = [hu_facts(m.with_name(image_name(case_id_of(m.name))), m, clipped=False,
                   subtype=int(m.parent.name[-1])) for m in masks]
    return {"masks": summarize_masks([mask_facts(m) for m in masks]), "hu": summarize_hu(hu),
            "hu_subtype2": summarize_hu([f for f in hu if f.subtype == 2]),
            "fat_median": percentiles([f.fat.median for f in hu])}


def _rows_compared(facts: dict) -> list[tuple[str, dict | str, list[dict]]]:
    """(quantity, real percentiles, phantom percentiles per profile) for the comparison table."""
    m, h, ph = facts["masks"], facts["rebuilt_subtype2"], facts["phantoms"]
    rows: list[tuple[str, dict | str, list[dict]]] = []
    for subtype in m["by_subtype"]:
        for key, name in (("parenchyma_ml", "parenchyma mL"), ("lesion_ml", "lesion mL"),
                          ("pancreas_ml", "pancreas 1+2 mL")):
            rows.append((f"subtype {subtype} {name}", m["by_subtype"][subtype][key],
                         [p["masks"]["by_subtype"][subtype][key] for p in ph.values()]))
    for key, name in (("slice_mm", "slice spacing mm"), ("inplane_mm", "in-plane spacing mm"),
                      ("extent_z_mm", "extent z mm"), ("extent_y_mm", "extent y mm"), ("extent_x_mm", "extent x mm"),
                      ("extent_z_voxels", "slices")):
        rows.append((name, m[key], [p["masks"][key] for p in ph.values()]))
    for key, name in (("pancreas_median", "pancreas HU (median per case)"), ("pancreas_iqr", "pancreas IQR width HU"),
                      ("shell_median", "5 mm shell HU"), ("shell_low_fraction", "shell fraction <= -56 HU")):
        rows.append((name, h[key], [p["hu"][key] for p in ph.values()]))
    for key, name in (("lesion_median", "subtype 2 lesion HU"), ("lesion_minus_pancreas", "subtype 2 lesion - pancreas HU")):
        rows.append((name, h[key], [p["hu_subtype2"][key] for p in ph.values()]))
    fat = " and ".join(f"{f['fat']['median']:.0f}" for f in facts["unclipped"] if f["fat"])
    rows.append(("fat HU within 30 mm (median per case)", f"{fat} (unclipped cases)",
                 [p["fat_median"] for p in ph.values()]))
    return rows


def _mid(p: dict | str) -> str:
    return p if isinstance(p, str) else f"{p['p50']:.4g} [{p['p5']:.4g}–{p['p95']:.4g}]"


def _row(name: str, p: dict[str, float], unit: str) -> str:
    cells = " | ".join(f"{p[f'p{level}']:.4g}" for level in LEVELS)
    return f"| {name} | {unit} | {cells} |"


def _spread(s: dict | None) -> str:
    return "–" if s is None else f"{s['median']:.0f} [{s['q25']:.0f}, {s['q75']:.0f}]"


def _table_head() -> list[str]:
    names = ["min" if v == 0 else "max" if v == 100 else f"p{v}" for v in LEVELS]
    return ["| quantity | unit | " + " | ".join(names) + " |", "| --- | --- |" + " ---: |" * len(LEVELS)]


def _mask_section(m: dict) -> list[str]:
    lines = [f"## Ground-truth masks ({m['n']} train masks, original grids)\n", *_table_head()]
    for subtype, s in m["by_subtype"].items():
        lines.append(_row(f"subtype {subtype}: pancreas 1+2 (n={s['n']})", s["pancreas_ml"], "mL"))
        lines.append(_row(f"subtype {subtype}: parenchyma 1", s["parenchyma_ml"], "mL"))
        lines.append(_row(f"subtype {subtype}: lesion 2 (n={s['with_lesion']})", s["lesion_ml"], "mL"))
    lines += [_row("slice spacing", m["slice_mm"], "mm"), _row("in-plane spacing", m["inplane_mm"], "mm")]
    for name in "zyx":
        lines.append(_row(f"crop extent {name}", m[f"extent_{name}_mm"], "mm"))
        lines.append(_row(f"crop size {name}", m[f"extent_{name}_voxels"], "voxels"))
    return [*lines, f"\nIn-plane spacing differs between x and y in {m['anisotropic_inplane']} masks.\n"]


def _hu_section(h: dict) -> list[str]:
    lines = [f"## HU per case, {h['n']} rebuilt subtype-2 images (clipped to [-56, 180])\n", *_table_head()]
    for key, name in (("pancreas_median", "pancreas (label 1) median"), ("pancreas_iqr", "pancreas IQR width"),
                      ("lesion_median", "lesion median"), ("lesion_iqr", "lesion IQR width"),
                      ("lesion_minus_pancreas", "lesion - pancreas median"),
                      ("shell_median", f"{SHELL_MM:.0f} mm shell median")):
        lines.append(_row(name, h[key], "HU"))
    return [*lines, _row("shell fraction at the -56 floor", h["shell_low_fraction"], "1")]


def _unclipped_section(cases: list[dict]) -> list[str]:
    lines = ["\n## Unclipped images, one case each (median [q25, q75] HU)\n",
             (f"| case | pancreas | lesion | {SHELL_MM:.0f} mm shell | shell fraction < -30 HU | "
              f"fat ({FAT_HU[0]:.0f}..{FAT_HU[1]:.0f} HU) within {FAT_BAND_MM:.0f} mm |"),
             "| --- | --- | --- | --- | ---: | --- |"]
    for f in cases:
        lines.append(f"| {f['case']} | {_spread(f['pancreas'])} | {_spread(f['lesion'])} | {_spread(f['shell'])} "
                     f"| {f['shell_fat_fraction']:.2f} | {_spread(f['fat'])} |")
    return lines


def _phantom_section(facts: dict) -> list[str]:
    names = list(facts["phantoms"])
    n = facts["phantoms"][names[0]]["masks"]["n"]
    lines = [f"\n## Phantoms against the real data ({n} train phantoms per profile; median [p5–p95] over cases)\n",
             "| quantity | real | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
    for name, real, phantoms in _rows_compared(facts):
        lines.append(f"| {name} | {_mid(real)} | " + " | ".join(_mid(p) for p in phantoms) + " |")
    note = ("\nReal HU rows are the 59 rebuilt subtype-2 cases (phantom rows: all subtypes); real fat: the two "
            "unclipped images above.")
    return [*lines, note]


def render(facts: dict, command: str) -> str:
    """The markdown report."""
    lines = [f"# Facts measured on the real quiz data (aggregates only)\n\n`{command}`\n",
             *_mask_section(facts["masks"]), *_hu_section(facts["rebuilt_subtype2"]),
             *_unclipped_section(facts["unclipped"])]
    if facts.get("phantoms"):
        lines += _phantom_section(facts)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quiz", type=Path, required=True, help="quiz-real folder (masks/, train/)")
    p.add_argument("--ct", type=Path, default=Path("../shared/data/real/totalseg_example_ct.nii.gz"),
                   help="an unclipped real CT for fat HU (skipped when absent)")
    p.add_argument("--ct-mask", type=Path,
                   default=Path("../shared/data/real/totalseg_example_ct_pancreas_pred.nii.gz"),
                   help="its pancreas mask (label 1)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/real-facts.md"))
    p.add_argument("--phantoms", type=int, default=8,
                   help="also measure this many train phantoms per subtype of each profile (0: none; 8)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (0)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python -m benchmarks.real_facts " + " ".join(sys.argv[1:] if argv is None else argv)
    facts = measure(args.quiz, args.ct, args.ct_mask)
    if args.phantoms > 0:
        with tempfile.TemporaryDirectory() as work:
            facts["phantoms"] = {name: measure_phantoms(name, args.phantoms, args.seed, Path(work))
                                 for name in PROFILES}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(facts, command))
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, **facts}, indent=1))
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
