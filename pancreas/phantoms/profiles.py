"""Sampling profiles of the phantom generator: every distribution a case is drawn from, in one object.

* ``classic`` (the default) is the generator as it was designed for learnability; its draws, and so its
  files, are bit-identical to the phantoms the committed demo model was trained on.
* ``quiz`` draws what was measured on the real quiz data (:mod:`pancreas.phantoms.calibration`): parenchyma
  and lesion volumes per subtype, pancreas HU, subtype-2 lesion contrast, fat HU, slice (0.45-8 mm) and
  in-plane (0.33-0.98 mm) spacing, crop extents, and a noise level that gives the measured spread of the
  pancreas HU. Volumes, contrast, HU and extents are sampled between the 5th and 95th percentile of the
  real cases; spacings over their whole measured range. The gland is rescaled to the drawn parenchyma
  volume and bulges around the lesion with a thin (1 mm) rim. Subtype 0/1 lesion looks stay classic (no
  real images of them to measure), as do the anatomy's layout and the other tissues.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pancreas.phantoms import calibration as cal
from pancreas.phantoms.fov import CropModel, FullModel, MeasuredExtent
from pancreas.phantoms.lesions import LOOKS, EquivalentDiameter, LesionModel, RelativeLook
from pancreas.phantoms.noise import NoiseRanges
from pancreas.phantoms.sizing import BulgedGland, FittedGland, GlandModel
from pancreas.phantoms.tissues import TISSUES, MeasuredHU, T, TissueHU, TissueSampler

#: the central part of a measured distribution that the quiz profile samples
CENTRAL = (5.0, 95.0)


@dataclass(frozen=True)
class Profile:
    """The distributions of one profile: tissue HU, noise, lesion size and look, gland size, field of view."""

    name: str
    tissues: Mapping[T, TissueSampler] = field(default_factory=lambda: dict(TISSUES))
    noise: NoiseRanges = field(default_factory=NoiseRanges)
    lesions: LesionModel = field(default_factory=LesionModel)
    gland: GlandModel = field(default_factory=BulgedGland)
    fov: Mapping[str, CropModel | FullModel] = field(
        default_factory=lambda: {"crop": CropModel(), "full": FullModel()})


def _fat() -> TissueHU:
    """Fat centred on the mean of the two measured medians, clipped to the HU range both IQRs share."""
    medians = [m for m, _, _ in cal.FAT_HU.values()]
    lo = max(q25 for _, q25, _ in cal.FAT_HU.values())
    hi = min(q75 for _, _, q75 in cal.FAT_HU.values())
    centre = sum(medians) / len(medians)
    classic = TISSUES[T.FAT]
    return TissueHU(centre, centre, classic.jitter, classic.texture, (lo, hi))


def _quiz() -> Profile:
    central = {name: d.between(*CENTRAL) for name, d in cal.EXTENT_MM.items()}
    return Profile(
        name="quiz",
        tissues={**TISSUES, T.PANCREAS: MeasuredHU(cal.PANCREAS_HU.between(*CENTRAL), TISSUES[T.PANCREAS].texture),
                 T.FAT: _fat()},
        # chosen so that the phantoms' pancreas IQR width lands in the real p25-p75 of cal.PANCREAS_IQR_HU
        # (24 phantoms: median 44.5 HU, real 48; the phantom table of benchmarks/results/real-facts.md)
        noise=NoiseRanges(white=(16.0, 28.0), correlated=(16.0, 28.0)),
        lesions=LesionModel(
            diameter={s: EquivalentDiameter(d.between(*CENTRAL)) for s, d in cal.LESION_ML.items()},
            looks={0: LOOKS[0], 1: LOOKS[1], 2: RelativeLook(cal.LESION2_MINUS_PANCREAS_HU.between(*CENTRAL))}),
        gland=FittedGland({s: d.between(*CENTRAL) for s, d in cal.PARENCHYMA_ML.items()}),
        fov={"crop": CropModel(slice_mm=cal.SLICE_MM, inplane_mm=cal.INPLANE_MM,
                               extent=MeasuredExtent(z=central["z"], y=central["y"], x=central["x"]),
                               slices=cal.SLICES),
             "full": FullModel(slice_mm=cal.SLICE_MM, inplane_mm=cal.INPLANE_MM.range)},
    )


#: ``profile`` option -> profile
PROFILES: dict[str, Profile] = {"classic": Profile(name="classic"), "quiz": _quiz()}
