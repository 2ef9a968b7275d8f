"""Children inherit a trained parent's weights (``space.inherit``)."""

from __future__ import annotations

import optuna
import pytest
import torch
import torch.nn.functional as F

from space import ArchSpec, BlockSpec, StageSpec, StemSpec, build, get_reference
from space.inherit import DIAGONAL, FRESH, INHERITED, KERNEL, SLICED, inherit
from space.sampler import sample


def _spec(widths, mids, depths, kernel, se=0, conv="dense", stem=16) -> ArchSpec:  # type: ignore[no-untyped-def]
    stages = []
    for s, (w, m, d) in enumerate(zip(widths, mids, depths)):
        groups = 2 if conv == "grouped" else 1
        stages.append(
            StageSpec(
                tuple(
                    BlockSpec(w, m, kernel_size=kernel, stride=2 if (b == 0 and s > 0) else 1, conv=conv,
                              groups=groups, se_channels=se)
                    for b in range(d)
                )
            )
        )  # fmt: skip
    return ArchSpec(stem=StemSpec(stem), stages=tuple(stages))


PARENT = _spec((32, 48, 64, 96), (16, 16, 32, 32), (2, 2, 2, 2), 5)
CHILD = _spec((16, 24, 32, 48), (8, 8, 16, 16), (1, 1, 1, 1), 3, se=8)  # halved, 3x3, one block, SE


def _shake(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights and batch-norm statistics, as training would leave them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.normal_(1.0, 0.2, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
    return model.eval()


def test_a_child_equal_to_the_parent_inherits_everything_and_computes_the_same() -> None:
    torch.manual_seed(0)
    parent = _shake(build(get_reference("ct-l")))
    child, report = inherit(parent, get_reference("ct-l"))
    assert set(report.tensors.values()) == {INHERITED} and report.share == 1.0
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(child.eval()(x), parent(x))


def test_a_smaller_child_builds_runs_and_its_share_is_the_hand_count() -> None:
    torch.manual_seed(0)
    parent = _shake(build(PARENT))
    child, report = inherit(parent, CHILD)
    assert child(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    # every tensor maps except the SE layers the parent lacks; hand count of their parameters:
    # per block two 1x1 convs with bias between the mid channels and 8 hidden ones
    se = sum(m * 8 + 8 + 8 * m + m for m in (8, 8, 16, 16))
    total = sum(p.numel() for p in child.parameters())
    assert report.params_total == total and report.params_inherited == total - se
    assert report.share == pytest.approx((total - se) / total)
    kinds = report.counts()
    assert kinds[FRESH] == 4 * 4  # weight and bias of fc1 and fc2 in each of the 4 SE layers
    assert report.tensors["stages.1.0.conv2.weight"] == KERNEL  # 5x5 cropped to its 3x3 centre
    assert report.tensors["stages.1.0.conv1.weight"] == SLICED
    # the cropped kernel is the centre of the parent's, on the chosen channels
    p2, c2 = parent.state_dict()["stages.0.0.conv2.weight"], child.state_dict()["stages.0.0.conv2.weight"]
    assert any(torch.equal(c2[0, 0], p2[i, j, 1:4, 1:4]) for i in range(16) for j in range(16))


def test_grouped_and_depthwise_children_take_the_diagonal_blocks() -> None:
    torch.manual_seed(0)
    parent = _shake(build(PARENT))
    for conv in ("grouped", "depthwise"):
        child, report = inherit(parent, _spec((32, 48, 64, 96), (16, 16, 32, 32), (2, 2, 2, 2), 5, conv=conv))
        assert report.tensors["stages.0.0.conv2.weight"] == DIAGONAL
        p, c = parent.state_dict()["stages.0.0.conv2.weight"], child.state_dict()["stages.0.0.conv2.weight"]
        if conv == "depthwise":  # all mid channels kept: channel c reads only itself
            assert all(torch.equal(c[i, 0], p[i, i]) for i in range(16))
        else:  # 2 groups of 8: output i of group g reads inputs 8g..8g+7
            assert all(torch.equal(c[i, j], p[i, 8 * (i // 8) + j]) for i in range(16) for j in range(8))


def test_a_larger_kernel_is_the_parents_zero_padded_and_a_deeper_child_starts_fresh() -> None:
    torch.manual_seed(0)
    parent = _shake(build(_spec((32, 48, 64, 96), (16, 16, 32, 32), (1, 1, 1, 1), 3)))
    child, report = inherit(parent, _spec((32, 48, 64, 96), (16, 16, 32, 32), (2, 1, 1, 1), 5))
    p, c = parent.state_dict()["stages.0.0.conv2.weight"], child.state_dict()["stages.0.0.conv2.weight"]
    assert torch.equal(c[:, :, 1:4, 1:4], p) and float(c[:, :, 0].abs().sum()) == 0.0
    assert all(report.tensors[k] == FRESH for k in report.tensors if k.startswith("stages.0.1."))


def test_every_sampled_spec_of_the_default_space_inherits_from_ct_l() -> None:
    torch.manual_seed(0)
    parent = _shake(build(get_reference("ct-l")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    x = torch.randn(1, 3, 32, 32)
    for _ in range(300):
        trial = study.ask()
        spec = sample(trial)
        study.tell(trial, 0.0)
        child, report = inherit(parent, spec)
        assert 0.2 < report.share <= 1.0
        assert torch.isfinite(child.eval()(x)).all()


def _bright(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g) * 2
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.3 + torch.where(y[:, None, None, None] == 2, 0.5, 0.1)
    return x.repeat(1, 3, 1, 1), y


def test_after_inheritance_without_training_the_child_classifies_what_the_parent_solved() -> None:
    """Parents trained on a toy set (dark vs bright slices); their halved, 3x3, one-block children
    are only re-normalised (batch-norm statistics recomputed on unlabelled training images, no
    gradient) and scored on held-out images. Measured over parent seeds 0-7: 0.57-1.0, mean 0.82;
    a child freshly initialised and re-normalised the same way scores about chance."""
    from evaluators.training import recalibrate_batch_norm

    torch.set_num_threads(1)
    xtr, ytr = _bright(512, 1)
    xte, yte = _bright(256, 2)
    inherited, fresh = [], []
    for seed in range(8):
        torch.manual_seed(seed)
        parent = build(PARENT, 3)
        opt = torch.optim.SGD(parent.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for _ in range(10):
            parent.train()
            perm = torch.randperm(512)
            for i in range(0, 512, 32):
                idx = perm[i : i + 32]
                loss = F.cross_entropy(parent(xtr[idx]), ytr[idx], label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            assert (parent.eval()(xte).argmax(1) == yte).float().mean() > 0.95  # the parent solved it
            child, _ = inherit(parent, CHILD)
            new = build(CHILD, 3)
            for model, out in ((child, inherited), (new, fresh)):
                recalibrate_batch_norm(model, xtr.split(64))
                out.append(float((model.eval()(xte).argmax(1) == yte).float().mean()))
    assert sum(inherited) / 8 >= 0.7, inherited
    assert sum(inherited) / 8 - sum(fresh) / 8 >= 0.2, (inherited, fresh)
