"""Tissue classes and their CT numbers (HU) in a contrast phase.

Each case draws a phase ``p`` in [0, 1] (0 = late arterial / pancreatic, 1 = portal venous) and a small
per-tissue jitter, so organ intensities vary from case to case as they do between scanners and
injection protocols. ``texture`` is the amplitude (HU) of smooth parenchymal mottling. A profile may
replace a tissue's :class:`TissueHU` by a :class:`MeasuredHU` (drawn from real per-case medians).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

from pancreas.phantoms.distributions import Distribution


class T(IntEnum):
    """Tissue ids painted into the tissue map (uint8)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LIVER = 3
    SPLEEN = 4
    KIDNEY_CORTEX = 5
    KIDNEY_MEDULLA = 6
    PANCREAS = 7
    ARTERY = 8
    VEIN = 9
    BONE_CORTEX = 10
    BONE_MARROW = 11
    BOWEL_WALL = 12
    BOWEL_FLUID = 13
    GAS = 14
    FLUID = 15  # gallbladder, CSF
    LUNG = 16


@dataclass(frozen=True)
class TissueHU:
    arterial: float
    venous: float
    jitter: float
    texture: float
    clip: tuple[float, float]

    def draw(self, rng: np.random.Generator, p: float) -> float:
        """HU in phase ``p``: interpolated, jittered (one ``rng.normal``) and clipped."""
        value = self.arterial + p * (self.venous - self.arterial) + rng.normal(0, self.jitter)
        return float(np.clip(value, *self.clip))


@dataclass(frozen=True)
class MeasuredHU:
    """A tissue whose per-case HU is drawn from a measured distribution, whatever the phase."""

    hu: Distribution
    texture: float

    def draw(self, rng: np.random.Generator, p: float) -> float:
        return self.hu.sample(rng)


class TissueSampler(Protocol):
    texture: float

    def draw(self, rng: np.random.Generator, p: float) -> float: ...


#: contrast-CT numbers; ranges follow the issue (fat ~-100, bone 300-1000, vessels 150-250, organs 40-180,
#: pancreas 40-120). Veins run 120-230 because the SMV/splenic vein are only partly filled when arterial.
TISSUES: dict[T, TissueHU] = {
    T.AIR: TissueHU(-1000, -1000, 0, 0, (-1000, -1000)),
    T.FAT: TissueHU(-100, -100, 8, 6, (-120, -80)),
    T.MUSCLE: TissueHU(50, 60, 6, 4, (35, 75)),
    T.LIVER: TissueHU(70, 110, 10, 6, (50, 140)),
    T.SPLEEN: TissueHU(130, 115, 10, 8, (90, 160)),
    T.KIDNEY_CORTEX: TissueHU(180, 165, 12, 4, (140, 180)),
    T.KIDNEY_MEDULLA: TissueHU(85, 160, 10, 4, (60, 180)),
    T.PANCREAS: TissueHU(110, 90, 8, 5, (75, 120)),
    T.ARTERY: TissueHU(240, 170, 10, 0, (155, 250)),
    T.VEIN: TissueHU(135, 175, 10, 0, (120, 230)),
    T.BONE_CORTEX: TissueHU(850, 850, 80, 0, (700, 1000)),
    T.BONE_MARROW: TissueHU(320, 320, 25, 15, (300, 380)),
    T.BOWEL_WALL: TissueHU(90, 100, 10, 3, (60, 120)),
    T.BOWEL_FLUID: TissueHU(15, 15, 8, 2, (0, 35)),
    T.GAS: TissueHU(-990, -990, 5, 0, (-1000, -980)),
    T.FLUID: TissueHU(10, 10, 5, 0, (0, 20)),
    T.LUNG: TissueHU(-850, -850, 20, 25, (-900, -800)),
}


@dataclass(frozen=True)
class Phase:
    """One case's contrast phase: HU and texture amplitude per tissue id (lookup tables)."""

    p: float
    hu: np.ndarray  # float32 [n_tissues]
    texture: np.ndarray  # float32 [n_tissues]

    @classmethod
    def draw(cls, rng: np.random.Generator, tissues: Mapping[T, TissueSampler] = TISSUES) -> Phase:
        """The phase, then each tissue of ``tissues`` in order (every tissue id must be there)."""
        if set(tissues) != set(T):
            raise ValueError(f"tissue table lacks {sorted(set(T) - set(tissues))}")
        p = float(rng.uniform(0, 1))
        hu = np.zeros(len(T), np.float32)
        tex = np.zeros(len(T), np.float32)
        for t, spec in tissues.items():
            hu[t] = spec.draw(rng, p)
            tex[t] = spec.texture
        return cls(p=p, hu=hu, texture=tex)

    @property
    def pancreas(self) -> float:
        return float(self.hu[T.PANCREAS])
