"""The engine end to end: geometry under header variants, coarse-to-fine, ensembles, the predict CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.engine import Engine, EngineConfig
from pancreas.ensemble_engine import ensemble_of
from pancreas.nifti import read_volume, same_grid, write_image
from pancreas.testing import with_inference

SPACING = (2.0, 1.5, 1.5)  # the tiny plans' spacing: no resampling unless a test wants it
CPU = EngineConfig(backend="torch", device="cpu")


def lps_image(array: np.ndarray, spacing=(2.5, 1.2, 1.3)) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    img.SetOrigin((-30.0, 12.0, 40.0))
    return img


def variants(base: sitk.Image) -> dict[str, sitk.Image]:
    """The same data under different headers; all but 'oblique' describe the same world-space volume."""
    oblique = sitk.Image(base)
    a = np.deg2rad(6)
    oblique.SetDirection((np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1))
    return {"LPS": base, "RAS": sitk.DICOMOrient(base, "RAS"), "permuted": sitk.DICOMOrient(base, "SLP"),
            "permuted_flipped": sitk.DICOMOrient(base, "IAR"), "oblique": oblique}


def test_predict_file_geometry_and_world_space_for_header_variants(bundle, make_ct, tmp_path) -> None:
    base = lps_image(np.round(make_ct((18, 36, 40), seed=4)))  # integral HU: the int16 variant is exact
    engine = Engine.from_bundle(bundle, CPU)
    masks = {}
    for name, img in variants(base).items():
        src = write_image(sitk.Cast(img, sitk.sitkInt16) if name == "RAS" else img, tmp_path / f"{name}.nii.gz")
        pred = engine.predict_file(src, tmp_path / f"{name}_mask.nii.gz")
        mask = sitk.ReadImage(str(tmp_path / f"{name}_mask.nii.gz"))
        written = sitk.ReadImage(str(src))
        assert same_grid(mask, written), name  # exactly the input's size, spacing, origin, direction
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert {"read", "preprocess", "inference", "resample_back", "export", "postprocess", "write",
                "total"} <= set(pred.timings_ms)
        masks[name] = mask
    ref = sitk.GetArrayFromImage(masks["LPS"])
    assert ref.any()
    for name in ("RAS", "permuted", "permuted_flipped"):  # same world space: resample onto the LPS grid
        on_ref = sitk.Resample(masks[name], masks["LPS"], sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(on_ref), ref, err_msg=name)
    # the oblique header keeps its voxel grid: same voxels -> same mask array
    np.testing.assert_array_equal(sitk.GetArrayFromImage(masks["oblique"]), ref)


def test_prediction_fields_and_input_untouched(bundle2, make_ct, make_volume) -> None:
    vol = make_volume(make_ct((20, 40, 36), seed=5), (2.5, 1.2, 1.2))  # resampled to the plans' spacing
    before = vol.array.copy()
    engine = Engine.from_bundle(bundle2, CPU)
    engine.warmup()
    pred = engine.predict(vol)
    np.testing.assert_array_equal(vol.array, before)
    assert pred.mask.shape == vol.shape and pred.mask.dtype == np.uint8 and set(np.unique(pred.mask)) <= {0, 1, 2}
    assert len(pred.probabilities) == 3 and abs(sum(pred.probabilities) - 1) < 1e-6
    assert pred.subtype == int(np.argmax(pred.probabilities))
    voxel_ml = 2.5 * 1.2 * 1.2 / 1000
    assert pred.volumes_ml["pancreas"] == pytest.approx(np.count_nonzero(pred.mask) * voxel_ml)
    assert pred.volumes_ml["lesion"] == pytest.approx(np.count_nonzero(pred.mask == 2) * voxel_ml)
    info = engine.info
    assert info["folds"] == 2 and info["backend"] == "torch" and info["patch_size"] == [16, 32, 32]
    assert {"name", "version", "precision", "device", "step_size", "tta"} <= set(info)


class BandBackend:
    """A stand-in network with a clear answer: voxels whose normalized intensity is near 0.8 are pancreas."""

    name, precision, device, max_batch = "band", "fp32", "cpu", 8

    def __init__(self, patch) -> None:
        self.patch_size = tuple(patch)

    def __call__(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score = 10 * (0.5 - np.abs(patches - 0.8))
        seg = np.concatenate([-score, score, np.full_like(score, -50)], axis=1)
        return seg, np.tile(np.array([[0.0, 1.0, 0.0]], np.float32), (len(patches), 1))


def test_coarse_to_fine_matches_full_pass(bundle, make_ct, make_volume) -> None:
    vol = make_volume(make_ct((40, 84, 84), seed=6, noise=4.0), SPACING)
    band = BandBackend((16, 32, 32))
    full = Engine(bundle, EngineConfig(postprocess=False), band).predict(vol)
    engine = Engine(bundle, EngineConfig(postprocess=False, coarse_to_fine=True), band)
    roi = engine.coarse_roi(vol)
    assert roi[1][1] - roi[1][0] < 70 and roi[2][1] - roi[2][0] < 70  # of 84: the fine pass runs on a ROI
    c2f = engine.predict(vol)
    assert "coarse" in c2f.timings_ms and c2f.timings_ms["inference"] < full.timings_ms["inference"] * 1.5
    a, b = full.mask > 0, c2f.mask > 0
    assert a.sum() > 1000
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.98, dice
    outside = np.ones(vol.shape, bool)
    outside[tuple(slice(a, b) for a, b in roi)] = False  # identity plans transpose: ROI axes are canonical
    assert not c2f.mask[outside].any()


def test_configuration_ensemble_averages_probabilities(bundle, bundle2, make_ct, make_volume) -> None:
    vol = make_volume(make_ct((18, 36, 36), seed=7), SPACING)
    e1, e2 = Engine.from_bundle(bundle, CPU), Engine.from_bundle(bundle2, CPU)
    s1, s2 = e1.predict_soft(vol), e2.predict_soft(vol)
    assert s1.probabilities.shape == (3, *vol.shape)
    np.testing.assert_allclose(s1.probabilities.sum(0), 1, atol=1e-5)
    pred = ensemble_of([e1, e2]).predict(vol)
    expected = np.argmax(s1.probabilities + s2.probabilities, axis=0)
    post_free = Engine(bundle, EngineConfig(postprocess=False), e1.backend)
    assert post_free.predict(vol).mask.shape == pred.mask.shape
    changed = pred.mask != expected  # only postprocessing may differ from the averaged argmax
    assert (pred.mask[changed] == 0).all()
    np.testing.assert_allclose(pred.probabilities, (s1.class_probabilities + s2.class_probabilities) / 2)


def test_predict_cli_writes_masks_csv_and_json(bundle, bundle2, make_ct, tmp_path) -> None:
    from pancreas.cli import main

    data = tmp_path / "validation"
    images = {}
    for k, cid in ((0, "quiz_0_001"), (1, "quiz_1_002")):
        img = lps_image(make_ct((16, 34, 36), seed=10 + k))
        images[cid] = write_image(img, data / f"subtype{k}" / f"{cid}_0000.nii.gz")
        write_image(sitk.Cast(img > 100, sitk.sitkUInt8), data / f"subtype{k}" / f"{cid}.nii.gz")  # a "mask"
    out = tmp_path / "out"
    rc = main(["predict", "-i", str(data), "-o", str(out), "--model", str(bundle.root), "--model",
               str(bundle2.root), "--backend", "torch", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    for cid, src in images.items():
        assert same_grid(sitk.ReadImage(str(out / f"{cid}.nii.gz")), sitk.ReadImage(str(src)))
    with open(out / "subtype_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["Names"] for r in rows] == ["quiz_0_001.nii.gz", "quiz_1_002.nii.gz"]
    assert all(r["Subtype"] in {"0", "1", "2"} for r in rows)
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["models"]) == 2 and set(summary["cases"]) == set(images)
    assert summary["cases"]["quiz_0_001"]["timings_ms"]["total"] > 0
    # a single file works too, and an empty folder is a clear error
    assert main(["predict", "-i", str(images["quiz_0_001"]), "-o", str(tmp_path / "one"), "--model",
                 str(bundle.root), "--device", "cpu"]) == 0
    assert (tmp_path / "one" / "quiz_0_001.nii.gz").is_file()
    (tmp_path / "empty").mkdir()
    assert main(["predict", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "x"), "--model",
                 str(bundle.root)]) == 1


def test_read_volume_round_trip_used_by_engine(tmp_path: Path, make_ct) -> None:
    img = lps_image(make_ct((8, 12, 10)))
    path = write_image(sitk.DICOMOrient(img, "RAS"), tmp_path / "x.nii.gz")
    vol = read_volume(path)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(img), atol=1e-4)


def test_bad_engine_options_are_rejected() -> None:
    from pancreas.errors import PancreasError

    with pytest.raises(PancreasError, match="step_size=1.5"):
        EngineConfig(step_size=1.5)
    with pytest.raises(PancreasError, match="batch_size=0"):
        EngineConfig(batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_engine_matches_cpu(bundle, make_ct, make_volume) -> None:
    vol = make_volume(make_ct((20, 40, 44), seed=8), (2.5, 1.2, 1.2))
    cpu = Engine.from_bundle(bundle, CPU).predict(vol)
    gpu = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cuda")).predict(vol)
    assert (cpu.mask == gpu.mask).mean() > 0.99
    half = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cuda", precision="fp16")).predict(vol)
    assert half.mask.shape == vol.shape


def test_warmup_leaves_nothing_to_recompile(bundle, make_ct, make_volume, monkeypatch) -> None:
    """Warm-up runs under ``torch.inference_mode`` like the sliding window: torch.compile guards on
    inference tensors, so a warm-up outside it would leave both batch shapes to recompile on the first
    request (dynamo's eager backend with a compile counter stands in for inductor)."""
    import functools

    import torch
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    torch._dynamo.reset()
    engine = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cpu", compile=True, batch_size=2))
    engine.warmup()
    warm = counter.frame_count
    assert warm >= 1
    engine.predict(make_volume(make_ct((24, 44, 48), seed=4), SPACING))
    assert counter.frame_count == warm
    torch._dynamo.reset()


class _OutOfMemoryOnDevice:
    """A real backend that raises CUDA OOM while the engine aggregates on the GPU (input on CUDA)."""

    def __init__(self, backend) -> None:
        self.inner, self.calls_on_gpu = backend, 0
        for name in ("name", "precision", "device", "patch_size", "max_batch", "accepts_tensors"):
            setattr(self, name, getattr(backend, name))

    def __call__(self, patches):
        import torch

        if isinstance(patches, torch.Tensor) and patches.is_cuda:
            self.calls_on_gpu += 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.inner(patches)


def test_out_of_memory_on_cpu_is_not_retried(bundle, make_ct, make_volume, monkeypatch) -> None:
    import torch

    engine = Engine.from_bundle(bundle, CPU)
    monkeypatch.setattr(engine, "backend", _Raising(engine.backend))
    with pytest.raises(torch.OutOfMemoryError):
        engine.predict(make_volume(make_ct((24, 44, 48), seed=4), SPACING))


class _Raising(_OutOfMemoryOnDevice):
    def __call__(self, patches):
        import torch

        raise torch.OutOfMemoryError("out of memory (injected)")


@pytest.mark.gpu
def test_cuda_out_of_memory_falls_back_to_cpu_aggregation(bundle, make_ct, make_volume, caplog) -> None:
    vol = make_volume(make_ct((24, 44, 48), seed=4), SPACING)
    engine = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cuda"))
    reference = engine.predict(vol)
    engine.backend = _OutOfMemoryOnDevice(engine.backend)
    with caplog.at_level("WARNING", logger="pancreas.engine"):
        pred = engine.predict(vol)
    assert engine.backend.calls_on_gpu == 1 and "retrying with preprocessing and aggregation on the CPU" in caplog.text
    assert (pred.mask == reference.mask).mean() > 0.999


def test_bundle_records_tta_and_config_overrides_it(bundle, make_ct, make_volume, tmp_path) -> None:
    """``metadata.inference.tta`` turns mirroring on by default; ``EngineConfig(tta=False)`` still turns it off."""
    recorded = with_inference(bundle, tmp_path / "tta_bundle", tta=True)
    vol = make_volume(make_ct((16, 32, 32), seed=9), SPACING)
    follows = Engine.from_bundle(recorded, CPU)
    assert follows.info["tta"] is True and Engine.from_bundle(bundle, CPU).info["tta"] is False
    off = Engine.from_bundle(recorded, EngineConfig(backend="torch", device="cpu", tta=False))
    assert off.info["tta"] is False
    mirrored = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cpu", tta=True))
    p_follow, p_off = follows.predict_soft(vol).probabilities, off.predict_soft(vol).probabilities
    np.testing.assert_allclose(p_follow, mirrored.predict_soft(vol).probabilities, atol=1e-6)
    assert np.abs(p_follow - p_off).max() > 1e-4  # a random network is not mirror-symmetric
    assert ensemble_of([follows, off]).info["tta"] is True


def test_class_weights_scale_probabilities_before_the_argmax() -> None:
    import torch

    from pancreas.errors import PancreasError
    from pancreas.prediction import class_weights, weighted_labels

    logits = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, 0).numpy()
    w = class_weights({"class_weights": [1, 1, 4]}, EngineConfig(), 3)
    np.testing.assert_array_equal(weighted_labels(logits, w).numpy(), np.argmax(probs * w[:, None, None, None], 0))
    assert (weighted_labels(logits, w).numpy() == 2).sum() > (weighted_labels(logits, None).numpy() == 2).sum()
    assert class_weights({"class_weights": [1, 1, 4]}, EngineConfig(class_weights=(1, 1, 1)), 3) is None
    for bad in ([1, 2], [1, 0, 1], "x", [1, float("nan"), 1]):
        with pytest.raises(PancreasError, match="3 positive factors"):
            class_weights({"class_weights": bad}, EngineConfig(), 3)
    with pytest.raises(PancreasError, match="class_weights"):
        EngineConfig(class_weights=(1.0, -1.0, 1.0))


