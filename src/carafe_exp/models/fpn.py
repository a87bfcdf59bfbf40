"""Feature Pyramid Network whose top-down ×2 upsampling is a swappable resampler (CARAFE §4.1).

``ResampledFPN`` subclasses torchvision's ``FeaturePyramidNetwork`` and replaces only the
top-down ``F.interpolate``: one upsampler module per top-down step (``upsamplers[i]`` takes
level i+1 to level i). ``inner_blocks``/``layer_blocks``/``extra_blocks`` keep torchvision's
names, so torchvision detection checkpoints load; with a parameter-free upsampler (nearest,
the original FPN) the state dict is exactly torchvision's.

Two structures (``FPN_STYLES``, config key ``model.fpn_style``):

- ``fpn_carafe`` — mmdetection's ``FPN_CARAFE`` with ``num_outs=5``, the FPN every detection
  number of the CARAFE papers comes from (for every upsampler, nearest included): the extra level
  P6 is a 3×3 stride-2 conv on C5 made *before* the top-down pass, and takes part in it (P6 is
  upsampled into P5 too: a 4th upsampler), then gets its own 3×3 output conv. Inputs are padded to
  a multiple of 64 so every ×2 step is exact. Lateral, output and P6 convs are Xavier-uniform with
  zero bias (``FPN_CARAFE.init_weights``);
- ``torchvision`` — torchvision's FPN: P6 is a stride-2 max-pool of P5 after the top-down pass,
  inputs padded to 32, convs Kaiming-uniform (a=1).

The output keeps torchvision's key ``"pool"`` for P6, so the RPN's anchor generator sees the same
five levels either way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from carafe_exp.errors import ConfigError
from carafe_exp.resample import build_upsampler
from carafe_exp.resample.guided import upsample_with_guide
from carafe_exp.resample.weight_init import xavier_uniform_init

FPN_STYLES = ("fpn_carafe", "torchvision")


def _match_size(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop (or, for an odd-sized lateral, zero-pad) ``x`` to ``size``.

    Inputs padded to the FPN's stride make every ×2 step exact; this only guards callers who
    feed unpadded images, where s·⌈H/2⌉ can exceed H by one (mmdetection's ``slice_as``).
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    x = x[..., :h, :w]
    pad_h, pad_w = h - x.shape[-2], w - x.shape[-1]
    if pad_h or pad_w:
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
    return x


class ResampledFPN(FeaturePyramidNetwork):
    """torchvision's FPN with the top-down ×2 upsampling done by ``build_upsampler(upsampler, C, 2)``.

    ``p6_in_top_down`` and ``xavier_init`` together make mmdetection's FPN_CARAFE
    (see :func:`fpn_of_style`).
    """

    def __init__(self, in_channels_list: list[int], out_channels: int,
                 upsampler: str | Mapping[str, Any] = "nearest", p6_in_top_down: bool = False,
                 extra_blocks: ExtraFPNBlock | None = None,
                 norm_layer: Callable[..., nn.Module] | None = None, xavier_init: bool = False) -> None:
        if p6_in_top_down and extra_blocks is not None:
            raise ValueError("ResampledFPN: p6_in_top_down makes P6 itself; do not also pass extra_blocks")
        if not p6_in_top_down and extra_blocks is None:
            extra_blocks = LastLevelMaxPool()
        super().__init__(in_channels_list, out_channels, extra_blocks=None if p6_in_top_down else extra_blocks,
                         norm_layer=norm_layer)
        self.p6_in_top_down = p6_in_top_down
        steps = len(in_channels_list) - 1 + (1 if p6_in_top_down else 0)
        # A guided upsampler (FADE, SAPA, FreqFusion) gets the target level's lateral as its guide.
        self.upsamplers = nn.ModuleList(
            build_upsampler(upsampler, out_channels, 2, guide_available=True,
                            site=f"model.sites.fpn (FPN top-down step P{i + 3}→P{i + 2})")
            for i in range(steps))
        if p6_in_top_down:
            # mmdetection FPN_CARAFE: extra lateral = 3x3 s2 conv on C5, extra output = 3x3 conv.
            self.p6_lateral = nn.Conv2d(in_channels_list[-1], out_channels, 3, stride=2, padding=1)
            self.p6_output = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            for conv in (self.p6_lateral, self.p6_output):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.constant_(conv.bias, 0)
        if xavier_init:
            # FPN_CARAFE.init_weights: every conv of the FPN itself (the upsamplers init their own).
            for conv in self.fpn_convs():
                xavier_uniform_init(conv)

    def fpn_convs(self) -> list[nn.Conv2d]:
        """The lateral, output and (with P6 in the top-down pass) P6 convolutions, not the upsamplers'."""
        blocks = [*self.inner_blocks, *self.layer_blocks]
        convs = [m for block in blocks for m in block.modules() if isinstance(m, nn.Conv2d)]
        if self.p6_in_top_down:
            convs += [self.p6_lateral, self.p6_output]
        return convs

    @property
    def size_divisor(self) -> int:
        """The multiple the input image must be padded to so that every ×2 step is exact."""
        return 64 if self.p6_in_top_down else 32

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(x.keys())
        feats = list(x.values())
        num_levels = len(feats)

        laterals = [self.get_result_from_inner_blocks(f, i) for i, f in enumerate(feats)]
        if self.p6_in_top_down:
            laterals.append(self.p6_lateral(feats[-1]))
        # Top-down: upsamplers[i] takes the running top-down map of level i+1 to level i; a guided
        # one also sees level i's lateral before the add (the official FPN wiring of FADE/SAPA).
        for i in range(len(laterals) - 2, -1, -1):
            up = upsample_with_guide(self.upsamplers[i], laterals[i + 1], laterals[i])
            laterals[i] = laterals[i] + _match_size(up, laterals[i].shape[-2:])

        results = [self.get_result_from_layer_blocks(laterals[i], i) for i in range(num_levels)]
        if self.p6_in_top_down:
            results.append(self.p6_output(laterals[-1]))
            names = names + ["pool"]
        elif self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))


def fpn_of_style(style: str, in_channels_list: list[int], out_channels: int,
                 upsampler: str | Mapping[str, Any] = "nearest") -> ResampledFPN:
    """The FPN of ``style`` (``fpn_carafe`` or ``torchvision``, see the module docstring) with ``upsampler``."""
    if style not in FPN_STYLES:
        raise ConfigError(f"model.fpn_style must be one of {list(FPN_STYLES)}, got {style!r}")
    carafe = style == "fpn_carafe"
    return ResampledFPN(in_channels_list, out_channels, upsampler=upsampler, p6_in_top_down=carafe, xavier_init=carafe)


__all__ = ["FPN_STYLES", "ResampledFPN", "fpn_of_style"]
