"""Health, readiness, model metadata and Prometheus metrics."""

from __future__ import annotations

import pytest


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_503_before_warmup(server):
    """The fixture polled /readyz from process start; the model loads in the background."""
    assert server.readyz_seen[-1] == 200
    if 503 not in server.readyz_seen:
        pytest.skip("the server became ready before its first /readyz poll answered")
    first = server.readyz_seen.index(503)
    assert all(s == 503 for s in server.readyz_seen[first:-1])


def test_model_info(client, tiny_bundle):
    body = client.get("/v1/model").json()
    assert body["name"] == "random-tiny" and body["backend"] == "torch" and body["precision"] == "fp32"
    assert body["device"] == "cpu" and body["patch_size"] == [32, 64, 64]
    assert body["metadata"]["network"]["configuration"] == "3d_fullres"
    assert body["metadata"]["artifacts"][0]["path"] == "models/fold_0.pt"


def test_metrics(client, post, blob_bytes):
    assert post(blob_bytes).status_code == 200
    text = client.get("/metrics").text
    for stage in ("read", "preprocess", "inference", "postprocess", "encode", "total"):
        assert f'pancreas_stage_seconds_bucket{{le="+Inf",stage="{stage}"}}' in text
    assert "pancreas_queue_depth 0.0" in text
    assert "pancreas_predictions_total" in text
    count = [ln for ln in text.splitlines() if ln.startswith('pancreas_stage_seconds_count{stage="total"}')]
    assert float(count[0].split()[-1]) >= 1


def test_openapi_documents_the_upload(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "file" in body["schema"]["properties"]
