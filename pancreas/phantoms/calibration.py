"""Facts measured on the real pancreas-quiz data that the ``quiz`` profile samples from (aggregates only).

Every table is a set of percentiles (p0 = min ... p100 = max) over cases, measured with::

    python -m benchmarks.real_facts --quiz ../shared/data/quiz-real --out benchmarks/results/real-facts.md

on ``../shared/data/quiz-real`` (``masks/``: 245 train masks on their original grids, labels rounded;
``train/subtype2``: 59 rebuilt image/mask pairs, HU clipped to [-56, 180]; ``train/subtype0/quiz_0_324``: the
one original image) and ``../shared/data/real/totalseg_example_ct.nii.gz`` with its predicted pancreas mask.
The full table is ``benchmarks/results/real-facts.md``. No image, mask or voxel-wise data is stored here.
"""

from __future__ import annotations

from pancreas.phantoms.distributions import Percentiles

LEVELS = (0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 100.0)
_MASKS = "quiz-real/masks (245 train masks)"
_REBUILT = "quiz-real/train/subtype2 (59 rebuilt pairs, HU clipped to [-56, 180]), per-case median"


def _p(values: tuple[float, ...], source: str) -> Percentiles:
    return Percentiles(LEVELS, values, source)


#: pancreas parenchyma (label 1) volume per subtype, mL
PARENCHYMA_ML: dict[int, Percentiles] = {
    0: _p((7.741, 33.94, 38.66, 43.62, 58.4, 70.83, 90.64, 102.9, 130.2), f"{_MASKS}, subtype 0 (n=57)"),
    1: _p((16.19, 34.87, 38.42, 48.35, 63.04, 80.22, 93.35, 104.3, 135.8), f"{_MASKS}, subtype 1 (n=104)"),
    2: _p((17.53, 26.37, 34.25, 45.28, 62.4, 78.62, 93.4, 100.5, 117.7), f"{_MASKS}, subtype 2 (n=84)"),
}
#: whole pancreas (labels 1 + 2) volume per subtype, mL (checked, not sampled: parenchyma + lesion)
PANCREAS_ML: dict[int, Percentiles] = {
    0: _p((28.14, 42.52, 44.89, 56.49, 66.72, 78.55, 104.6, 121.7, 136.9), f"{_MASKS}, subtype 0"),
    1: _p((33.96, 42.61, 52.81, 62.92, 76.77, 89.52, 106.9, 115.4, 181.1), f"{_MASKS}, subtype 1"),
    2: _p((28.06, 39.8, 46.56, 54.72, 76.53, 94.9, 110.5, 143.1, 682.3), f"{_MASKS}, subtype 2"),
}
#: lesion (label 2) volume per subtype, mL; every train mask has a lesion
LESION_ML: dict[int, Percentiles] = {
    0: _p((0.07567, 0.8608, 1.152, 1.68, 5.275, 10.08, 24.25, 39.9, 67.72), f"{_MASKS}, subtype 0"),
    1: _p((0.01122, 0.7132, 1.081, 3.203, 7.345, 14.3, 38.58, 50.02, 69.86), f"{_MASKS}, subtype 1"),
    2: _p((0.1174, 0.5131, 0.7281, 2.375, 7.567, 18.3, 30.98, 81.55, 637.0), f"{_MASKS}, subtype 2"),
}

#: voxel spacing, mm (mask headers; x and y spacing are equal in every mask)
SLICE_MM = _p((0.45, 0.7, 0.8, 1.0, 2.0, 3.0, 3.0, 4.8, 8.0), f"{_MASKS}, slice spacing")
INPLANE_MM = _p((0.3309, 0.6043, 0.6278, 0.6836, 0.7305, 0.782, 0.8629, 0.8906, 0.9766), f"{_MASKS}, in-plane")

#: crop extent (voxels x spacing) per canonical axis, mm, and the number of slices
EXTENT_MM: dict[str, Percentiles] = {
    "z": _p((63.0, 83.2, 91.08, 100.8, 118.5, 141.0, 156.0, 170.0, 240.0), f"{_MASKS}, z extent"),
    "y": _p((51.22, 63.34, 67.46, 76.73, 85.49, 97.41, 106.7, 111.1, 150.3), f"{_MASKS}, y extent"),
    "x": _p((65.3, 97.23, 104.4, 118.9, 132.1, 144.3, 156.0, 166.4, 211.1), f"{_MASKS}, x extent"),
}
SLICES = (21, 244)  # min and max crop size along z, voxels (quiz-real/masks)

#: HU per case (median of the voxels in the label); pancreas = label 1
PANCREAS_HU = _p((12.0, 35.8, 48.6, 65.5, 80.0, 90.5, 108.4, 119.2, 138.0), f"{_REBUILT}, label 1")
#: interquartile width of the pancreas HU in one case (noise + texture + heterogeneity)
PANCREAS_IQR_HU = _p((29.0, 30.9, 33.8, 42.5, 48.0, 56.0, 65.4, 71.2, 95.5), f"{_REBUILT}, label 1 IQR width")
#: subtype-2 lesion: median HU and the per-case difference lesion - pancreas (medians)
LESION2_HU = _p((37.0, 40.9, 46.4, 54.5, 64.0, 77.5, 87.8, 103.1, 147.0), f"{_REBUILT}, label 2")
LESION2_MINUS_PANCREAS_HU = _p((-60.0, -40.9, -34.0, -20.5, -11.0, 0.0, 18.2, 27.5, 37.0),
                               f"{_REBUILT}, label 2 - label 1")

#: fat (voxels of -190..-30 HU within 30 mm of the pancreas) in the two unclipped images: median, q25, q75.
#: Subtypes 0 and 1 have no real image here but quiz_0_324, whose lesion is 7 HU below its pancreas
#: (114 vs 107 HU); the quiz profile keeps the classic looks for those subtypes.
FAT_HU = {
    "quiz_0_324": (-79.0, -92.0, -62.0),
    "totalseg_example_ct": (-82.0, -98.0, -61.0),
}
FAT_SOURCE = "quiz-real/train/subtype0/quiz_0_324 and real/totalseg_example_ct (unclipped)"
