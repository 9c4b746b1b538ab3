"""A real server whose bundle records a training domain: uploads unlike it get 200 plus warnings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pancreas.domain import WARNING_CODES, InputDomain, record_domain
from pancreas.testing import blob_ct, nifti_bytes, post_ct, running_server

#: Pancreas crops of at most 140 x 150 x 120 mm (z, y, x), 1-5 mm voxels (both uploads below are inside).
DOMAIN = InputDomain.model_validate({"spacing_mm": {"min": [1.0, 1.0, 1.0], "max": [5.0, 5.0, 5.0]},
                                     "extent_mm": {"max": [140.0, 150.0, 120.0]}, "n_cases": 3})


@pytest.fixture(scope="module")
def domain_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, limits):
    root = tmp_path_factory.mktemp("domain") / "crops-bundle"
    shutil.copytree(tiny_bundle, root)
    record_domain(root, DOMAIN)
    limits = {"max_upload_bytes": limits["max_upload_bytes"], "max_voxels": limits["max_voxels"]}
    with running_server(root, tmp_path_factory.mktemp("domain-server"), **limits) as srv, srv.client() as c:
        yield c


@pytest.fixture(scope="module")
def abdomen_bytes(limits, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A whole-abdomen field of view: 80 x 96 x 104 voxels of 4 mm = 320 x 384 x 416 mm (z, y, x)."""
    image = blob_ct(shape=(80, 96, 104), spacing_xyz=(4.0, 4.0, 4.0))
    return nifti_bytes(image, tmp_path_factory.mktemp("abdomen"))


def _codes(body: dict) -> list[str]:
    return [w["code"] for w in body["warnings"]]


def test_huge_field_of_view_is_answered_with_a_fov_warning(domain_server, abdomen_bytes, limits) -> None:
    r = post_ct(domain_server, abdomen_bytes)
    assert r.status_code == 200, r.text
    body = r.json()
    assert all(set(w) == {"code", "message"} and w["code"] in WARNING_CODES for w in body["warnings"])
    fov = [w for w in body["warnings"] if w["code"] == "fov"]
    assert len(fov) == 1, body["warnings"]
    assert "field of view 320x384x416 mm (z,y,x)" in fov[0]["message"]
    assert "at most 140x150x120 mm" in fov[0]["message"]
    assert "spacing" not in _codes(body)


def test_normal_crop_has_no_fov_warning(domain_server, blob_bytes, limits) -> None:
    r = post_ct(domain_server, blob_bytes)  # 60 x 77 x 77 mm
    assert r.status_code == 200, r.text
    assert not {"fov", "spacing"} & set(_codes(r.json()))


def test_file_response_carries_the_warnings_header(domain_server, abdomen_bytes, limits) -> None:
    as_json = post_ct(domain_server, abdomen_bytes).json()
    r = post_ct(domain_server, abdomen_bytes, params={"format": "nifti"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert json.loads(r.headers["X-Warnings"]) == as_json["warnings"]


def test_model_info_shows_the_training_data(domain_server) -> None:
    body = domain_server.get("/v1/model").json()
    assert body["training_data"]["domain"] == DOMAIN.to_json()
    assert body["training_data"] == body["metadata"]["training_data"]


def test_openapi_documents_the_warning_codes(domain_server) -> None:
    schemas = domain_server.get("/openapi.json").json()["components"]["schemas"]
    assert "warnings" in schemas["PredictResponse"]["properties"]
    code_doc = schemas["InputWarningOut"]["properties"]["code"]["description"]
    assert all(f"`{code}`" in code_doc for code in WARNING_CODES)
    assert "training_data" in schemas["ModelInfo"]["properties"]
