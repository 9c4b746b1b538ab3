"""Benchmark volumes: a few crop-size and full-size phantom CTs with canonical headers, made once.

Files are ``OUT/{crop,full}/{size}_{subtype}_{NNN}_0000.nii.gz`` (image) and ``{size}_{subtype}_{NNN}.nii.gz``
(mask 0/1/2), so the case id names the size. Canonical headers (LPS identity) make nnU-Net's SimpleITK reader
and our canonicalizing reader see the same array, so both candidates are fed identical data.
Existing files are kept (the folder works as a cache).

    python -m benchmarks.phantom_cases OUT --crop 3 --full 1 --seed 0
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from pancreas.quiz import image_name, mask_name

logger = logging.getLogger(__name__)

SIZES = ("crop", "full")


def write_cases(out: str | Path, *, crop: int = 1, full: int = 1, seed: int = 0) -> list[Path]:
    """Write (or reuse) ``crop`` crop-size and ``full`` full-size phantoms; return the image paths."""
    from pancreas.phantoms import make_case

    out = Path(out)
    jobs = [(size, i) for size, n in (("crop", crop), ("full", full)) for i in range(n)]
    images = []
    for size, i in tqdm(jobs, desc="phantoms", unit="case", disable=None):
        subtype = i % 3
        stem = f"{size}_{subtype}_{i:03d}"
        image, mask = out / size / image_name(stem), out / size / mask_name(stem)
        if not (image.is_file() and mask.is_file()):
            image.parent.mkdir(parents=True, exist_ok=True)
            make_case(seed + i, subtype, shape=size, headers="canonical").write(image, mask)
            logger.info("wrote %s", image)
        images.append(image)
    return images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--crop", type=int, default=1, help="crop-size cases (default 1)")
    p.add_argument("--full", type=int, default=1, help="full-size cases (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in write_cases(args.out, crop=args.crop, full=args.full, seed=args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
