"""Random-weight bundles of named network sizes (``BENCH_ARCH``), for speed on a GPU.

The demo bundle's network (8-64 features, patch 32×48×80) is too small to load a GPU, so the benchmark
also runs a random-weight network of the size nnU-Net v2 plans for the quiz data: a 6-stage
PlainConvUNet with 32-320 features, a 64×128×192 patch at the quiz's median spacing 2.0×0.73×0.73 mm.
Its masks are meaningless; agreement with nnU-Net's mask on the same weights is still meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pancreas.bundle import Bundle
from pancreas.errors import PancreasError


@dataclass(frozen=True)
class ArchSpec:
    features: tuple[int, ...]
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float]


#: ``BENCH_ARCH`` values; ``none`` (no extra bundle) is handled by the caller
ARCHS: dict[str, ArchSpec] = {
    "nnunet": ArchSpec((32, 64, 128, 256, 320, 320), (64, 128, 192), (2.0, 0.73, 0.73)),
    "small": ArchSpec((4, 8, 16), (16, 32, 32), (4.0, 4.0, 4.0)),  # CPU smoke: a tiny case is one patch
}


def arch_bundle(root: str | Path, name: str, *, seed: int = 0) -> Bundle:
    """Write (or reuse) the random-weight bundle of :data:`ARCHS` ``name`` under ``root``."""
    from pancreas.testing import make_random_bundle, tiny_plans

    if name not in ARCHS:
        raise PancreasError(f"unknown BENCH_ARCH {name!r}; use one of {sorted(ARCHS)} or none",
                            code="invalid_option")
    root = Path(root)
    if (root / "configs" / "metadata.json").is_file():
        return Bundle.load(root)
    spec = ARCHS[name]
    plans = tiny_plans(patch_size=spec.patch_size, spacing=spec.spacing, features=spec.features)
    return make_random_bundle(root, seed=seed, plans=plans, name=f"random-{name}")
