"""Pure-PyTorch CARAFE / CARAFE++ reassembly: differentiable, the ground truth for the kernels.

out[n,c,y,x] = Σ_{dy,dx∈[−r,r]} K[n, g·k² + (dy+r)·k + (dx+r), y, x] · X[n, c, src_y+dy, src_x+dx]

The sum runs over the k² taps one at a time. For each tap only the output rectangle whose
neighbour lies inside the input is touched (that is the zero padding, without padding the
input), and the tap's contribution is accumulated in place with ``addcmul_`` from *views*:
for upsampling the input is broadcast over the s×s output pixels sharing a source pixel
(the output is viewed as (N, G, C/G, H, s, W, s)), for downsampling it is a strided slice.
Nothing k²-fold and no copy of the input is materialised: the live memory is the output plus
one tap's product, and autograd saves only views of the inputs. It is still k² passes over
the output, which is why the compiled extension exists.

float16 and bfloat16 accumulate in float32, as every backend does (DESIGN.md), forward and
backward: the inputs are converted once, the sums run in float32, and the result is rounded
once to the input dtype (autograd rounds the gradients once on the way back).
"""

from __future__ import annotations

import torch

from carafe_exp.ops.geometry import output_size


def _valid_range(offset: int, size: int, out_size: int, scale: int, down: bool) -> tuple[int, int]:
    """Range [lo, hi) of output (down) or source (up) positions whose neighbour at ``offset`` is inside."""
    if down:
        # Output y reads s·y + offset: 0 <= s·y + offset <= size - 1 (Python's // floors).
        lo, hi = max(0, -(offset // scale)), min(out_size, (size - 1 - offset) // scale + 1)
    else:
        # Source pixel i (shared by s outputs) reads i + offset: 0 <= i + offset <= size - 1.
        lo, hi = max(0, -offset), min(size, size - offset)
    return lo, max(lo, hi)


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
    dtype = torch.promote_types(features.dtype, kernels.dtype)
    accumulate = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    # (N, G, C/G, H, W) and (N, G, k², Ho, Wo): splitting a dimension is always a view (and .to a
    # no-op unless the dtype changes).
    source = features.to(accumulate).unflatten(1, (groups, group_channels))
    tap_weights = kernels.to(accumulate).unflatten(1, (groups, taps))
    if down:
        out = torch.zeros(batch, groups, group_channels, out_h, out_w, dtype=accumulate, device=features.device)
    else:
        out = torch.zeros(
            batch, groups, group_channels, height, scale, width, scale, dtype=accumulate, device=features.device
        )
    for tap in range(taps):
        dy, dx = tap // kernel_size - radius, tap % kernel_size - radius
        y0, y1 = _valid_range(dy, height, out_h, scale, down)
        x0, x1 = _valid_range(dx, width, out_w, scale, down)
        if y0 >= y1 or x0 >= x1:
            continue  # every neighbour of this tap is outside the map
        weight = tap_weights[:, :, tap].unsqueeze(2)  # (N, G, 1, Ho, Wo)
        if down:
            rows = slice(scale * y0 + dy, scale * (y1 - 1) + dy + 1, scale)
            cols = slice(scale * x0 + dx, scale * (x1 - 1) + dx + 1, scale)
            out[..., y0:y1, x0:x1].addcmul_(weight[..., y0:y1, x0:x1], source[..., rows, cols])
        else:
            # Weights as (N, G, 1, H, s, W, s) against the source (N, G, C/G, H, 1, W, 1): every
            # output pixel of an s×s block reads the same source pixel, by broadcasting.
            weight = weight.unflatten(3, (height, scale)).unflatten(5, (width, scale))
            neighbour = source[:, :, :, y0 + dy : y1 + dy, None, x0 + dx : x1 + dx, None]
            out[:, :, :, y0:y1, :, x0:x1, :].addcmul_(weight[:, :, :, y0:y1, :, x0:x1, :], neighbour)
    return out.reshape(batch, channels, out_h, out_w).to(dtype)
