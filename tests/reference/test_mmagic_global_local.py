"""Same weights, same outputs: mmagic's Global&Local generator and ``model=global_local`` (issue #18).

mmagic 1.2.0's ``GLEncoderDecoder`` is built as ``configs/_base_/models/base_gl.py`` builds it (SyncBN
everywhere, with its ``GLDiscs``), given random weights and BatchNorm statistics, saved as mmengine's
``Runner.save_checkpoint`` saves the ``GLInpaintor`` (``{'meta', 'state_dict'}``, ``generator.*`` and
``disc.*``), loaded through ``model.weights`` (the user-facing import) and run on the same masked image.
``import mmagic.models`` needs diffusers and more: only the Global&Local editor modules and the
``archs`` they use are imported, each package registered with its real path, under mmagic's own
``DefaultScope`` (reference-equivalence.md, "Installing the references").
"""

from __future__ import annotations

import copy
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.build import build_model
from reference_packages import import_reference

REPO = Path(__file__).resolve().parents[2]
SIZES = [(64, 64), (48, 80)]
_ARCHS = ("conv", "gated_conv_module", "linear_module", "multi_layer_disc")
_EDITOR = ("gl_encoder", "gl_dilation", "gl_decoder", "gl_encoder_decoder", "gl_disc")
# configs/_base_/models/base_gl.py, model.encdec and model.disc
ENCDEC = dict(type="GLEncoderDecoder", encoder=dict(type="GLEncoder", norm_cfg=dict(type="SyncBN")),
              decoder=dict(type="GLDecoder", norm_cfg=dict(type="SyncBN")),
              dilation_neck=dict(type="GLDilationNeck", norm_cfg=dict(type="SyncBN")))
DISC = dict(type="GLDiscs",
            global_disc_cfg=dict(in_channels=3, max_channels=512, fc_in_channels=512 * 4 * 4, fc_out_channels=1024,
                                 num_convs=6, norm_cfg=dict(type="SyncBN")),
            local_disc_cfg=dict(in_channels=3, max_channels=512, fc_in_channels=512 * 4 * 4, fc_out_channels=1024,
                                num_convs=5, norm_cfg=dict(type="SyncBN")))


def _mmagic_registry() -> Any:
    """mmagic's MODELS registry with the Global&Local modules registered, without ``mmagic.models``' imports."""
    mmagic = import_reference("mmagic")
    root = Path(mmagic.__file__).parent
    for name, sub in (("mmagic.models", "models"), ("mmagic.models.archs", "models/archs"),
                      ("mmagic.models.editors", "models/editors"),
                      ("mmagic.models.editors.global_local", "models/editors/global_local")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root / sub)]
            sys.modules[name] = package
    archs = sys.modules["mmagic.models.archs"]
    for module_name in _ARCHS:  # what the editors import from the package, in dependency order
        module = importlib.import_module(f"mmagic.models.archs.{module_name}")
        for attr in ("SimpleGatedConvModule", "LinearModule", "MultiLayerDiscriminator"):
            if hasattr(module, attr):
                setattr(archs, attr, getattr(module, attr))
    for module_name in _EDITOR:
        importlib.import_module(f"mmagic.models.editors.global_local.{module_name}")
    return importlib.import_module("mmagic.registry").MODELS


