"""Test and measurement support: tiny, realistic-looking bundles built without training, and real servers.

``make_random_bundle`` writes a complete bundle (nnU-Net v2 plans, dataset.json, metadata, random-init
weights of the real :class:`~pancreas.network.MultiTaskUNet`) so engine, service, optimize and benchmark
tests can exercise the real code paths in seconds. Predictions of such a bundle are meaningless.
:class:`ServerProcess` runs ``pancreas serve`` (or another server command) in a subprocess on a
:func:`free_port`, waits until it answers and always stops it: the one helper of the service tests, the
Docker entrypoint tests and ``pancreas bench load``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pancreas import LABELS
from pancreas.bundle import (
    METADATA,
    Artifact,
    Bundle,
    BundleMetadata,
    HeadConfig,
    NetworkConfig,
    input_channels,
    provenance,
    resolve_configuration,
)
from pancreas.errors import PancreasError

_ARCH_IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]

#: The source checkout this package runs from (the tests and benchmarks run from one).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The workspace's shared data beside the checkout: ``real/`` (one abdominal CT) and ``quiz-real/`` (real quiz
#: CT, licence not stated, never committed). Absent on CI: tests that need it skip with a stated reason.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_CT = SHARED_DATA / "real" / "totalseg_example_ct.nii.gz"
QUIZ_REAL = SHARED_DATA / "quiz-real"


def tiny_plans(*, configuration: str = "3d_fullres", patch_size: tuple[int, ...] | None = None,
               spacing: tuple[float, ...] | None = None,
               features: tuple[int, ...] = (8, 16, 32, 64), residual: bool = False,
               convs_per_stage: int = 2) -> dict[str, Any]:
    """An nnU-Net v2 plans dict with one configuration, named ``configuration``, for tiny networks.

    ``configuration="2d"`` gives nnU-Net's 2D configuration (Conv2d network, 2-entry ``patch_size`` and in-plane
    ``spacing``, default ``(64, 64)`` at ``(1.5, 1.5)`` mm); any other name a 3D one (default patch
    ``(32, 64, 64)`` at ``(2.0, 1.5, 1.5)`` mm). ``residual`` selects ResidualEncoderUNet (``convs_per_stage``
    residual blocks per encoder stage) instead of PlainConvUNet (``convs_per_stage`` convolutions per stage).
    """
    n = len(features)
    two_d = configuration == "2d"
    patch_size = patch_size or ((64, 64) if two_d else (32, 64, 64))
    spacing = spacing or ((1.5, 1.5) if two_d else (2.0, 1.5, 1.5))
    if len(patch_size) != len(spacing) or len(patch_size) != (2 if two_d else 3):
        raise ValueError(f"configuration {configuration!r} needs {2 if two_d else 3}-entry patch_size and spacing, "
                         f"got {patch_size} and {spacing}")
    cls, blocks_key = (("ResidualEncoderUNet", "n_blocks_per_stage") if residual
                       else ("PlainConvUNet", "n_conv_per_stage"))
    if two_d:
        strides, kernels, dim = [[1, 1]] + [[2, 2]] * (n - 1), [[3, 3]] * n, 2
    else:
        strides, kernels, dim = [[1, 1, 1]] + [[1, 2, 2]] + [[2, 2, 2]] * (n - 2), [[1, 3, 3]] + [[3, 3, 3]] * (n - 1), 3
    resample = {"order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": f"nnUNetPlansTiny_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 12 if two_d else 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": [58, 87] if two_d else [64, 58, 87],
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resample},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resample},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resample},
        "architecture": {
            "network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
            "arch_kwargs": {
                "n_stages": n,
                "features_per_stage": list(features),
                "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
                "kernel_sizes": kernels,
                "strides": strides,
                blocks_key: [convs_per_stage] * n,
                "n_conv_per_stage_decoder": [convs_per_stage] * (n - 1),
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": False},
            },
            "_kw_requires_import": list(_ARCH_IMPORTS),
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset999_RandomTiny",
        "plans_name": "nnUNetPlansTiny",
        "original_median_spacing_after_transp": [2.0, 0.73, 0.73],
        "original_median_shape_after_transp": [64, 119, 178],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {configuration: config},
        "experiment_planner_used": "TinyPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 400.0, "mean": 85.0, "median": 88.0, "min": -150.0,
                  "percentile_00_5": -60.0, "percentile_99_5": 230.0, "std": 45.0},
        },
    }


def write_nifti(path: str | Path, array: Any, header: dict[str, Any]) -> Path:
    """Write ``array`` (numpy ``(z, y, x)``) as a compressed NIfTI with ``header`` keys spacing/origin/direction."""
    import SimpleITK as sitk

    from pancreas.nifti import write_image

    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(header["spacing"])
    image.SetOrigin(header["origin"])
    image.SetDirection(tuple(float(v) for v in header["direction"]))
    return write_image(image, path)


# ---- CT-like volumes on chosen grids -------------------------------------------------------------------
#: A non-RAS, oblique header: voxel axes permuted and flipped, then tilted 9 degrees about world y.
_TILT = np.deg2rad(9.0)
OBLIQUE_DIRECTION = tuple((np.array([[np.cos(_TILT), 0, np.sin(_TILT)], [0, 1, 0], [-np.sin(_TILT), 0, np.cos(_TILT)]])
                           @ np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])).ravel())


def ct_array(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 CT-like (z, y, x) array (air, body, one bright organ) and its 0/1/2 organ/lesion labels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ct = np.full(shape, -1000.0)
    ct[(y / 0.9) ** 2 + (x / 0.95) ** 2 < 1] = 30.0
    organ = (z / 0.5) ** 2 + (y / 0.3) ** 2 + (x / 0.45) ** 2 < 1
    lesion = (z / 0.2) ** 2 + (y / 0.12) ** 2 + (x / 0.12) ** 2 < 1
    ct[organ], ct[lesion] = 110.0, 40.0
    labels = organ.astype(np.uint8) + lesion.astype(np.uint8)
    return np.round(ct + rng.normal(0, 12, shape)).astype(np.int16), labels


def write_case(path: Path, shape: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
               direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1), seed: int = 0,
               mask_path: Path | None = None) -> Path:
    """Write a CT-like NIfTI (and optionally its labels on the same grid); ``shape`` is numpy (z, y, x)."""
    ct, labels = ct_array(shape, seed)
    header = {"spacing": spacing_xyz, "origin": (-30.5, 12.0, 240.25), "direction": direction}
    if mask_path is not None:
        write_nifti(mask_path, labels, header)
    return write_nifti(path, ct, header)


def tiny_dataset_json(num_training: int = 0) -> dict[str, Any]:
    return {"channel_names": {"0": "CT"}, "labels": dict(LABELS), "numTraining": num_training,
            "file_ending": ".nii.gz", "name": "RandomTiny"}


def make_random_bundle(root: str | Path, *, seed: int = 0, head: str = "mask", folds: int = 1,
                       plans: dict[str, Any] | None = None, name: str = "random-tiny",
                       configuration: str = "3d_fullres", previous_stage: str | None = None) -> Bundle:
    """Write a bundle with random-init weights of the real multi-task network and return it loaded.

    ``configuration`` names the plans' configuration the bundle runs (``"2d"``: a 2D network; without
    ``plans``, :func:`tiny_plans` of that configuration).
    """
    import torch

    from pancreas.network import build_network

    root = Path(root)
    plans = copy.deepcopy(plans) if plans is not None else tiny_plans(configuration=configuration)
    net_config = NetworkConfig(configuration=configuration, head=HeadConfig(variant=head),
                               input_channels=input_channels(plans, configuration))
    (root / "models").mkdir(parents=True, exist_ok=True)
    artifacts = []
    patch = resolve_configuration(plans, configuration)["patch_size"]
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        net = build_network(plans, net_config, deep_supervision=False)
        rel = f"models/fold_{fold}.pt"
        torch.save(net.state_dict(), root / rel)
        artifacts.append(Artifact(kind="torch", path=rel, precision="fp32", fold=fold, patch_size=list(patch)))
    meta = BundleMetadata(name=name, description="random-init test bundle (meaningless predictions)",
                          network=net_config, artifacts=artifacts, previous_stage=previous_stage,
                          provenance=provenance(f"pancreas.testing.make_random_bundle(seed={seed})"))
    return Bundle.write(root, meta, plans, tiny_dataset_json())


def with_inference(bundle: Bundle, root: str | Path, **inference: Any) -> Bundle:
    """A copy of ``bundle`` at ``root`` whose ``metadata.inference`` also records ``inference`` (written as JSON, not
    validated, so that malformed values reach the code that reads them)."""
    import json
    import shutil

    root = Path(root)
    shutil.copytree(bundle.root, root)
    meta_file = root / METADATA
    meta = json.loads(meta_file.read_text())
    meta["inference"] = {**meta.get("inference", {}), **inference}
    meta_file.write_text(json.dumps(meta))
    return Bundle.load(root)


def cascade_plans(*, lowres_factor: float = 2.0, lowres_patch: tuple[int, int, int] = (16, 32, 32),
                  **kwargs: Any) -> dict[str, Any]:
    """:func:`tiny_plans` plus ``3d_lowres`` (``lowres_factor`` x the spacing) and ``3d_cascade_fullres``, linked
    by ``next_stage`` / ``previous_stage`` as nnU-Net's planner links them."""
    plans = tiny_plans(**kwargs)
    low = copy.deepcopy(plans["configurations"]["3d_fullres"])
    low.update(data_identifier="nnUNetPlansTiny_3d_lowres", patch_size=list(lowres_patch), next_stage="3d_cascade_fullres",
               spacing=[s * lowres_factor for s in low["spacing"]])
    plans["configurations"].update({"3d_lowres": low, "3d_cascade_fullres": {"inherits_from": "3d_fullres",
                                                                             "previous_stage": "3d_lowres"}})
    return plans


