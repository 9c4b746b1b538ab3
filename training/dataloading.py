"""Patch sampling for the multi-task trainer: lesion oversampling, per-source case weights, subtype lookup,
data-loader workers.

Subtypes travel with the batch through nnU-Net's own mechanism: ``nnUNetDataLoader.generate_train_batch``
returns the case identifiers as ``batch['keys']``; the trainer maps them to subtypes with the table
``pancreas convert`` writes (``subtypes.csv``: ``case_id,subtype[,split]``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from pancreas import LABELS
from pancreas.errors import DatasetError
from pancreas.sources import UNKNOWN
from training.subtypes import SUBTYPES_FILE, read_sources, read_subtypes

logger = logging.getLogger(__name__)


class LesionOversamplingDataLoader(nnUNetDataLoader):
    """nnU-Net's loader; a foreground-forced patch is centred on a lesion voxel with probability ``lesion_p``.

    Overrides ``get_bbox`` only, by passing nnU-Net's own ``overwrite_class`` (class-specific sampling).
    Cases without lesion voxels fall back to nnU-Net's choice among the present classes.
    """

    def __init__(self, *args: Any, lesion_p: float = 0.0, lesion_label: int = LABELS["lesion"],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lesion_p = lesion_p
        self.lesion_label = lesion_label

    def get_bbox(self, data_shape: np.ndarray, force_fg: bool, class_locations: dict | None,
                 overwrite_class: int | tuple[int, ...] | None = None, verbose: bool = False):
        if (force_fg and overwrite_class is None and class_locations is not None and self.lesion_p > 0
                and len(class_locations.get(self.lesion_label, ())) > 0 and np.random.uniform() < self.lesion_p):
            overwrite_class = self.lesion_label
        return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)


def source_sampling_probabilities(identifiers: Sequence[str], sources: Mapping[str, str],
                                  weights: Mapping[str, float] | None) -> np.ndarray | None:
    """Per-case draw probabilities for nnU-Net's ``sampling_probabilities`` (aligned with ``identifiers``):
    each case weighs ``weights[source]`` (1 for unlisted sources); None when ``weights`` is None."""
    if weights is None:
        return None
    w = np.array([float(weights.get(sources.get(c, UNKNOWN), 1.0)) for c in identifiers])
    if w.sum() <= 0:
        raise DatasetError(f"source weights {dict(weights)} give every training case weight 0; "
                           "at least one drawn source needs a weight > 0")
    return w / w.sum()


def read_subtype_table(dataset_dir: str | Path) -> dict[str, int]:
    """``case_id -> subtype`` from ``DATASET/subtypes.csv`` (written by ``pancreas convert``)."""
    return {str(k): int(v) for k, v in read_subtypes(dataset_dir).items()}


def _table_folder(dataset_name: str, raw: Path, preprocessed: Path) -> Path:
    """The folder holding the dataset's subtype table: the raw folder, or its copy in the preprocessed one."""
    for folder in (raw / dataset_name, preprocessed / dataset_name):
        if (folder / SUBTYPES_FILE).is_file():
            return folder
    raise DatasetError(f"no {SUBTYPES_FILE} in {raw / dataset_name} or {preprocessed / dataset_name}; "
                       "run `pancreas convert` (it writes the subtype table)")


def find_subtypes(dataset_name: str, raw: Path, preprocessed: Path) -> dict[str, int]:
    """``{case: subtype}`` of a dataset (see :func:`_table_folder` for where it is read)."""
    return read_subtype_table(_table_folder(dataset_name, raw, preprocessed))


def find_sources(dataset_name: str, raw: Path, preprocessed: Path) -> dict[str, str]:
    """``{case: source}`` (real / phantom) of a dataset, from the same table as :func:`find_subtypes`."""
    return read_sources(_table_folder(dataset_name, raw, preprocessed))


def make_augmenters(dl_tr: nnUNetDataLoader, dl_val: nnUNetDataLoader, num_workers: int,
                    pin_memory: bool) -> tuple[Any, Any]:
    """nnU-Net's augmenters: in-process for ``num_workers == 0``, else background workers."""
    if num_workers <= 0:
        return SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
    tr = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None, num_processes=num_workers,
                                      num_cached=max(4, num_workers), seeds=None, pin_memory=pin_memory,
                                      wait_time=0.002)
    val = NonDetMultiThreadedAugmenter(data_loader=dl_val, transform=None, num_processes=1, num_cached=2,
                                       seeds=None, pin_memory=pin_memory, wait_time=0.002)
    return tr, val
