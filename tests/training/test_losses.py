"""Multi-task loss modules on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from pancreas.errors import PancreasError
from training.losses import (
    ClassificationLoss,
    FocalCELoss,
    LossWeighting,
    MultiTaskLoss,
    balanced_class_weights,
    lesion_presence_weight,
)


def test_classification_loss_matches_cross_entropy_without_options() -> None:
    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 1, 0])
    ours = ClassificationLoss()(logits, labels)
    assert torch.allclose(ours, torch.nn.functional.cross_entropy(logits, labels))


def test_class_and_sample_weights() -> None:
    logits = torch.zeros(2, 3)
    logits[0, 0] = 5.0  # sample 0 right, sample 1 wrong
    labels = torch.tensor([0, 1])
    unweighted = ClassificationLoss()(logits, labels)
    skip_wrong = ClassificationLoss()(logits, labels, torch.tensor([1.0, 0.0]))
    assert skip_wrong < unweighted
    upweight_wrong = ClassificationLoss(class_weights=[1.0, 10.0, 1.0])(logits, labels)
    assert upweight_wrong > unweighted


def test_focal_and_smoothing_change_the_loss() -> None:
    logits, labels = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]]), torch.tensor([0, 1])
    plain = ClassificationLoss()(logits, labels)
    assert ClassificationLoss(focal_gamma=2.0)(logits, labels) < plain  # easy examples down-weighted
    assert ClassificationLoss(label_smoothing=0.1)(logits, labels) != plain
    with pytest.raises(PancreasError):
        ClassificationLoss(label_smoothing=1.5)


def test_focal_ce_segmentation_gamma_zero_is_ce() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=torch.Generator().manual_seed(2)).float()
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    assert torch.allclose(FocalCELoss(gamma=0.0)(logits, target), ce, atol=1e-6)
    assert FocalCELoss(gamma=2.0)(logits, target) < ce


def test_fixed_and_learned_weighting() -> None:
    seg, cls = torch.tensor(1.0), torch.tensor(2.0)
    assert LossWeighting("fixed", 0.5)(seg, cls).item() == pytest.approx(2.0)
    learned = LossWeighting("learned", 0.5)
    assert learned.effective_lambda() == pytest.approx(0.5, rel=1e-4)
    total = learned(seg.requires_grad_(), cls)
    total.backward()
    assert learned.log_vars.grad is not None and learned.log_vars.grad.abs().sum() > 0
    assert not LossWeighting("fixed").log_vars.requires_grad
    with pytest.raises(PancreasError, match="unknown loss weighting"):
        LossWeighting("magic")


def test_multitask_loss_combines_parts() -> None:
    seg_loss = torch.nn.MSELoss()
    loss = MultiTaskLoss(seg_loss, ClassificationLoss(), LossWeighting("fixed", 2.0))
    seg_out, seg_t = torch.ones(2, 3), torch.zeros(2, 3)
    logits, labels = torch.zeros(2, 3), torch.tensor([0, 2])
    total, parts = loss(seg_out, seg_t, logits, labels)
    assert total.item() == pytest.approx(parts["seg"].item() + 2.0 * parts["cls"].item())


def test_balanced_weights_and_lesion_presence() -> None:
    w = balanced_class_weights([0, 0, 0, 1], 3)
    assert w[1] > w[0] and w[2] == pytest.approx(sum(w) / 3 * 3 - w[0] - w[1])
    target = torch.zeros(2, 1, 2, 2, 2)
    target[0, 0, 0, 0, 0] = 2
    assert lesion_presence_weight(target, 2, 0.25).tolist() == [1.0, 0.25]