def make_random_cascade_bundle(root: str | Path, *, seed: int = 0, head: str = "mask", folds: int = 1,
                               plans: dict[str, Any] | None = None, name: str = "random-cascade") -> Bundle:
    """A random-init ``3d_cascade_fullres`` bundle with its ``3d_lowres`` stage nested in ``stages/3d_lowres``."""
    plans = plans if plans is not None else cascade_plans()
    rel = "stages/3d_lowres"
    make_random_bundle(Path(root) / rel, seed=seed + 100, head=head, folds=folds, plans=plans, name=f"{name}-3d_lowres",
                       configuration="3d_lowres")
    return make_random_bundle(root, seed=seed, head=head, folds=folds, plans=plans, name=name,
                              configuration="3d_cascade_fullres", previous_stage=rel)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bind to port 0 and read the port back)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None, grace_s: float = 15.0) -> int | None:
    """SIGTERM, wait up to ``grace_s`` s, then SIGKILL; only the process we started. Its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class ServerProcess:
    """A server subprocess on a known URL: ``start``, ``wait_ready``, ``stop`` (also a context manager).

    :meth:`serve` builds the ``python -m pancreas serve`` command on a free port; ``env`` replaces the
    environment (``None``: inherit), ``log`` receives stdout and stderr. Every ``/readyz`` status seen while
    waiting is kept in ``readyz_seen``.
    """

    def __init__(self, cmd: Sequence[str], url: str, *, env: Mapping[str, str] | None = None,
                 log: Path | None = None, cwd: Path | None = None, tmp_dir: Path | None = None) -> None:
        self.cmd, self.url, self.log = list(cmd), url, log
        self.tmp_dir = tmp_dir  # the server's request temp folder, where the caller set one (``running_server``)
        self._env = None if env is None else dict(env)
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.readyz_seen: list[int] = []

    @classmethod
    def serve(cls, bundle: str | Path | None = None, *, host: str = "127.0.0.1", args: Sequence[str] = (),
              **kwargs: Any) -> ServerProcess:
        """``python -m pancreas serve [--model BUNDLE] --host HOST --port <free> ARGS`` (not started yet)."""
        port = free_port(host)
        cmd = [sys.executable, "-m", "pancreas", "serve", "--host", host, "--port", str(port)]
        cmd += ["--model", str(bundle)] if bundle else []
        return cls([*cmd, *args], f"http://{host}:{port}", **kwargs)

    def start(self) -> ServerProcess:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
        try:
            self.process = subprocess.Popen(self.cmd, cwd=self._cwd, env=self._env, stdout=out,
                                            stderr=subprocess.STDOUT)
        finally:
            if self.log:
                out.close()
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def wait_ready(self, timeout_s: float = 120.0, path: str = "/readyz") -> float:
        """Poll ``path`` until it answers 200; seconds waited. Raises if the process exits or time runs out."""
        import httpx

        start = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() - start < timeout_s:
                if self.process is not None and self.process.poll() is not None:
                    raise PancreasError(f"the server ({' '.join(self.cmd[1:4])}) exited with code {self.process.returncode} before "
                                        f"{path} answered:\n{self.log_text()[-4000:]}")
                try:
                    status = client.get(path).status_code
                except httpx.TransportError:
                    status = None
                if status is not None:
                    self.readyz_seen.append(status)
                    if status == 200:
                        return time.monotonic() - start
                time.sleep(0.05)
        raise PancreasError(f"{self.url}{path} did not answer 200 within {timeout_s:.0f} s:\n"
                            f"{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; the exit code (None if never started)."""
        return stop_process(self.process, timeout)

    def client(self, **kwargs: Any) -> Any:
        """An ``httpx.Client`` on the server's URL (timeout 120 s unless given)."""
        import httpx

        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120.0), **kwargs)

    def __enter__(self) -> ServerProcess:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def clean_env(**settings: object) -> dict[str, str]:
    """This process's environment without ``PANCREAS_*`` variables, plus ``PANCREAS_<KEY>`` for ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANCREAS_")}
    env.update({f"PANCREAS_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextlib.contextmanager
def running_server(bundle: str | Path, workdir: Path, *, wait: bool = True, start_timeout_s: float = 120.0,
                   **settings: object) -> Iterator[ServerProcess]:
    """A real ``pancreas serve`` of ``bundle`` on a free port with ``PANCREAS_*`` ``settings`` (1 torch thread and
    warning logs unless given), its request temp folder ``workdir/tmp`` and log ``workdir/server.log``; ``wait``:
    until ready. Always stopped afterwards."""
    tmp_dir = workdir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env = clean_env(**{"num_threads": 1, "log_level": "warning", **settings, "tmp_dir": tmp_dir})
    server = ServerProcess.serve(bundle, env=env, log=workdir / "server.log", cwd=REPO_ROOT, tmp_dir=tmp_dir).start()
    try:
        if wait:
            server.wait_ready(start_timeout_s)
        yield server
    finally:
        server.stop()


# ---- CT volumes and uploads ---------------------------------------------------------------------------
def blob_ct(shape: tuple[int, int, int] = (24, 64, 64), spacing_xyz: tuple[float, float, float] = (1.2, 1.2, 2.5),
            seed: int = 0) -> Any:
    """A small synthetic abdominal CT (SimpleITK int16 HU, LPS, identity direction): body, organ, lesion, noise."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ct = np.full(shape, -1000.0)
    ct[(y / 0.9) ** 2 + (x / 0.95) ** 2 < 1] = 30.0  # body
    c = rng.uniform(-0.2, 0.2, 3)
    organ = ((z - c[0]) / 0.5) ** 2 + ((y - c[1]) / 0.25) ** 2 + ((x - c[2]) / 0.45) ** 2 < 1
    ct[organ] = 110.0
    ct[((z - c[0]) / 0.2) ** 2 + ((y - c[1]) / 0.12) ** 2 + ((x - c[2]) / 0.12) ** 2 < 1] = 40.0  # lesion
    ct += rng.normal(0, 12, shape)
    image = sitk.GetImageFromArray(np.round(ct).astype(np.int16))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((-40.0, 25.0, 100.0))
    return image


def nifti_bytes(image: Any, workdir: Path, name: str = "ct.nii.gz") -> bytes:
    """The bytes of ``image`` written by SimpleITK as ``workdir/name`` (gzip when the name ends in .gz)."""
    import SimpleITK as sitk

    path = Path(workdir) / name
    sitk.WriteImage(image, str(path), useCompression=name.endswith(".gz"))
    return path.read_bytes()


def decode_mask(b64_or_bytes: str | bytes, workdir: Path, name: str = "mask.nii.gz") -> Any:
    """A returned mask (base64 text or raw ``.nii.gz`` bytes) as a SimpleITK image; refuses a non-gzip payload."""
    import base64
    import gzip

    import SimpleITK as sitk

    data = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    if data[:2] != b"\x1f\x8b":
        raise ValueError("the mask is not a gzip stream")
    gzip.decompress(data)  # a complete stream
    path = Path(workdir) / name
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


def post_ct(client: Any, data: bytes, *, filename: str = "ct.nii.gz", field: str = "file", **kwargs: Any) -> Any:
    """``POST /v1/predict`` with ``data`` as the multipart ``field`` (an ``httpx`` client and response)."""
    return client.post("/v1/predict", files={field: (filename, data, "application/gzip")}, **kwargs)
