"""CSAIL's BatchNorm statistics (``model.bn_stats=csail``): a bias-corrected running average, momentum 0.001.

CSAIL's UperNet trains with ``SynchronizedBatchNorm2d`` (``lib/nn/modules/batchnorm.py``, Jiayuan Mao's
Synchronized-BatchNorm-PyTorch, in semantic-segmentation-pytorch and the mit-semseg 1.0.0 package).
On several GPUs — the papers' 8 — its training step (``_compute_mean_std``) differs from PyTorch's
BatchNorm in two ways that this module reproduces:

- the running statistics are a *bias-corrected* exponential average with momentum 0.001:
  ``t ← (1 − m)·t + batch_stat``, ``n ← (1 − m)·n + 1``, ``running = t / n`` (``t`` and ``n`` are the
  buffers ``_tmp_running_mean`` / ``_tmp_running_var`` / ``_running_iter``, under CSAIL's names, so
  a CSAIL checkpoint's bookkeeping loads as it is); the variance averaged is the unbiased one;
- the batch is normalised by ``1/√max(var, eps)`` with the biased variance, not ``1/√(var + eps)``.

PyTorch's own BatchNorm keeps ``running ← (1 − 0.1)·running + 0.1·batch_stat``. Evaluation is the same in
both (``F.batch_norm`` with the running statistics). Under DDP the sums are all-reduced over the
processes before the statistics are taken (CSAIL synchronises over its GPUs), so the module derives
from ``_NormBase`` rather than ``_BatchNorm``: Lightning's ``sync_batchnorm`` conversion, which
only replaces ``_BatchNorm`` modules, leaves it alone.

Converted from a built model's BatchNorms, the average starts from their current statistics with
weight 1 (CSAIL's own constructor starts ``t`` at 0 and 1 whatever the loaded statistics are; the
difference fades within ~1/m = 1000 iterations of a 100k-iteration schedule).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

BN_STATS = ("torch", "csail")
# CSAIL's SynchronizedBatchNorm2d default (lib/nn/modules/batchnorm.py, _SynchronizedBatchNorm.__init__).
CSAIL_MOMENTUM = 0.001


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduced(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the DDP processes (differentiably); ``x`` itself when there is one process."""
    if _distributed():
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(x)
    return x


class CsailBatchNorm2d(_NormBase):
    """BatchNorm2d with CSAIL's SyncBN statistics (see the module docstring)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = CSAIL_MOMENTUM,
                 affine: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=True)
        self.register_buffer("_tmp_running_mean", torch.zeros(num_features))
        self.register_buffer("_tmp_running_var", torch.ones(num_features))
        self.register_buffer("_running_iter", torch.ones(1))

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected a 4D input (N, C, H, W), got {input.dim()}D")

    def restart_average(self) -> None:
        """Start the bias-corrected average from the current running statistics, with weight 1."""
        with torch.no_grad():
            self._running_iter.fill_(1.0)
            self._tmp_running_mean.copy_(self.running_mean)
            self._tmp_running_var.copy_(self.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        channels = x.shape[1]
        count = x.numel() // channels
        if count <= 1 and not _distributed():
            raise ValueError("BatchNorm needs more than one value per channel in training (CSAIL's SyncBN asserts it)")
        local_size = torch.tensor([count], dtype=x.dtype, device=x.device)
        # One all-reduce of [Σx, Σx², n] per layer, as CSAIL's master gathers sum, square sum and size.
        sums = _all_reduced(torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), local_size]))
        total, square_total, size = sums[:channels], sums[channels:2 * channels], sums[-1]
        mean = total / size
        sum_var = square_total - total * mean
        with torch.no_grad():
            keep = 1.0 - self.momentum
            self._tmp_running_mean.mul_(keep).add_(mean.detach())
            self._tmp_running_var.mul_(keep).add_(sum_var.detach() / (size - 1))
            self._running_iter.mul_(keep).add_(1.0)
            self.running_mean.copy_(self._tmp_running_mean / self._running_iter)
            self.running_var.copy_(self._tmp_running_var / self._running_iter)
            self.num_batches_tracked.add_(1)
        inv_std = (sum_var / size).clamp(min=self.eps) ** -0.5
        scale = inv_std * self.weight if self.affine else inv_std
        out = (x - mean[None, :, None, None]) * scale[None, :, None, None]
        return out + self.bias[None, :, None, None] if self.affine else out


def use_bn_stats(model: nn.Module, bn_stats: str) -> int:
    """Give every BatchNorm2d of ``model`` the ``bn_stats`` regime (in place); returns how many changed.

    ``torch`` changes nothing; ``csail`` replaces each ``nn.BatchNorm2d`` by a :class:`CsailBatchNorm2d`
    with the same parameters and statistics.
    """
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}")
    if bn_stats == "torch":
        return 0
    changed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.BatchNorm2d, nn.SyncBatchNorm):
                replacement = CsailBatchNorm2d(child.num_features, eps=child.eps, affine=child.affine)
                replacement.load_state_dict(child.state_dict(), strict=False)
                replacement.restart_average()
                replacement.to(device=child.running_mean.device, dtype=child.running_mean.dtype)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                changed += 1
    return changed


__all__ = ["BN_STATS", "CSAIL_MOMENTUM", "CsailBatchNorm2d", "use_bn_stats"]