def test_bundle_class_weights_reach_engine_and_ensemble(bundle, make_ct, make_volume, tmp_path) -> None:
    """``metadata.inference.class_weights`` changes the label map (engine and ensemble); a malformed one is refused."""
    from pancreas.errors import PancreasError

    vol = make_volume(make_ct((16, 32, 32), seed=3), SPACING)
    no_post = EngineConfig(backend="torch", device="cpu", postprocess=False)
    lesion_heavy = with_inference(bundle, tmp_path / "w", class_weights=[1.0, 1.0, 50.0])
    plain = Engine.from_bundle(bundle, no_post).predict(vol).mask
    weighted = Engine.from_bundle(lesion_heavy, no_post).predict(vol).mask
    assert (weighted == 2).sum() > (plain == 2).sum()
    overridden = Engine.from_bundle(lesion_heavy, EngineConfig(backend="torch", device="cpu", postprocess=False,
                                                               class_weights=(1.0, 1.0, 1.0)))
    np.testing.assert_array_equal(overridden.predict(vol).mask, plain)
    pair = ensemble_of([Engine.from_bundle(lesion_heavy, no_post), Engine.from_bundle(lesion_heavy, no_post)])
    np.testing.assert_array_equal(pair.predict(vol).mask, weighted)
    broken = with_inference(bundle, tmp_path / "broken", class_weights=[1.0, 2.0])
    with pytest.raises(PancreasError, match="class_weights"):
        Engine.from_bundle(broken, no_post)
