"""Writing phantoms: one NIfTI writer (nibabel, so that scl_slope/scl_inter can be stored) and the quiz
layout of ``pancreas synth``."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from pancreas.errors import PancreasError
from pancreas.phantoms.fov import GRIDS
from pancreas.phantoms.headers import HEADER_MODES, Storage
from pancreas.phantoms.profiles import PROFILES
from pancreas.sources import PHANTOM_MANIFEST

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: gzip level for .nii.gz (nibabel's default is 1; noisy CT barely compresses better at higher levels)
COMPRESSLEVEL = 1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def write_nifti(image: sitk.Image, path: str | Path, storage: Storage | None) -> Path:
    """Write a SimpleITK image as NIfTI-1 with sform = qform (code 1, scanner), optionally rescaled.

    SimpleITK's writer always stores scl_slope=1/scl_inter=0, hence nibabel; the affine is the image's
    LPS geometry converted to RAS, and the array goes from SimpleITK's (z, y, x) to nibabel's (x, y, z).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), float)
    array = sitk.GetArrayViewFromImage(image)
    data = storage.encode(array) if storage is not None else np.asarray(array)
    nii = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    nii.header.set_xyzt_units("mm", "sec")
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    if storage is not None and storage.slope_inter is not None:
        nii.header.set_slope_inter(*storage.slope_inter)
    if path.name.endswith(".gz"):  # mtime=0: the same case gives the same bytes
        with gzip.GzipFile(path, "wb", compresslevel=COMPRESSLEVEL, mtime=0) as fh:
            fh.write(nii.to_bytes())
    else:
        nib.save(nii, str(path))
    return path


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``pancreas synth`` (see :func:`synthesize`)."""

    cases_per_subtype: int = 4
    splits: tuple[str, ...] = SPLITS
    shape: str = "crop"
    seed: int = 0
    headers: str = "varied"
    preview: bool = False
    workers: int = 1
    profile: str = "classic"

    def __post_init__(self) -> None:
        if not isinstance(self.cases_per_subtype, int) or self.cases_per_subtype < 1:
            raise PancreasError(f"cases_per_subtype={self.cases_per_subtype!r} must be an integer >= 1",
                                code="invalid_option")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits or len(set(self.splits)) != len(self.splits):
            raise PancreasError(f"splits {list(self.splits)} must be distinct names from {list(SPLITS)}",
                                code="invalid_option")
        if self.shape not in GRIDS:
            raise PancreasError(f"shape {self.shape!r} is unknown; use one of {sorted(GRIDS)}",
                                code="invalid_option")
        if self.headers not in HEADER_MODES:
            raise PancreasError(f"headers {self.headers!r} is unknown; use one of {sorted(HEADER_MODES)}",
                                code="invalid_option")
        if self.profile not in PROFILES:
            raise PancreasError(f"profile {self.profile!r} is unknown; use one of {sorted(PROFILES)}",
                                code="invalid_option")
        if self.workers < 1:
            raise PancreasError(f"workers={self.workers} must be >= 1", code="invalid_option")


@dataclass(frozen=True)
class Job:
    split: str
    subtype: int
    index: int
    number: int  # NNN, unique across the dataset

    def seed(self, base: int) -> int:
        entropy = [int(base), SPLITS.index(self.split), self.subtype, self.index]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def paths(self, out: Path) -> tuple[Path, Path]:
        nnn = f"{self.number:03d}"
        if self.split == "test":
            return out / "test" / f"quiz_{nnn}_0000.nii.gz", out / "test_labels" / f"quiz_{nnn}.nii.gz"
        folder = out / self.split / f"subtype{self.subtype}"
        return folder / f"quiz_{self.subtype}_{nnn}_0000.nii.gz", folder / f"quiz_{self.subtype}_{nnn}.nii.gz"


def plan_jobs(config: SynthConfig) -> list[Job]:
    """Cases in a fixed order (splits as in SPLITS, then subtype, then index), numbered from 1."""
    jobs = []
    for split in (s for s in SPLITS if s in config.splits):
        for subtype in (0, 1, 2):
            for index in range(config.cases_per_subtype):
                jobs.append(Job(split, subtype, index, len(jobs) + 1))
    return jobs


def _run_job(job: Job, out: Path, config: SynthConfig) -> dict:
    from pancreas.phantoms.case import make_case

    case = make_case(job.seed(config.seed), job.subtype, shape=config.shape, headers=config.headers,
                     profile=config.profile)
    image_path, mask_path = job.paths(out)
    case.write(image_path, mask_path)
    return {"case_id": mask_path.name[: -len(".nii.gz")], "split": job.split, "number": job.number,
            "image": str(image_path.relative_to(out)), "mask": str(mask_path.relative_to(out)), **case.meta}


def synthesize(out: Path, config: SynthConfig) -> Path:
    """Write phantoms in the quiz layout under ``out`` (plus ``phantoms.json``); returns ``out``."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(config)
    start = time.perf_counter()
    bar = {"total": len(jobs), "desc": "phantoms", "unit": "case", "disable": None}
    if config.workers > 1:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            cases = list(tqdm(pool.map(_run_job, jobs, [out] * len(jobs), [config] * len(jobs)), **bar))
    else:
        cases = [_run_job(job, out, config) for job in tqdm(jobs, **bar)]
    seconds = time.perf_counter() - start
    if "test" in config.splits:
        _write_test_table(out, [c for c in cases if c["split"] == "test"])
    summary = {"config": {**asdict(config), "splits": list(config.splits)}, "seconds": round(seconds, 2),
               "cases": cases}
    (out / PHANTOM_MANIFEST).write_text(json.dumps(summary, indent=1))
    logger.info("wrote %d phantoms to %s in %.1f s", len(cases), out, seconds)
    if config.preview:
        from pancreas.phantoms.preview import write_preview

        write_preview(out, cases, out / "preview.png")
    return out


def _write_test_table(out: Path, cases: list[dict]) -> None:
    table = out / "test_labels" / "subtype_results.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Names", "Subtype"])
        for case in cases:
            writer.writerow([f"{case['case_id']}.nii.gz", case["subtype"]])
