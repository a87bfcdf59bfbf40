"""``model.bn_stats=csail`` keeps CSAIL's SynchronizedBatchNorm2d statistics (mit-semseg 1.0.0
``lib/nn/modules/batchnorm.py``, ``_SynchronizedBatchNorm._compute_mean_std``, the multi-GPU path the papers
trained on): bias-corrected running average at momentum 0.001, normalisation by 1/√max(var, eps).

The reference's own ``_compute_mean_std`` gives the statistics and updates its buffers; its ``forward``
applies them as ``(x − mean)·(inv_std·γ) + β`` (the three lines of its parallel branch).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from reference_packages import import_reference
from torch import nn

from carafe_exp.models.build import build_model
from carafe_exp.models.csail_batchnorm import CSAIL_MOMENTUM, CsailBatchNorm2d, use_bn_stats
from carafe_exp.paths import config_dir


def _pair(channels: int = 6) -> tuple[nn.Module, CsailBatchNorm2d]:
    batchnorm = import_reference("mit_semseg.lib.nn.modules.batchnorm")
    torch.manual_seed(0)
    theirs = batchnorm.SynchronizedBatchNorm2d(channels).double()
    theirs.weight.data.uniform_(0.5, 1.5)
    theirs.bias.data.normal_()
    ours = CsailBatchNorm2d(channels).double()
    ours.load_state_dict(theirs.state_dict())  # the same buffer names: a CSAIL state dict loads as it is
    return theirs, ours


def test_running_average_and_normalisation_follow_csail_syncbn() -> None:
    theirs, ours = _pair()
    assert theirs.momentum == CSAIL_MOMENTUM == ours.momentum
    ours.train()
    for step in range(3):
        x = torch.randn(2, 6, 5, 7, dtype=torch.float64) * (step + 1) + step
        flat = x.transpose(0, 1).reshape(6, -1)
        mean, inv_std = theirs._compute_mean_std(flat.sum(1), (flat ** 2).sum(1), flat.shape[1])
        expected = (x - mean[None, :, None, None]) * (inv_std * theirs.weight)[None, :, None, None] \
            + theirs.bias[None, :, None, None]
        torch.testing.assert_close(ours(x), expected, rtol=1e-12, atol=1e-12)
        for name in ("running_mean", "running_var", "_tmp_running_mean", "_tmp_running_var", "_running_iter"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-12, atol=1e-12)
    # PyTorch's own BatchNorm (the torch regime) ends elsewhere: the difference is real.
    torch_bn = nn.BatchNorm2d(6).double().train()
    torch_bn(x)
    assert not torch.allclose(torch_bn.running_mean, ours.running_mean)


def test_eval_mode_is_plain_batchnorm_with_the_running_statistics() -> None:
    theirs, ours = _pair()
    theirs.running_mean.normal_(), theirs.running_var.uniform_(0.5, 2.0)
    ours.load_state_dict(theirs.state_dict())
    theirs.eval(), ours.eval()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_bn_stats_csail_converts_every_batchnorm_and_keeps_the_loaded_statistics() -> None:
    node = OmegaConf.load(config_dir() / "model" / "upernet.yaml")
    node.backbone.depth, node.channels, node.bn_stats = 18, 16, "csail"
    model = build_model(node, upsampler="bilinear", downsampler="conv", num_classes=3)
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)}
    assert kinds == {CsailBatchNorm2d}
    # Converting keeps a trained model's statistics: the average starts from them with weight 1.
    plain = nn.Sequential(nn.BatchNorm2d(4))
    plain[0].running_mean.fill_(2.0)
    assert use_bn_stats(plain, "csail") == 1
    assert plain[0].running_mean.tolist() == [2.0] * 4 and plain[0]._tmp_running_mean.tolist() == [2.0] * 4
    with pytest.raises(ValueError, match="bn_stats"):
        use_bn_stats(plain, "sync")


def test_segmentation_setting_uses_csail_statistics() -> None:
    # The paper's setting trains with CSAIL's SyncBN (CARAFE supplement §1: CSAIL's code).
    setting = OmegaConf.load(config_dir() / "setting" / "csail_upernet.yaml")
    assert setting.model.bn_stats == "csail"
    assert OmegaConf.load(config_dir() / "model" / "upernet.yaml").bn_stats == "torch"
