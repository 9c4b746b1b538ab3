"""An ensemble bundle over configurations served by a real server exactly like a single bundle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import SimpleITK as sitk

from pancreas.bundle import write_ensemble
from pancreas.engine_config import ENGINE_STAGES
from pancreas.nifti import same_grid
from pancreas.testing import (
    OBLIQUE_DIRECTION,
    cascade_plans,
    decode_mask,
    make_random_bundle,
    make_random_cascade_bundle,
    post_ct,
    running_server,
    tiny_plans,
    write_case,
)


@pytest.fixture(scope="module")
def ensemble_server(tmp_path_factory) -> Iterator:
    root = tmp_path_factory.mktemp("ensemble")
    plans = {"patch_size": (16, 32, 32), "features": (4, 8, 16)}
    members = {"fine": make_random_bundle(root / "fine", seed=2, plans=tiny_plans(spacing=(4.0, 4.0, 4.0), **plans)),
               "coarse": make_random_bundle(root / "coarse", seed=9,
                                            plans=tiny_plans(spacing=(5.0, 5.0, 5.0), **plans))}
    bundle = write_ensemble(root / "ens", members, name="served-ensemble")
    with running_server(bundle.root, root / "server", queue_size=4) as server:
        yield server


@pytest.fixture(scope="module")
def oblique_ct(tmp_path_factory) -> Path:
    return write_case(tmp_path_factory.mktemp("oblique") / "ct.nii.gz", (30, 48, 52), (1.7, 1.5, 2.5),
                      OBLIQUE_DIRECTION)


def test_mask_on_the_input_grid_with_per_member_timings(ensemble_server, oblique_ct: Path, tmp_path: Path) -> None:
    with ensemble_server.client() as client:
        r = post_ct(client, oblique_ct.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        mask, src = decode_mask(body["mask"], tmp_path), sitk.ReadImage(str(oblique_ct))
        assert same_grid(mask, src, tol=1e-5)  # size, spacing, origin, direction
        parts = body["parts_ms"]
        assert set(parts) == {"fine", "coarse"}
        for part in parts.values():
            assert set(part) - {"total"} <= set(ENGINE_STAGES) and part["inference"] > 0
        timings = body["timings_ms"]
        assert timings["inference"] == pytest.approx(sum(p["inference"] for p in parts.values()), rel=1e-6)
        assert body["model"]["name"] == "served-ensemble" and body["model"]["backend"] == "torch"
        r = post_ct(client, oblique_ct.read_bytes(), params={"format": "nifti"})
        assert r.status_code == 200 and set(json.loads(r.headers["X-Parts-Ms"])) == {"fine", "coarse"}
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_model_endpoint_describes_the_members(ensemble_server) -> None:
    with ensemble_server.client() as client:
        info = client.get("/v1/model").json()
    assert info["name"] == "served-ensemble" and info["patch_size"] is None
    assert [m["name"] for m in info["members"]] == ["fine", "coarse"]
    assert {m["configuration"] for m in info["members"]} == {"3d_fullres"}
    assert all(m["patch_size"] == [16, 32, 32] and m["folds"] == 1 for m in info["members"])
    assert info["metadata"]["members"] == ["members/fine", "members/coarse"]
    assert set(info["engine"]["members"]) == {"fine", "coarse"}


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory) -> Iterator:
    """A 2d + 3d_fullres + 3d_cascade_fullres ensemble (random-init members) behind a real server."""
    root = tmp_path_factory.mktemp("mixed")
    kw = {"features": (4, 8, 16)}
    members = {
        "2d": make_random_bundle(root / "2d", seed=1, configuration="2d",
                                 plans=tiny_plans(configuration="2d", patch_size=(32, 32), spacing=(4.0, 4.0), **kw)),
        "3d_fullres": make_random_bundle(root / "3d", seed=2,
                                         plans=tiny_plans(patch_size=(16, 32, 32), spacing=(5.0, 5.0, 5.0), **kw)),
        "3d_cascade_fullres": make_random_cascade_bundle(
            root / "cascade", seed=3, plans=cascade_plans(patch_size=(16, 32, 32), spacing=(4.0, 4.0, 4.0), **kw)),
    }
    bundle = write_ensemble(root / "ens", members, name="mixed-ensemble")
    with running_server(bundle.root, root / "server", queue_size=4) as server:
        yield server


def test_2d_and_3d_ensemble_served_on_the_input_grid(mixed_server, oblique_ct: Path, tmp_path: Path) -> None:
    with mixed_server.client() as client:
        r = post_ct(client, oblique_ct.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        mask, src = decode_mask(body["mask"], tmp_path), sitk.ReadImage(str(oblique_ct))
        assert same_grid(mask, src, tol=1e-5)  # size, spacing, origin, direction
        assert set(body["parts_ms"]) == {"2d", "3d_fullres", "3d_cascade_fullres"}
        info = client.get("/v1/model").json()
        assert {m["name"]: m["configuration"] for m in info["members"]} == {
            "2d": "2d", "3d_fullres": "3d_fullres", "3d_cascade_fullres": "3d_cascade_fullres"}
        assert next(m for m in info["members"] if m["name"] == "2d")["patch_size"] == [32, 32]
        assert client.get("/readyz").status_code == 200
