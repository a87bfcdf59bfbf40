"""Guided upsamplers at model sites: the guide is the target level's lateral, guide-less sites refuse them.

Spec newer-upsamplers §7: each FPN top-down step calls ``up(x=merged level i+1, guide=lateral i
before the add)``; UperNet's FPN steps the same; the mask head, PPM, FUSE and the inpainting
decoder have no guide.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.fpn import ResampledFPN
from carafe_exp.models.global_local import UpsampleSite
from carafe_exp.models.upernet import UperNetHead


class RecordingGuidedUp(nn.Module):
    """A user's guided ×2 upsampler that records what it was called with (nearest + guide·0)."""

    requires_guide = True

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        assert guide is not None
        self.calls.append((x.detach().clone(), guide.detach().clone()))
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


USER_CLASS = f"{__name__}:RecordingGuidedUp"


def _features(channels: list[int], size: int) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((str(i), torch.randn(1, c, size // 2 ** i, size // 2 ** i)) for i, c in enumerate(channels))


def test_fpn_passes_each_target_lateral_before_the_add() -> None:
    torch.manual_seed(0)
    channels = [8, 16, 32, 64]
    fpn = ResampledFPN(channels, 8, upsampler=USER_CLASS, p6_in_top_down=True)
    feats = _features(channels, 64)
    fpn(feats)
    laterals = [fpn.get_result_from_inner_blocks(f, i) for i, f in enumerate(feats.values())]
    laterals.append(fpn.p6_lateral(feats["3"]))
    for i, up in enumerate(fpn.upsamplers):  # upsamplers[i] takes level i+1 to level i
        (x, guide), = up.calls
        torch.testing.assert_close(guide, laterals[i])
        assert x.shape[-2:] == laterals[i + 1].shape[-2:]
    # The coarsest step sees the un-merged P6 lateral; the others the merged map.
    torch.testing.assert_close(fpn.upsamplers[3].calls[0][0], laterals[4])


@pytest.mark.parametrize(("name", "channels"), [("fade", 8), ("sapa", 8), ("freqfusion", 8), ("indexnet", 8),
                                                ("a2u", 32)])  # A2U's GroupNorm(32) needs C % 32 == 0
def test_fpn_with_a_guided_upsampler_trains(name: str, channels: int) -> None:
    torch.manual_seed(0)
    fpn = ResampledFPN([8, 16, 32], channels, upsampler=name, p6_in_top_down=True)
    out = fpn(_features([8, 16, 32], 32))
    sum(level.sum() for level in out.values()).backward()
    assert all(p.grad is not None for up in fpn.upsamplers for p in up.parameters())


def test_guided_upsampler_refuses_sizes_that_are_not_exactly_double() -> None:
    fpn = ResampledFPN([8, 16], 8, upsampler="fade")
    with pytest.raises(ConfigError, match="fade: guide of shape .* pad the image"):
        fpn(OrderedDict([("0", torch.randn(1, 8, 15, 9)), ("1", torch.randn(1, 16, 8, 5))]))


def test_upernet_fpn_steps_get_their_laterals() -> None:
    torch.manual_seed(0)
    head = UperNetHead([8, 16, 32, 64], 3, channels=8, fpn_upsampler=USER_CLASS).eval()
    features = [torch.randn(1, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate([8, 16, 32, 64])]
    head(features)
    for i, up in enumerate(head.fpn_upsamplers):
        (_, guide), = up.calls
        torch.testing.assert_close(guide, head.fpn_in[i](features[i]))


@pytest.mark.parametrize(("build", "site"), [
    (lambda up: UperNetHead([8, 16], 3, channels=8, ppm_upsampler=up), "model.sites.ppm"),
    (lambda up: UperNetHead([8, 16], 3, channels=8, fuse_upsampler=up), "model.sites.fuse"),
    (lambda up: UpsampleSite(8, 8, up, "carafe"), "the inpainting generator's decoder"),
])
def test_guide_less_sites_refuse_guided_upsamplers(build, site: str) -> None:
    for name in ("sapa", USER_CLASS):
        with pytest.raises(ConfigError, match=f"needs a guide .*{site}"):
            build(name)
