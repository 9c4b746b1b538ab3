"""The quiz layout of ``pancreas synth``: plan the cases, write them (through :func:`pancreas.nifti.write_nifti1`,
via :meth:`PhantomCase.write`) and the ``phantoms.json`` manifest."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pancreas import SUBTYPES
from pancreas.errors import PancreasError
from pancreas.phantoms.fov import GRIDS
from pancreas.phantoms.headers import HEADER_MODES
from pancreas.phantoms.profiles import PROFILES
from pancreas.phantoms.shapes import ShapeSource
from pancreas.quiz import SPLITS, SUBTYPE_CSV, TEST_LABELS_DIR, case_id_of, case_paths, write_subtype_csv
from pancreas.sources import PHANTOM_MANIFEST

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``pancreas synth`` (see :func:`synthesize`); ``shapes`` (off by default) takes the gland and
    lesion shapes from real masks (:meth:`ShapeSource.scan`) and must hold every subtype."""

    cases_per_subtype: int = 4
    splits: tuple[str, ...] = SPLITS
    shape: str = "crop"
    seed: int = 0
    headers: str = "varied"
    preview: bool = False
    workers: int = 1
    profile: str = "classic"
    shapes: ShapeSource | None = None

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
        if self.shapes is not None:
            if not isinstance(self.shapes, ShapeSource):
                raise PancreasError(f"shapes={self.shapes!r} must be a ShapeSource (ShapeSource.scan(folder))",
                                    code="invalid_option")
            self.shapes.require(SUBTYPES)


@dataclass(frozen=True)
class CaseJob:
    split: str
    subtype: int
    index: int
    number: int  # NNN, unique across the dataset

    def seed(self, base: int) -> int:
        entropy = [int(base), SPLITS.index(self.split), self.subtype, self.index]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def paths(self, out: Path) -> tuple[Path, Path]:
        return case_paths(out, self.split, self.subtype, self.number)


def plan_jobs(config: SynthConfig) -> list[CaseJob]:
    """Cases in a fixed order (splits as in SPLITS, then subtype, then index), numbered from 1."""
    jobs = []
    for split in (s for s in SPLITS if s in config.splits):
        for subtype in (0, 1, 2):
            for index in range(config.cases_per_subtype):
                jobs.append(CaseJob(split, subtype, index, len(jobs) + 1))
    return jobs


def _run_job(job: CaseJob, out: Path, config: SynthConfig) -> dict:
    from pancreas.phantoms.case import make_case

    case = make_case(job.seed(config.seed), job.subtype, shape=config.shape, headers=config.headers,
                     profile=config.profile, shapes=config.shapes)
    image_path, mask_path = job.paths(out)
    case.write(image_path, mask_path)
    return {"case_id": case_id_of(mask_path.name), "split": job.split, "number": job.number,
            "image": str(image_path.relative_to(out)), "mask": str(mask_path.relative_to(out)), **case.meta}


def synthesize(out: Path, config: SynthConfig, *, select: Callable[[CaseJob], bool] | None = None) -> Path:
    """Write phantoms in the quiz layout under ``out`` (plus ``phantoms.json``); returns ``out``.

    ``select`` keeps only the planned cases it accepts, each with the id and image the full run gives it.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [job for job in plan_jobs(config) if select is None or select(job)]
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
    summary = {"config": _config_record(config), "seconds": round(seconds, 2), "cases": cases}
    (out / PHANTOM_MANIFEST).write_text(json.dumps(summary, indent=1))
    logger.info("wrote %d phantoms to %s in %.1f s", len(cases), out, seconds)
    if config.preview:
        from pancreas.phantoms.preview import write_preview

        write_preview(out, cases, out / "preview.png")
    return out


def _config_record(config: SynthConfig) -> dict:
    """The config as the manifest records it (``shapes`` only when used, as masks per subtype)."""
    record = {**asdict(config), "splits": list(config.splits)}
    shapes = record.pop("shapes")
    return record if shapes is None else {**record, "shapes": config.shapes.summary()}


def _write_test_table(out: Path, cases: list[dict]) -> None:
    write_subtype_csv(out / TEST_LABELS_DIR / SUBTYPE_CSV, {case["case_id"]: case["subtype"] for case in cases})
