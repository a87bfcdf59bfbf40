"""Weight initialisations shared by the learned resamplers (mmcv's ``xavier_init`` / ``normal_init``).

mmdetection's ``FPN_CARAFE`` initialises every upsampler conv with Xavier-uniform weights and
zero bias, and CARAFE's content encoder with N(0, 0.001); the baselines of CARAFE Table 2 were
trained that way, so the zoo uses the same rules.
"""

from __future__ import annotations

from torch import nn

ConvModule = nn.Conv2d | nn.ConvTranspose2d


def xavier_uniform_init(module: ConvModule, gain: float = 1.0) -> None:
    """Xavier-uniform weights and zero bias, as mmcv's ``xavier_init(m, distribution='uniform')``."""
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def normal_init(module: ConvModule, std: float) -> None:
    """N(0, std) weights and zero bias, as mmcv's ``normal_init``."""
    nn.init.normal_(module.weight, mean=0.0, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def zero_init(module: ConvModule) -> None:
    """All-zero weights and bias: the branch starts as a no-op (offsets 0, logits constant)."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
