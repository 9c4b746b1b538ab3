"""Synthetic abdominal CT phantoms in the pancreas-quiz layout (``pancreas synth``).

Python API::

    from pancreas.phantoms import SynthConfig, PhantomCase, make_case, synthesize
    case = make_case(seed, subtype, shape="crop", headers="varied")  # image, mask (same header), meta
    synthesize(Path("phantoms"), SynthConfig(cases_per_subtype=4))     # quiz layout + phantoms.json
    synthesize(out, config, select=lambda job: job.split == "validation")  # part of a plan, same ids and bytes
    make_case(seed, subtype, profile="quiz")  # distributions measured on the real quiz data
    make_case(seed, subtype, shapes=ShapeSource.scan("masks"))  # gland + lesion shape of a real mask [shapes]

Profiles [profiles]: every distribution below comes from one :class:`~pancreas.phantoms.profiles.Profile`.
``classic`` (the default) is described here and is bit-identical to the phantoms the demo model was trained
on. ``quiz`` swaps in what ``benchmarks/real_facts.py`` measured on the real data [calibration]: parenchyma
and lesion volumes per subtype (the gland is rescaled to the drawn volume [sizing]), pancreas HU 36-119,
subtype-2 lesions -41..+28 HU from the pancreas, fat ~-80 HU, slice spacing 0.45-8 mm and in-plane
0.33-0.98 mm around the real medians (2.0 / 0.73 mm), measured crop extents, and about 3x the classic
noise (total sigma ~23-40 HU, giving the real spread of the pancreas HU).

How a case is made (modules in brackets):

1. Anatomy in patient millimetres [anatomy, geometry]: body outline (subcutaneous fat, muscle wall,
   intra-abdominal fat ~-100 HU, air outside), liver, spleen, kidneys (cortex/medulla/sinus), gallbladder,
   lung bases, stomach, duodenum, colon and small bowel with air-fluid levels, psoas/paraspinal muscles,
   vertebrae and ribs, aorta/celiac/SMA, IVC, SMV/portal and a splenic vein running along the back of the
   pancreas. The pancreas is a lobulated tube along a jittered Catmull-Rom centreline (uncinate, head,
   neck, body, tail). Every shape is an implicit function of physical coordinates, so different voxel
   spacings show the same anatomy. With ``shapes`` [shapes] a real mask's gland (centred on the tube's
   centroid) and lesion take the place of the tube and the ellipsoid; the lesion keeps its subtype's look.
2. A lesion [lesions] in the head (50 %), body (30 %) or tail (20 %); the gland bulges around it so that
   label 2 always replaces label-1 voxels. Diameters are 5-35 mm, 80 % of them 10-30 mm.
3. HU per tissue in a per-case contrast phase [tissues], parenchymal texture, the lesion blended in,
   partial-volume blur, white + in-plane correlated noise (total sigma ~7-13 HU) [noise].
4. Field of view [fov]: ``crop`` is a quiz-like ROI around the pancreas (median extent of the quiz,
   64x119x178 voxels at 2.0x0.73x0.73 mm, varied +-15 %; z spacing 1.5-3 mm for 80 % of cases, otherwise
   0.7-1.5 or 3-5 mm, 24-112 slices); ``full`` is a 512x512 abdominal CT with 80-300 slices of 0.7-5 mm.
   In-plane spacing is 0.6-0.9 mm.
5. Header [headers, writer]: the canonical array is stored under an LPS, RAS, LAS, axis-permuted or
   oblique (5-15 degree tilt) direction with a random table origin, as int16, float32 or uint16 with
   scl_slope=1/scl_inter=-1024. ``headers="canonical"`` stores identity-direction int16 instead.

Learnability (target: a tiny nnU-Net trained ~1 h on CPU with 60-90 crops reaches pancreas DSC >= 0.9,
lesion DSC >= 0.6, subtype macro-F1 >= 0.8):

* the pancreas (75-120 HU) is surrounded by fat (~-100 HU) over most of its surface; it touches the
  splenic vein, SMV and duodenum, whose HU are similar, only along part of its border;
* lesion-to-pancreas contrast is ~1.5-4x the noise sigma for solid lesions (-15..-45 HU), larger for
  cysts (0-40 HU, near water) and hyperenhancing lesions (+15..+50 HU); iso-dense subtype-2 lesions
  are found by their enhancing rim;
* subtype cues are mean HU, sharpness, texture and rim; 20 % of solid lesions are cyst-like dark
  (-40..-70 HU), dense cysts reach 40 HU and 40 % of subtype 2 are iso-dense, so the classes overlap.
  A Gaussian naive-Bayes on four ground-truth-mask features (core HU - pancreas HU, core std, rim
  contrast, median HU) separates ~90-97 % of cases: learnable, with a margin for segmentation errors.
"""

from __future__ import annotations

from pancreas.phantoms.case import PhantomCase, make_case
from pancreas.phantoms.writer import SynthConfig, synthesize

__all__ = ["PhantomCase", "SynthConfig", "make_case", "synthesize"]
