"""Real patches for calibration, parity checks and fine-tuning, cut from preprocessed phantom CTs.

Cases come from a quiz-layout folder (``pancreas synth`` output or the real quiz data):
``{split}/subtype{k}/quiz_{k}_{NNN}_0000.nii.gz`` + ``quiz_{k}_{NNN}.nii.gz``. Each image goes through the
engine's own nnU-Net preprocessing (:mod:`pancreas.preprocess`), so INT8 calibration sees exactly the
intensity distribution the deployed model sees; masks follow with nearest-neighbour resampling.
Patches are sampled like nnU-Net's loader: a share centred on foreground, the rest uniformly. A cascade stage's
patches (``network.input_channels`` > 1) carry the one-hot reference labels as the previous-stage channels, in
place of the low-res prediction (what a perfect previous stage hands on; parity only needs realistic inputs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pancreas import FOREGROUND_LABELS
from pancreas.errors import DatasetError
from pancreas.patch import window_patch
from pancreas.quiz import NII, case_id_of, image_name, is_image, subtype_dirs

logger = logging.getLogger(__name__)


@dataclass
class Case:
    case_id: str
    image: Path
    mask: Path
    subtype: int


@dataclass
class PatchSet:
    """``images`` float32 ``[N,C,*patch]``, ``labels`` int64 ``[N,*patch]``, ``subtypes`` int64 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    subtypes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def split(self, n: int) -> tuple[PatchSet, PatchSet]:
        """The first ``n`` patches and the rest."""
        return (PatchSet(self.images[:n], self.labels[:n], self.subtypes[:n]),
                PatchSet(self.images[n:], self.labels[n:], self.subtypes[n:]))


def list_cases(root: str | Path, split: str = "train") -> list[Case]:
    """Labelled cases of a quiz-layout split folder, sorted by id."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetError(f"{folder} does not exist; pass a quiz-layout folder (e.g. from `pancreas synth`) "
                           f"with a {split}/ split", code="missing_folder")
    cases = []
    for subtype, sub in subtype_dirs(folder):
        for mask in sorted(sub.glob(f"*{NII}")):
            if is_image(mask.name):
                continue
            case_id = case_id_of(mask.name)
            image = sub / image_name(case_id)
            if image.is_file():
                cases.append(Case(case_id, image, mask, subtype))
    if not cases:
        raise DatasetError(f"{folder} holds no labelled cases (subtype*/quiz_*_0000.nii.gz + mask)",
                           code="empty_dataset")
    return cases


def preprocess_case(bundle: Any, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(network-space image ``[D,H,W]`` float32, label map ``[D,H,W]`` uint8) of one case."""
    import torch

    from pancreas.preprocess import PreprocessPlan, preprocess, to_slices

    plan = PreprocessPlan.from_plans(bundle.plans, bundle.metadata.network.configuration)
    vol = read_volume_safe(case.image)
    seg = read_volume_safe(case.mask).array
    pre = preprocess(vol.array, vol.spacing, plan)
    seg = np.transpose(seg, plan.transpose_forward)[to_slices(pre.bbox)]
    seg_t = torch.from_numpy(np.ascontiguousarray(seg, dtype=np.float32))[None, None]
    seg_t = torch.nn.functional.interpolate(seg_t, size=tuple(pre.data.shape[1:]), mode="nearest-exact")
    return pre.data[0].numpy().astype(np.float32), np.rint(seg_t[0, 0].numpy()).astype(np.uint8)


def read_volume_safe(path: str | Path) -> Any:
    """``read_volume`` that keeps the SimpleITK image alive until the array is copied.

    ``pancreas.nifti.canonicalize`` may return a *view* of the image buffer (float32 file, canonical
    direction), which dangles once the image is freed; copying while the image lives avoids that.
    """
    from dataclasses import replace

    from pancreas.nifti import canonicalize, read_image

    path = Path(path)
    image = read_image(path)
    vol = canonicalize(image, name=path.name)
    vol = replace(vol, array=np.array(vol.array, copy=True))
    del image
    return vol


def _pad(x: np.ndarray, patch: tuple[int, ...], value: float) -> np.ndarray:
    pad = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2) for s, p in zip(x.shape, patch)]
    return np.pad(x, pad, constant_values=value) if any(a or b for a, b in pad) else x


def sample_from_case(image: np.ndarray, labels: np.ndarray, patch: tuple[int, ...], n: int,
                     rng: np.random.Generator, fg_fraction: float = 0.67,
                     lesion_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` patches of ``patch`` size (images, labels), a ``fg_fraction`` share centred on foreground.

    The first ``lesion_fraction`` share of the patches is centred on lesion voxels (label 2) when the case
    has any, so small lesions are seen often enough during fine-tuning.
    """
    image, labels = _pad(image, patch, float(image.min())), _pad(labels, patch, 0)
    fg, lesion = np.argwhere(labels > 0), np.argwhere(labels == 2)
    imgs, labs = [], []
    for i in range(n):
        pool = lesion if len(lesion) and i < round(n * lesion_fraction) else fg
        if len(pool) and i < round(n * max(fg_fraction, lesion_fraction)):
            center = pool[rng.integers(len(pool))]
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(center, patch, image.shape)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, image.shape)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
        imgs.append(image[sl])
        labs.append(labels[sl])
    return np.stack(imgs)[:, None].astype(np.float32), np.stack(labs).astype(np.int64)


def phantom_patches(bundle: Any, root: str | Path, *, split: str = "train", max_cases: int = 8,
                    per_case: int = 2, seed: int = 0, fg_fraction: float = 0.67,
                    lesion_fraction: float = 0.0) -> PatchSet:
    """Patches from up to ``max_cases`` preprocessed cases of ``root/split`` (deterministic for ``seed``).

    A 2D network's patches are slices: sampled as ``(1, h, w)`` boxes, returned as ``[N,C,h,w]``.
    """
    network_patch = tuple(int(p) for p in bundle.configuration["patch_size"])
    patch = window_patch(network_patch)
    cascade = bundle.metadata.network.input_channels > 1
    rng = np.random.default_rng(seed)
    cases = list_cases(root, split)
    picked = [cases[i] for i in sorted(rng.permutation(len(cases))[:max_cases])]
    images, labels, subtypes = [], [], []
    for case in picked:
        img, lab = preprocess_case(bundle, case)
        x, y = sample_from_case(img, lab, patch, per_case, rng, fg_fraction, lesion_fraction)
        x, y = x.reshape(len(x), 1, *network_patch), y.reshape(len(y), *network_patch)
        if cascade:
            x = np.concatenate([x, np.stack([y == c for c in FOREGROUND_LABELS], axis=1).astype(np.float32)], axis=1)
        images.append(x)
        labels.append(y)
        subtypes += [case.subtype] * per_case
    logger.info("sampled %d patches of %s from %d %s cases", len(subtypes), network_patch, len(picked), split)
    return PatchSet(np.concatenate(images), np.concatenate(labels), np.asarray(subtypes, dtype=np.int64))