class _Inpaintor(nn.Module):
    """The attribute names of mmagic's ``GLInpaintor`` (``OneStageInpaintor``): what its checkpoint keys start with."""

    def __init__(self, generator: nn.Module, disc: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.disc = disc


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith(("running_mean", "bn.bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("bn.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:  # conv weights and biases: keep activations O(1) through 17 layers
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)


@pytest.fixture(scope="module")
def mmagic_checkpoint(module_tmp_path: Path) -> tuple[nn.Module, Path]:
    """(mmagic's generator in float64, the checkpoint file mmagic would write for it)."""
    models = _mmagic_registry()
    from mmengine.registry import DefaultScope
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    with DefaultScope.overwrite_default_scope("mmagic"):
        inpaintor = _Inpaintor(models.build(ENCDEC), models.build(DISC))
    _randomise(inpaintor, torch.Generator().manual_seed(0))
    file = module_tmp_path / "gl_places.pth"
    save_checkpoint({"meta": {"epoch": 1, "iter": 500002, "mmengine_version": "0.10"},
                     "state_dict": weights_to_cpu(inpaintor.state_dict())}, str(file))
    return inpaintor.generator.double().eval(), file


def _ours(weights: Path, upsampler: str = "deconv", **model: Any) -> nn.Module:
    node = OmegaConf.merge(OmegaConf.load(REPO / "conf/model/global_local.yaml"), {"weights": str(weights), **model})
    up = OmegaConf.load(REPO / f"conf/upsampler/{upsampler}.yaml")
    down = OmegaConf.load(REPO / "conf/downsampler/conv.yaml")
    return build_model(node, upsampler=up, downsampler=down)


def _inputs(size: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, *size, generator=generator, dtype=torch.float64) * 2 - 1
    hole = torch.zeros(2, 1, *size, dtype=torch.float64)
    hole[0, :, size[0] // 4: size[0] // 2, size[1] // 3: size[1] // 3 * 2] = 1
    hole[1, :, : size[0] // 3, : size[1] // 4] = 1  # a hole touching the border
    return image, hole


def _mmagic_forward(generator: nn.Module, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    # GLInpaintor: GetMaskedImage fills the hole with 127.5, which normalises to 0; the input is
    # cat([masked image, mask]) (gl_inpaintor.py train_step / OneStageInpaintor.forward_test).
    masked = image * (1.0 - hole)
    return generator(torch.cat([masked, hole], dim=1))


@pytest.mark.parametrize("size", SIZES)
def test_mmagic_checkpoint_gives_mmagic_outputs_in_eval_mode(mmagic_checkpoint: tuple[nn.Module, Path],
                                                             size: tuple[int, int]) -> None:
    reference, file = mmagic_checkpoint
    ours = _ours(file).double().eval()
    image, hole = _inputs(size, seed=size[1])
    with torch.no_grad():
        expected = _mmagic_forward(reference, image, hole)
        got = ours(image, hole)
    assert got.shape == expected.shape == image.shape
    # Outputs of O(1) after 17 layers; float64, so any difference beyond rounding is a real one.
    assert torch.allclose(got, expected, rtol=0, atol=1e-10), (got - expected).abs().max()
    completed = hole * got + (1 - hole) * image
    reference_completed = image * (1.0 - hole) + expected * hole  # GLInpaintor's fake_img
    assert torch.equal(completed, reference_completed)
    assert 0.05 < expected.abs().mean() < 1.0  # the network is not dead: the comparison means something


def test_mmagic_checkpoint_matches_in_train_mode_too(mmagic_checkpoint: tuple[nn.Module, Path]) -> None:
    """Batch statistics instead of running ones (SyncBN is BN in a single process)."""
    reference, file = mmagic_checkpoint
    ours = _ours(file).double().train()
    reference = copy.deepcopy(reference).train()
    image, hole = _inputs((48, 64), seed=3)
    with torch.no_grad():
        expected = _mmagic_forward(reference, image, hole)
        got = ours(image, hole)
    assert torch.allclose(got, expected, rtol=0, atol=1e-10), (got - expected).abs().max()


def test_every_generator_tensor_is_placed_and_the_discriminators_are_named(
        mmagic_checkpoint: tuple[nn.Module, Path], caplog: pytest.LogCaptureFixture) -> None:
    reference, file = mmagic_checkpoint
    with caplog.at_level("INFO"):
        ours = _ours(file)
    assert "disc.*" in caplog.text and "discriminators" in caplog.text
    # 18 conv layers (17 + the output conv's bias) and 17 BNs, every one of ours set from the file.
    theirs = {k: v for k, v in reference.state_dict().items()}
    assert len(ours.state_dict()) == len(theirs) == 98
    for value in ours.state_dict().values():
        assert any(value.shape == t.shape and torch.equal(value.double(), t) for t in theirs.values())


@pytest.mark.parametrize(("override", "named"), [
    ({"upsampler": "carafe"}, "replaces decoder.2"),
    ({"_target_": "carafe_exp.models.global_local.build_partial_conv"}, "not into model=partial_conv"),
])
def test_a_generator_it_does_not_fit_is_one_line_naming_the_fitting_model(
        mmagic_checkpoint: tuple[nn.Module, Path], override: dict[str, str], named: str) -> None:
    _, file = mmagic_checkpoint
    upsampler = override.pop("upsampler", "deconv")
    with pytest.raises(ConfigError) as error:
        _ours(file, upsampler=upsampler, **override)
    message = str(error.value)
    assert "\n" not in message and named in message and "model=global_local upsampler=deconv" in message


def test_another_fill_or_output_activation_is_a_warning(mmagic_checkpoint: tuple[nn.Module, Path],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    _, file = mmagic_checkpoint
    with caplog.at_level("WARNING"):
        _ours(file, output_activation="tanh")
    assert "output_activation=clip" in caplog.text


@pytest.mark.parametrize(("recipe", "config"), [("global_local", "base_gl.py"), ("deepfill_v2", "base_deepfillv2.py")])
def test_recipes_are_mmagic_configs_losses(recipe: str, config: str) -> None:
    """Each ``task.module.recipe`` has exactly its mmagic config's GAN loss, its weight and its L1 terms (issue #19 §3)."""
    from mmengine.config import Config

    from carafe_exp.tasks.inpainting_recipes import RECIPES

    mmagic = import_reference("mmagic")
    model = Config.fromfile(str(Path(mmagic.__file__).parent / ".mim/configs/_base_/models" / config)).model
    ours = RECIPES[recipe]
    assert (ours.adversarial_loss, ours.adversarial_weight) == (model.loss_gan.gan_type, model.loss_gan.loss_weight)
    assert ours.l1_hole_weight == model.loss_l1_hole.loss_weight
    assert ours.l1_valid_weight == (model.loss_l1_valid.loss_weight if "loss_l1_valid" in model else 0.0)
    if recipe == "deepfill_v2":  # its discriminator is ours: SN-PatchGAN on image + mask
        assert model.disc.with_spectral_norm and model.disc_input_with_mask and model.disc.num_convs == 6
        assert (ours.discriminator_kind, ours.discriminator_with_mask) == ("sn_patchgan", True)
    else:  # GL's two discriminators are what the papers replace by one PatchGAN (CARAFE supplement §1)
        assert model.disc.type == "GLDiscs" and ours.discriminator_kind == "nlayer"


def test_irregular_masks_have_mmagic_hole_areas(monkeypatch: pytest.MonkeyPatch) -> None:
    """``data.masks.mode=irregular`` against mmagic's own ``get_irregular_mask`` with the DeepFill v2 Places
    config's ``mask_config`` (deepfillv2_8xb2_places-256x256.py): the same mean hole area to 2 points."""
    import importlib.util

    import numpy as np

    from carafe_exp.data.masks import FreeFormMaskSettings, free_form_mask

    mmagic = import_reference("mmagic")
    # trans_utils.py still names numpy's removed alias np.bool8 at import time.
    monkeypatch.setattr(np, "bool8", np.bool_, raising=False)
    spec = importlib.util.spec_from_file_location("mmagic_trans_utils",
                                                  Path(mmagic.__file__).parent / "utils" / "trans_utils.py")
    assert spec is not None and spec.loader is not None
    trans_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trans_utils)
    np.random.seed(0)
    theirs = np.mean([trans_utils.get_irregular_mask((256, 256), area_ratio_range=(0.15, 0.65), num_vertices=(4, 10),
                                                     max_angle=6.0, length_range=(20, 128),
                                                     brush_width=(10, 45)).mean() for _ in range(300)])
    rng = np.random.default_rng(0)
    settings = FreeFormMaskSettings(mode="irregular")
    ours = np.mean([free_form_mask(256, 256, rng, settings).mean() for _ in range(300)])
    assert abs(ours - theirs) < 0.02, (ours, theirs)


@pytest.mark.slow  # a CLI run: ~20 s on an idle 2-core machine, more under load
def test_the_cli_evaluates_an_mmagic_checkpoint_as_mmagic_computes_it(
        mmagic_checkpoint: tuple[nn.Module, Path], cli_env: dict[str, str], tmp_path: Path) -> None:
    """README "Evaluate the released models": ``train=false model.weights=<mmagic file>`` scores mmagic's generator."""
    import json

    from helpers import run_cli

    from carafe_exp.data.places import PlacesDataModule
    from carafe_exp.metrics.inpainting import InpaintingMetrics

    reference, file = mmagic_checkpoint
    run_dir = tmp_path / "evaluated"
    run_cli(["task=inpainting", "train=false", f"model.weights={file}", "data.image_size=32", "data.batch_size=8",
             "logger=none", "callbacks=none", f"hydra.run.dir={run_dir}"], cli_env)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["config"]["data"]["masks"]["mode"] == "brush" and 0 < record["metrics"]["hole_area"] < 100
    data_config = {k: v for k, v in record["config"]["data"].items() if k not in ("_target_", "kind")}
    data = PlacesDataModule(**data_config)
    data.setup("test")
    metric = InpaintingMetrics()
    generator = copy.deepcopy(reference).float().eval()
    with torch.no_grad():
        for batch in data.test_dataloader():
            image, hole = batch["image"], batch["mask"]
            completed = hole * _mmagic_forward(generator, image, hole) + (1 - hole) * image
            metric.update((completed + 1) / 2, (image + 1) / 2, hole, batch["index"])
    expected = metric.compute()
    for name in ("L1", "PSNR", "PSNR_whole", "L1_signed", "PSNR_signed", "hole_area"):
        assert record["metrics"][name] == pytest.approx(float(expected[name]), rel=1e-4), name
