"""Bundle export from the real tiny training: loads back, reproduces outputs bit-identically, and
corrupt or incomplete bundles are refused with BundleError."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pancreas.bundle import METADATA, Bundle
from pancreas.errors import BundleError
from pancreas.network import build_network, load_network


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    from training.export import export_bundle
    from training.nnunet_env import configure

    configure(tiny_run.root / "work")
    out = tmp_path_factory.mktemp("bundle") / "b"
    bundle = export_bundle(tiny_run.dataset, configuration="3d_fullres", folds=["quiz"],
                           plans_identifier=tiny_run.plans_identifier, out=out,
                           metrics={"phantom_dice_whole": tiny_run.trained["dice_whole"]},
                           command="pytest export")
    return bundle


def test_bundle_round_trip_bit_identical(tiny_run, exported) -> None:
    bundle = Bundle.load(exported.root)
    meta = bundle.metadata
    assert meta.network.head.variant == "mask" and meta.labels == {"background": 0, "pancreas": 1, "lesion": 2}
    assert [a.kind for a in meta.artifacts] == ["torch"] and meta.artifacts[0].sha256
    assert meta.metrics["folds"]["quiz"]["dice_whole"] == pytest.approx(tiny_run.trained["dice_whole"])
    assert meta.provenance.command == "pytest export" and "nnunetv2" in meta.provenance.versions
    ckpt = torch.load(tiny_run.fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    reference = load_network(tiny_run.plans, meta.network, ckpt["network_weights"])
    state = torch.load(bundle.path(meta.artifacts[0]), map_location="cpu", weights_only=True)
    restored = load_network(bundle.plans, meta.network, state)
    x = torch.randn(1, 1, *bundle.configuration["patch_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (s1, c1), (s2, c2) = reference(x), restored(x)
    assert torch.equal(s1, s2) and torch.equal(c1, c2)


def _copy(bundle: Bundle, tmp_path) -> Bundle:
    dst = tmp_path / "copy"
    shutil.copytree(bundle.root, dst)
    return dst


def test_missing_weights_refused(exported, tmp_path) -> None:
    root = _copy(exported, tmp_path)
    (root / exported.metadata.artifacts[0].path).unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(root)


def test_bad_json_refused(exported, tmp_path) -> None:
    root = _copy(exported, tmp_path)
    (root / METADATA).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(root)


def test_sha_mismatch_refused(exported, tmp_path) -> None:
    root = _copy(exported, tmp_path)
    path = root / exported.metadata.artifacts[0].path
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(root)


def test_wrong_schema_version_refused(exported, tmp_path) -> None:
    root = _copy(exported, tmp_path)
    meta = json.loads((root / METADATA).read_text())
    meta["schema_version"] = 99
    (root / METADATA).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema_version"):
        Bundle.load(root)


def test_export_refuses_missing_fold(tiny_run, tmp_path) -> None:
    from training.export import export_bundle
    from training.nnunet_env import configure

    configure(tiny_run.root / "work")
    with pytest.raises((BundleError, FileNotFoundError)):
        export_bundle(tiny_run.dataset, configuration="3d_fullres", folds=[3],
                      plans_identifier=tiny_run.plans_identifier, out=tmp_path / "x")


def test_checkpoint_of_other_head_refused(tiny_run, exported) -> None:
    other = exported.metadata.network.model_copy(update={"head": exported.metadata.network.head.model_copy(
        update={"variant": "gap"})})
    state = torch.load(exported.path(exported.metadata.artifacts[0]), map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError):
        load_network(exported.plans, other, state)
    assert build_network(exported.plans, other) is not None


def test_nnunet_predictor_runs_segmentation_view(tiny_run, exported) -> None:
    """nnU-Net's own predictor drives the bundle's network through SegmentationView and agrees with our
    sliding window on a held-out preprocessed case."""
    import numpy as np
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pancreas.network import SegmentationView
    from pancreas.sliding_window import WindowConfig, sliding_window
    from training.holdout import NetworkBackend

    meta = exported.metadata
    state = torch.load(exported.path(meta.artifacts[0]), map_location="cpu", weights_only=True)
    net = load_network(exported.plans, meta.network, state)
    pm = PlansManager(exported.plans)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.manual_initialization(SegmentationView(build_network(exported.plans, meta.network)), pm,
                                    pm.get_configuration("3d_fullres"), [state], exported.dataset,
                                    "MultiTaskTrainer", None)
    folder = str(tiny_run.root / "work" / "nnUNet_preprocessed" / tiny_run.dataset /
                 tiny_run.plans["configurations"]["3d_fullres"]["data_identifier"])
    key = tiny_run.val_keys[0]
    data, _, _, _ = infer_dataset_class(folder)(folder, [key]).load_case(key)
    image = torch.from_numpy(np.asarray(data, dtype=np.float32))
    theirs = predictor.predict_logits_from_preprocessed_data(image).argmax(0)
    patch = tuple(exported.configuration["patch_size"])
    ours = sliding_window(image, NetworkBackend(net, patch), WindowConfig(patch_size=patch)).logits.argmax(0)
    assert theirs.shape == ours.shape
    assert (theirs == ours).float().mean() > 0.99
