"""Pure-PyTorch CARAFE / CARAFE++ reassembly: differentiable, the ground truth for the kernels.

out[n,c,y,x] = Σ_{dy,dx∈[−r,r]} K[n, g·k² + (dy+r)·k + (dx+r), y, x] · X[n, c, src_y+dy, src_x+dx]

The sum runs over the k² taps one at a time. Each tap reads a *view* of the zero-padded
input (for upsampling broadcast over the s×s output pixels that share a source pixel, for
downsampling a strided slice) and a view of one kernel channel, and accumulates with
``addcmul``. Nothing k²-fold is materialised: the live memory is the padded input plus about
two output-sized tensors in the forward pass, and autograd saves only views (the padded input
and the kernels), not per-tap copies. It is still k² passes over the output, which is why the
compiled extension exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from carafe_exp.ops.geometry import output_size


def reassemble_reference(
    features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int, groups: int, down: bool
) -> torch.Tensor:
    """CARAFE (``down=False``) or CARAFE++ downsampling (``down=True``); arguments unchecked.

    Callers validate first (carafe_exp.ops.validation); see carafe_exp.ops.carafe for the
    meaning of the arguments.
    """
    batch, channels, height, width = features.shape
    radius = kernel_size // 2
    taps = kernel_size * kernel_size
    group_channels = channels // groups
    out_h, out_w = output_size(height, width, scale, down)

    padded = F.pad(features, (radius, radius, radius, radius))
    # (N, G, k², Ho, Wo): splitting a dimension is always a view, whatever the strides.
    tap_weights = kernels.unflatten(1, (groups, taps))
    out = None
    for tap in range(taps):
        dy, dx = divmod(tap, kernel_size)  # offsets shifted by +r: index into the padded map
        weight = tap_weights[:, :, tap].unsqueeze(2)  # (N, G, 1, Ho, Wo)
        if down:
            source = padded[:, :, dy : dy + scale * (out_h - 1) + 1 : scale, dx : dx + scale * (out_w - 1) + 1 : scale]
            source = source.unflatten(1, (groups, group_channels))  # (N, G, C/G, Ho, Wo)
        else:
            source = padded[:, :, dy : dy + height, dx : dx + width]
            # (N, G, C/G, H, 1, W, 1) against weights (N, G, 1, H, s, W, s): every output pixel
            # of an s×s block reads the same source pixel, by broadcasting instead of copying.
            source = source.unflatten(1, (groups, group_channels))[:, :, :, :, None, :, None]
            weight = weight.unflatten(3, (height, scale)).unflatten(5, (width, scale))
        out = weight * source if out is None else torch.addcmul(out, weight, source)
    assert out is not None  # taps >= 1
    return out.reshape(batch, channels, out_h, out_w)
