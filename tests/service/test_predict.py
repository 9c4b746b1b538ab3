"""A real `pancreas serve` subprocess: JSON and file responses, geometry, timings, temp files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pancreas import SUBTYPES
from pancreas.nifti import same_grid
from pancreas.testing import decode_mask, nifti_bytes

STAGES = ("read", "preprocess", "inference", "postprocess", "encode", "total")


def check_timings(t: dict[str, float]) -> None:
    assert set(STAGES) <= set(t)
    parts = sum(v for k, v in t.items() if k != "total")
    assert all(v >= 0 for v in t.values())
    assert t["total"] >= parts - 1e-3, t
    assert t["total"] - parts <= max(50.0, 0.1 * t["total"]), f"timings leave too much unaccounted: {t}"


def test_json_response(post, blob_image, blob_bytes, tmp_path):
    r = post(blob_bytes)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subtype"] in SUBTYPES
    assert len(body["probabilities"]) == 3 and abs(sum(body["probabilities"]) - 1) < 1e-4
    assert body["subtype"] == int(np.argmax(body["probabilities"]))
    check_timings(body["timings_ms"])
    assert body["model"]["backend"] and body["model"]["precision"] and body["model"]["name"] == "random-tiny"
    mask = decode_mask(body["mask"], tmp_path)
    assert same_grid(mask, blob_image, tol=1e-6)
    assert mask.GetPixelID() == sitk.sitkUInt8
    labels = sitk.GetArrayFromImage(mask)
    assert set(np.unique(labels)) <= {0, 1, 2}
    voxel_ml = float(np.prod(blob_image.GetSpacing())) / 1000
    assert abs(body["volumes_ml"]["pancreas"] - np.count_nonzero(labels) * voxel_ml) < 1e-3
    assert abs(body["volumes_ml"]["lesion"] - np.count_nonzero(labels == 2) * voxel_ml) < 1e-3


def test_nifti_response_matches_json(post, blob_image, blob_bytes, tmp_path):
    as_json = post(blob_bytes).json()
    for kwargs in ({"params": {"format": "nifti"}}, {"headers": {"Accept": "application/gzip"}}):
        r = post(blob_bytes, **kwargs)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/gzip"
        assert int(r.headers["X-Subtype"]) == as_json["subtype"]
        assert np.allclose(json.loads(r.headers["X-Probabilities"]), as_json["probabilities"], atol=1e-5)
        check_timings(json.loads(r.headers["X-Timings-Ms"]))
        assert json.loads(r.headers["X-Model"]) == as_json["model"]
        assert json.loads(r.headers["X-Volumes-Ml"]) == as_json["volumes_ml"]
        mask = decode_mask(r.content, tmp_path)
        assert same_grid(mask, blob_image, tol=1e-6)
        ref = decode_mask(base64.b64decode(as_json["mask"]), tmp_path, "ref.nii.gz")
        assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(ref))


def test_uncompressed_nii(post, blob_image, tmp_path):
    r = post(nifti_bytes(blob_image, tmp_path, "ct.nii"), filename="ct.nii")
    assert r.status_code == 200, r.text
    assert same_grid(decode_mask(r.json()["mask"], tmp_path), blob_image, tol=1e-6)


def test_client_file_name_is_not_a_path(post, blob_bytes, server, tmp_path):
    target = Path("/tmp/pancreas-test-pwned.nii.gz")
    target.unlink(missing_ok=True)
    for name in (f"../../../../../../..{target}", "/etc/passwd", "..", "con.nii.gz", "x" * 300):
        r = post(blob_bytes, filename=name)
        assert r.status_code == 200, (name, r.text)
    assert not target.exists()
    assert list(server.tmp_dir.iterdir()) == [], "temporary request files were left behind"
