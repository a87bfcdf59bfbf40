"""The image-generation init of pix2pix and mmagic, shared by the inpainting generator and its discriminator.

pix2pix's ``init_weights('normal', 0.02)`` and mmagic's ``generation_init_weights(init_type='normal',
init_gain=0.02)`` are the same rule: convolutions (plain and transposed) draw N(0, 0.02) with zero
bias, BatchNorm scales draw N(1, 0.02) with zero shift. Other modules keep their own init.
"""

from __future__ import annotations

from torch import nn


def init_generation_normal(module: nn.Module) -> None:
    """Initialise ``module`` in place if it is a conv, transposed conv or BatchNorm (use with ``Module.apply``)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
