"""conf/upsampler and conf/downsampler: one YAML per registry key, defaults identical to the code's."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from carafe_exp.resample import DOWNSAMPLERS, UPSAMPLERS, build_downsampler, build_upsampler

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = {"upsampler": (UPSAMPLERS, build_upsampler), "downsampler": (DOWNSAMPLERS, build_downsampler)}
CASES = [(group, name) for group, (registry, _) in GROUPS.items() for name in sorted(registry)]


def test_every_option_is_a_registry_key_and_every_key_has_an_option() -> None:
    for group, (registry, _) in GROUPS.items():
        options = {path.stem for path in (CONF / group).glob("*.yaml")}
        assert options == set(registry), group


@pytest.mark.parametrize(("group", "name"), CASES)
def test_yaml_defaults_equal_the_constructor_defaults(group: str, name: str) -> None:
    path = CONF / group / f"{name}.yaml"
    assert path.read_text().startswith("# "), f"{path} must open with a comment saying what the option is"
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg.pop("name") == name
    registry, build = GROUPS[group]
    signature = inspect.signature(registry[name].__init__)
    for key, value in cfg.items():
        assert key in signature.parameters, f"{path}: {key} is not a parameter of {registry[name].__name__}"
        assert signature.parameters[key].default == value, f"{path}: {key}={value!r} differs from the code"
    # 32 channels: A2U's GroupNorm(32) needs a multiple of 32.
    build({"name": name, **cfg}, 32, 2, **({"guide_available": True} if group == "upsampler" else {}))


@pytest.mark.parametrize(("group", "overrides"), [
    ("upsampler", ["k_up=7", "k_encoder=5", "c_m=null"]),
    ("upsampler", ["k_up=3", "k_encoder=1", "c_m=16", "normalizer=sigmoid_norm", "groups=2"]),
    ("downsampler", ["k_down=3", "c_m=8", "compressor_norm=false"]),
])
def test_sweep_style_overrides_build(group: str, overrides: list[str]) -> None:
    cfg = OmegaConf.merge(OmegaConf.load(CONF / group / "carafe.yaml"), OmegaConf.from_dotlist(overrides))
    registry, build = GROUPS[group]
    module = build(dict(cfg), 16, 2)
    kernel_key = "k_up" if group == "upsampler" else "k_down"
    assert module.kernel_size == cfg[kernel_key]


def test_hydra_composes_the_groups_and_their_sweep_keys(tmp_path: Path) -> None:
    # A primary config that uses only these two groups, so the check does not depend on the rest of conf/.
    from hydra import compose, initialize_config_dir

    (tmp_path / "primary.yaml").write_text(
        f"defaults:\n  - upsampler: nearest\n  - downsampler: conv\n  - _self_\n"
        f"hydra:\n  searchpath:\n    - file://{CONF}\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose(config_name="primary", overrides=[
            "upsampler=carafe", "upsampler.k_up=7", "upsampler.k_encoder=5", "upsampler.c_m=16",
            "downsampler=carafe", "downsampler.k_down=3",
        ])
    upsampler = build_upsampler(dict(cfg.upsampler), 32, 2)
    downsampler = build_downsampler(dict(cfg.downsampler), 32, 2)
    assert (upsampler.kernel_size, upsampler.kernel_predictor.encoder.kernel_size) == (7, (5, 5))
    assert upsampler.kernel_predictor.encoder.in_channels == 16
    assert downsampler.kernel_size == 3
