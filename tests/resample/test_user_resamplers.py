"""Resamplers from outside the package: ``module:Class``, entry points, their checks and one-line errors."""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.fpn import ResampledFPN
from carafe_exp.resample import build_downsampler, build_upsampler
from carafe_exp.resample.external import entry_point_names
from carafe_exp.resampler_options import command_line_choices, register_resampler_options

MODULE = '''
import torch.nn.functional as F
from torch import nn


class GoodUp(nn.Module):
    def __init__(self, channels, scale, mix=1.0):
        super().__init__()
        self.scale, self.mix = scale, mix
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") * self.mix


class GoodDown(nn.Module):
    def __init__(self, channels, scale):
        super().__init__()
        self.pool = nn.MaxPool2d(scale, ceil_mode=True)

    def forward(self, x):
        return self.pool(x)


class WrongShape(GoodUp):
    def forward(self, x):
        return x


class NoArguments(nn.Module):
    def __init__(self):
        super().__init__()


class Refuses(nn.Module):
    def __init__(self, channels, scale):
        super().__init__()
        raise RuntimeError("needs a GPU")


NOT_A_CLASS = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_resamplers_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_resamplers_mod"
    sys.modules.pop("user_resamplers_mod", None)


def test_import_path_builds_with_its_params(user_module: str) -> None:
    up = build_upsampler({"name": f"{user_module}:GoodUp", "mix": 2.0}, 4, 2)
    assert up.mix == 2.0 and up.registry_name == f"{user_module}:GoodUp"
    x = torch.ones(1, 4, 3, 5)
    assert torch.equal(up(x), torch.full((1, 4, 6, 10), 2.0))
    down = build_downsampler(f"{user_module}:GoodDown", 4, 2)
    assert down(torch.randn(1, 4, 5, 7)).shape == (1, 4, 3, 4)


@pytest.mark.parametrize(("name", "message"), [
    ("no_such_module_xyz:Up", "upsampler=no_such_module_xyz:Up: module 'no_such_module_xyz' does not import"),
    ("{m}:Missing", "upsampler={m}:Missing: module '{m}' has no attribute 'Missing'"),
    ("{m}:NOT_A_CLASS", "upsampler={m}:NOT_A_CLASS: {m}:NOT_A_CLASS is int 3, not an nn.Module class"),
    ("{m}:NoArguments", r"upsampler={m}:NoArguments at the site: NoArguments.__init__ must take \(channels, scale"),
    ("{m}:Refuses", r"upsampler={m}:Refuses at the site: Refuses\(channels=4, scale=2, \*\*{{}}\) failed: "
                    "RuntimeError: needs a GPU"),
    ("no_such_name", "unknown upsampler 'no_such_name'; available: .*; or name your own class as "
                     "upsampler.name=<module>:<Class>"),
])
def test_bad_classes_are_one_line_errors(user_module: str, name: str, message: str) -> None:
    name, message = name.format(m=user_module), message.format(m=user_module)
    with pytest.raises(ConfigError, match=message) as error:
        build_upsampler(name, 4, 2, site="the site")
    assert "\n" not in str(error.value)


def test_unknown_parameters_are_named(user_module: str) -> None:
    with pytest.raises(ConfigError, match=r"got unknown parameter\(s\) \['k_up'\]; it accepts \['mix'\]"):
        build_upsampler({"name": f"{user_module}:GoodUp", "k_up": 3}, 4, 2)


def test_wrong_output_shape_is_named_with_the_site_at_the_first_forward(user_module: str) -> None:
    fpn = ResampledFPN([4, 8], 4, upsampler=f"{user_module}:WrongShape")
    features = OrderedDict([("0", torch.randn(1, 4, 8, 8)), ("1", torch.randn(1, 8, 4, 4))])
    with pytest.raises(ConfigError, match=r"upsampler=.*:WrongShape at model.sites.fpn \(FPN top-down step P3→P2\): "
                                          r"input \(1, 4, 4, 4\) with scale 2 gave output \(1, 4, 4, 4\); an upsampler "
                                          r"must return \(N, C, s·H, s·W\) = \(1, 4, 8, 8\)"):
        fpn(features)


def test_shape_check_runs_once(user_module: str) -> None:
    up = build_upsampler(f"{user_module}:GoodUp", 4, 2)
    up(torch.randn(1, 4, 2, 2))
    assert not up._forward_hooks  # removed after the first forward: no cost per step


def test_entry_point_by_name(user_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "user_resamplers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: user-resamplers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[carafe_exp.upsamplers]\ngood_up = {user_module}:GoodUp\n"
                                           f"[carafe_exp.downsamplers]\ngood_down = {user_module}:GoodDown\n")
    assert "good_up" in entry_point_names("upsampler") and "good_down" in entry_point_names("downsampler")
    assert type(build_upsampler("good_up", 4, 2)).__name__ == "GoodUp"
    assert type(build_downsampler("good_down", 4, 2)).__name__ == "GoodDown"
    with pytest.raises(ConfigError, match="unknown upsampler 'goodup'; available: .*; installed: good_up"):
        build_upsampler("goodup", 4, 2)
    # The CLI stores a config-group option for each, so `upsampler=good_up` composes.
    stored = register_resampler_options(["upsampler=nearest,my.mod:Up", "downsampler=conv"])
    assert stored == {"upsampler": ["good_up", "my.mod:Up"], "downsampler": ["good_down"]}


def test_command_line_choices_expand_sweeps() -> None:
    choices = command_line_choices(["-m", "upsampler=nearest,carafe,pkg.mod:Up", "downsampler=pkg:Down",
                                    "upsampler.k_up=3", "hydra.verbose=true"])
    assert choices == {"upsampler": {"nearest", "carafe", "pkg.mod:Up"}, "downsampler": {"pkg:Down"}}


class _LocalGuided(nn.Module):
    requires_guide = True

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()


def test_a_users_guided_class_is_refused_where_there_is_no_guide() -> None:
    with pytest.raises(ConfigError, match=f"upsampler={__name__}:_LocalGuided needs a guide .* the decoder has none"):
        build_upsampler(f"{__name__}:_LocalGuided", 4, 2, site="the decoder")
    assert build_upsampler(f"{__name__}:_LocalGuided", 4, 2, guide_available=True).requires_guide
