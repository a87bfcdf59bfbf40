"""The PatchGAN discriminator of the inpainting task: one patch discriminator on the completed image.

The CARAFE supplementary material replaces Global&Local's global + local discriminators with
"one PatchGAN-style discriminator on the inpainted region" (citing Li & Wand) and gives no
architecture, so two well-known ones are offered:

- ``nlayer`` (default): pix2pix's ``NLayerDiscriminator`` (Isola et al. 2017, junyanz/
  pytorch-CycleGAN-and-pix2pix ``models/networks.py``): 4×4 convs 64-128-256 at stride 2 and 512 at
  stride 1, BatchNorm except on the first, LeakyReLU 0.2, then a 4×4 conv to one logit per
  patch (70×70 receptive field with 3 layers). Input: the completed image.
- ``sn_patchgan``: DeepFill v2's SN-PatchGAN (Yu et al. 2019; mmagic ``base_deepfillv2.py``
  / ``MultiLayerDiscriminator``): six 5×5 stride-2 convs 64-128-256-256-256-256 with spectral norm
  and LeakyReLU 0.2 (also after the last, as mmagic). Input: the completed image and the mask.

``forward(image, hole) -> (N, C, h, w)`` patch scores (C = 1 for ``nlayer``, 256 for
``sn_patchgan``); the task weights them by the hole.
"""

from __future__ import annotations

import torch
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.generation_init import init_generation_normal

KINDS = ("nlayer", "sn_patchgan")


class PatchDiscriminator(nn.Module):
    """A fully convolutional discriminator: image (and hole mask) → one score per patch."""

    def __init__(self, layers: nn.Sequential, with_mask: bool) -> None:
        super().__init__()
        self.layers = layers
        self.with_mask = with_mask
        self.min_size = next(size for size in range(1, 4096) if self._output_size(size) >= 1)

    def _output_size(self, size: int) -> int:
        for module in self.layers.modules():
            if isinstance(module, nn.Conv2d):
                size = (size + 2 * module.padding[0] - module.kernel_size[0]) // module.stride[0] + 1
        return size

    def forward(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        if min(image.shape[-2:]) < self.min_size:
            raise ConfigError(f"the discriminator needs images of at least {self.min_size}x{self.min_size} pixels, "
                              f"got {image.shape[-2]}x{image.shape[-1]}: raise data.image_size or lower "
                              f"task.module.discriminator.num_layers")
        x = torch.cat([image, hole.to(image.dtype)], dim=1) if self.with_mask else image
        return self.layers(x)


def _nlayer(in_channels: int, base_channels: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
                               nn.LeakyReLU(0.2, inplace=True)]
    channels = base_channels
    for n in range(1, num_layers + 1):
        out = base_channels * min(2 ** n, 8)
        stride = 2 if n < num_layers else 1
        layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                   nn.LeakyReLU(0.2, inplace=True)]
        channels = out
    layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
    sequential = nn.Sequential(*layers)
    sequential.apply(init_generation_normal)
    return sequential


def _sn_patchgan(in_channels: int, base_channels: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for n in range(num_layers):
        out = base_channels * min(2 ** n, 4)
        layers += [nn.utils.parametrizations.spectral_norm(nn.Conv2d(channels, out, 5, stride=2, padding=2)),
                   nn.LeakyReLU(0.2, inplace=True)]
        channels = out
    # As DeepFill v2, the last convolution's activations (256 per patch) are the scores.
    return nn.Sequential(*layers)


def build_patch_discriminator(kind: str = "nlayer", base_channels: int = 64, num_layers: int | None = None,
                              with_mask: bool | None = None) -> PatchDiscriminator:
    """Make the discriminator ``kind`` (see module docstring).

    ``num_layers``: strided layers after the first for ``nlayer`` (pix2pix default 3), convolutions
    for ``sn_patchgan`` (6). ``with_mask``: feed the hole mask as a fourth channel (default: no for
    ``nlayer``, yes for ``sn_patchgan``, as their references do).
    """
    if kind not in KINDS:
        raise ConfigError(f"task.module.discriminator.kind must be one of {list(KINDS)}, got {kind!r}")
    if int(base_channels) < 1:
        raise ConfigError(f"task.module.discriminator.base_channels must be >= 1, got {base_channels}")
    if num_layers is not None and int(num_layers) < (0 if kind == "nlayer" else 1):
        raise ConfigError(f"task.module.discriminator.num_layers must be >= {0 if kind == 'nlayer' else 1} for "
                          f"{kind}, got {num_layers}")
    if kind == "nlayer":
        with_mask = False if with_mask is None else bool(with_mask)
        layers = _nlayer(3 + int(with_mask), int(base_channels), 3 if num_layers is None else int(num_layers))
    else:
        with_mask = True if with_mask is None else bool(with_mask)
        layers = _sn_patchgan(3 + int(with_mask), int(base_channels), 6 if num_layers is None else int(num_layers))
    return PatchDiscriminator(layers, with_mask)
