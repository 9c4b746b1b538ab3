"""Multi-task network and heads on tiny tensors: shapes, gradients, state dicts, views, export."""

from __future__ import annotations

import io

import pytest
import torch

from pancreas.bundle import HeadConfig, NetworkConfig
from pancreas.errors import PancreasError
from pancreas.heads import HEADS
from pancreas.network import SegmentationView, build_network, load_network

VARIANTS = sorted(HEADS)


def _config(variant: str, **head: object) -> NetworkConfig:
    return NetworkConfig(head=HeadConfig(variant=variant, hidden=16, **head))


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("plans_name", ["tiny_plans", "tiny_res_plans"])
def test_output_shapes(variant: str, plans_name: str, request: pytest.FixtureRequest) -> None:
    plans = request.getfixturevalue(plans_name)
    net = build_network(plans, _config(variant)).eval()
    seg, cls = net(_x())
    assert seg.shape == (2, 3, 8, 16, 16)
    assert cls.shape == (2, 3)
    net_ds = build_network(plans, _config(variant), deep_supervision=True).eval()
    seg_ds, cls_ds = net_ds(_x())
    assert isinstance(seg_ds, list) and seg_ds[0].shape == (2, 3, 8, 16, 16)
    assert [s.shape[2:] for s in seg_ds[1:]] == [(8, 8, 8), (4, 4, 4)]
    assert cls_ds.shape == (2, 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_classification_loss_reaches_encoder(variant: str, tiny_plans: dict) -> None:
    net = build_network(tiny_plans, _config(variant), deep_supervision=True).train()
    _, cls = net(_x())
    torch.nn.functional.cross_entropy(cls, torch.tensor([0, 2])).backward()
    first_conv = next(p for n, p in net.encoder.named_parameters() if n.endswith("weight") and p.ndim == 5)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.head.parameters())


def test_inplace_nonlin_disabled(tiny_plans: dict) -> None:
    net = build_network(tiny_plans, _config("gap"))
    acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and not any(m.inplace for m in acts)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trip(variant: str, tiny_plans: dict) -> None:
    torch.manual_seed(1)
    net = build_network(tiny_plans, _config(variant)).eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(2)
    other = load_network(tiny_plans, _config(variant), torch.load(buf, weights_only=True))
    with torch.no_grad():
        a, b = net(_x()), other(_x())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_segmentation_view_for_predictor(tiny_plans: dict) -> None:
    net = build_network(tiny_plans, _config("mask"), deep_supervision=True).eval()
    view = SegmentationView(net)
    view.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    with torch.no_grad():
        seg = view(_x())
    assert isinstance(seg, torch.Tensor) and seg.shape == (2, 3, 8, 16, 16)
    assert set(view.state_dict()) == set(net.state_dict())
    fresh = build_network(tiny_plans, _config("mask")).eval()
    SegmentationView(fresh).load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(_x())[0], seg)


def test_head_overrides_and_errors(tiny_plans: dict) -> None:
    net = build_network(tiny_plans, _config("multiscale", stages=[0, -1]))
    assert net.head.stages == [0, 3]
    with pytest.raises(PancreasError, match="unknown classification head"):
        build_network(tiny_plans, _config("nope"))
    with pytest.raises(PancreasError, match="out of range"):
        build_network(tiny_plans, _config("attention", stages=[7]))
    with pytest.raises(PancreasError, match="no configuration"):
        build_network(tiny_plans, NetworkConfig(configuration="2d"))
    wide = NetworkConfig(head=HeadConfig(variant="gap"), arch_kwargs_override={"features_per_stage": [2, 4, 8, 8]})
    assert build_network(tiny_plans, wide).encoder.output_channels == [2, 4, 8, 8]


def test_mask_head_handles_patch_without_lesion(tiny_plans: dict) -> None:
    """The mask head stays finite when the decoder predicts no lesion and no pancreas at all."""
    net = build_network(tiny_plans, _config("mask")).eval()
    skips = net.encoder(_x())
    empty = torch.zeros(2, 3, 8, 16, 16)
    empty[:, 0] = 50.0  # all background
    logits = net.head(skips, empty)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_export(variant: str, tiny_plans: dict, tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    net = build_network(tiny_plans, _config(variant)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (_x(1),), str(path), opset_version=17, input_names=["x"],
                      output_names=["seg", "cls"], dynamic_axes={"x": {0: "b"}}, dynamo=False)
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    seg, cls = sess.run(None, {"x": _x(2).numpy()})
    with torch.no_grad():
        ref_seg, ref_cls = net(_x(2))
    assert abs(seg - ref_seg.numpy()).max() < 1e-3 and abs(cls - ref_cls.numpy()).max() < 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_compile_full_graph(variant: str, tiny_plans: dict) -> None:
    net = build_network(tiny_plans, _config(variant)).eval()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        seg, cls = compiled(_x())
        ref_seg, ref_cls = net(_x())
    assert torch.allclose(seg, ref_seg, atol=1e-5) and torch.allclose(cls, ref_cls, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mask_head_pools_in_fp32_under_autocast(tiny_plans: dict, dtype: torch.dtype) -> None:
    """The voxel x feature sums of the mask head run in float32 even under (CPU) autocast: in fp16 they
    overflow (large activations, every voxel weighted) and the subtype logits become NaN."""
    net = build_network(tiny_plans, _config("mask")).eval()
    pooled_dtypes: list[torch.dtype] = []
    net.head.norms[0].register_forward_pre_hook(lambda module, args: pooled_dtypes.append(args[0].dtype))
    with torch.no_grad():
        skips = [torch.full_like(s, 3e4).to(dtype) for s in net.encoder(_x())]
        seg = torch.zeros(2, 3, 8, 16, 16)
        seg[:, 1] = 50.0  # all pancreas: every voxel carries weight
        with torch.autocast("cpu", dtype=dtype):
            logits = net.head(skips, seg)
    assert pooled_dtypes == [torch.float32]
    assert torch.isfinite(logits).all()
