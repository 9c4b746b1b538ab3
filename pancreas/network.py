"""The multi-task network: nnU-Net's encoder/decoder from the plans plus a classification head.

``build_network(plans, NetworkConfig)`` builds the U-Net nnU-Net would build for the configuration
(``PlainConvUNet`` or ``ResidualEncoderUNet``; ``NetworkConfig.arch_kwargs_override`` applied on top of the
plans' ``arch_kwargs``), takes its encoder and decoder, and adds the head selected by
``NetworkConfig.head.variant`` (see :mod:`pancreas.heads`)::

    seg, cls_logits = net(x)      # x [B,1,D,H,W]; seg [B,3,D,H,W] (a list, highest resolution first,
                                  # with deep supervision); cls_logits [B,3]
                                  # (a 2d configuration: x [B,1,H,W], seg [B,3,H,W])

The module exposes ``encoder`` and ``decoder`` with nnU-Net's names, so nnU-Net's trainer hooks
(``set_deep_supervision_enabled``: ``network.decoder.deep_supervision``) work unchanged, and
:class:`SegmentationView` presents a segmentation-only network with the same state-dict keys for
``nnUNetPredictor.manual_initialization``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from pancreas.bundle import NetworkConfig
from pancreas.errors import PancreasError
from pancreas.heads import build_head

#: nonlin kwargs forced on every built network (torch-pruning needs out-of-place activations).
_FORCED_NONLIN_KWARGS = {"inplace": False}


class MultiTaskUNet(nn.Module):
    """Shared nnU-Net encoder → (nnU-Net decoder, classification head)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, config: NetworkConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.config = config

    @property
    def deep_supervision(self) -> bool:
        return bool(self.decoder.deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.decoder.deep_supervision = enabled

    def forward(self, x: Tensor) -> tuple[Tensor | list[Tensor], Tensor]:
        skips = self.encoder(x)
        seg = self.decoder(skips)
        full = seg[0] if isinstance(seg, (list, tuple)) else seg  # structural, fixed per instance
        return seg, self.head(skips, full)


class SegmentationView(nn.Module):
    """Segmentation-only view of a :class:`MultiTaskUNet` (for ``nnUNetPredictor``).

    ``forward`` returns only the segmentation; ``state_dict``/``load_state_dict`` use the wrapped
    network's keys (so a ``MultiTaskUNet`` state dict loads as is) and ``decoder`` is the wrapped
    network's decoder (nnU-Net toggles ``decoder.deep_supervision``).
    """

    def __init__(self, net: MultiTaskUNet) -> None:
        super().__init__()
        self.net = net

    @property
    def decoder(self) -> nn.Module:
        return self.net.decoder

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        return self.net(x)[0]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)


def architecture_kwargs(plans: dict[str, Any], config: NetworkConfig) -> tuple[str, dict[str, Any], list[str]]:
    """(class name, arch kwargs with overrides, kwargs requiring import) for ``config.configuration``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configurations = plans.get("configurations", {})
    if config.configuration not in configurations:
        raise PancreasError(f"plans have no configuration {config.configuration!r}; "
                            f"available: {sorted(configurations)}")
    cm = PlansManager(copy.deepcopy(plans)).get_configuration(config.configuration)
    kwargs = copy.deepcopy(dict(cm.network_arch_init_kwargs))
    kwargs.update(copy.deepcopy(config.arch_kwargs_override))
    kwargs["nonlin_kwargs"] = {**(kwargs.get("nonlin_kwargs") or {}), **_FORCED_NONLIN_KWARGS}
    return cm.network_arch_class_name, kwargs, list(cm.network_arch_init_kwargs_req_import)


def build_unet(plans: dict[str, Any], config: NetworkConfig, *, deep_supervision: bool = False) -> nn.Module:
    """The plain nnU-Net U-Net for the configuration (He-initialized, as nnU-Net does)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    cls_name, kwargs, req_import = architecture_kwargs(plans, config)
    unet = get_network_from_plans(cls_name, kwargs, req_import, config.input_channels, config.num_seg_classes,
                                  allow_init=True, deep_supervision=deep_supervision)
    if not hasattr(unet, "encoder") or not hasattr(unet, "decoder"):
        raise PancreasError(f"architecture {cls_name} has no encoder/decoder; use PlainConvUNet or "
                            "ResidualEncoderUNet plans")
    return unet


def build_network(plans: dict[str, Any], config: NetworkConfig, *, deep_supervision: bool = False) -> MultiTaskUNet:
    """Build the multi-task network for ``config.configuration`` of ``plans``."""
    unet = build_unet(plans, config, deep_supervision=deep_supervision)
    encoder = unet.encoder
    h = config.head
    head = build_head(h.variant, list(encoder.output_channels), [list(s) for s in encoder.strides],
                      config.num_cls_classes, hidden=h.hidden, dropout=h.dropout, stages=h.stages,
                      num_queries=h.num_queries)
    return MultiTaskUNet(encoder, unet.decoder, head, config)


def load_network(plans: dict[str, Any], config: NetworkConfig, state_dict: dict[str, Tensor],
                 *, deep_supervision: bool = False) -> MultiTaskUNet:
    """Build the network and load weights strictly (eval mode)."""
    net = build_network(plans, config, deep_supervision=deep_supervision)
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def example_input(plans: dict[str, Any], config: NetworkConfig, batch: int = 1) -> Tensor:
    """A zero tensor of the configuration's patch size ([B, C, *patch])."""
    patch = plans["configurations"][config.configuration].get("patch_size")
    if patch is None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        patch = PlansManager(copy.deepcopy(plans)).get_configuration(config.configuration).patch_size
    return torch.zeros(batch, config.input_channels, *patch)
