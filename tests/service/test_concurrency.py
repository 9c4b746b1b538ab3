"""Concurrent requests on one model instance: correct results, bounded queue, 503 + Retry-After."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import SimpleITK as sitk

from pancreas.nifti import same_grid
from pancreas.testing import blob_ct, decode_mask, nifti_bytes, post_ct


def test_eight_concurrent_requests(server, tmp_path):
    """8 requests at once on two different CTs: all succeed, each gets its own input's result."""
    images = [blob_ct(seed=1), blob_ct(shape=(20, 56, 60), spacing_xyz=(1.0, 1.3, 3.0), seed=2)]
    payloads = [nifti_bytes(im, tmp_path, f"ct{i}.nii.gz") for i, im in enumerate(images)]
    with server.client() as c:
        expected = [post_ct(c, p).json() for p in payloads]

    def one(i: int) -> tuple[int, dict]:
        with server.client() as c:
            r = post_ct(c, payloads[i % 2])
            return i, r

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, r in results:
        assert r.status_code == 200, r.text
        body, ref = r.json(), expected[i % 2]
        mask = decode_mask(body["mask"], tmp_path, f"m{i}.nii.gz")
        assert same_grid(mask, images[i % 2], tol=1e-6)
        assert base64.b64decode(body["mask"]) and np.array_equal(
            sitk.GetArrayFromImage(mask),
            sitk.GetArrayFromImage(decode_mask(ref["mask"], tmp_path, f"r{i}.nii.gz")))
        assert np.allclose(body["probabilities"], ref["probabilities"], atol=1e-5)
        assert body["subtype"] == ref["subtype"]
    assert sum(r.json()["timings_ms"]["queue"] > 0 for _, r in results) >= 1
    assert list(server.tmp_dir.iterdir()) == []
