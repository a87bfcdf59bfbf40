"""Same weights, same outputs: CSAIL's UperNet R-50 (mit-semseg 1.0.0) against ours through ``model.weights``.

The reference is built from its own code (``mit_semseg.models``: ``Resnet(resnet50(pretrained=False))``,
``ModelBuilder.build_decoder(arch='upernet')``) with random weights and randomised BatchNorm statistics,
saved as its ``train.py`` ``checkpoint`` saves an epoch (``encoder_epoch_N.pth`` / ``decoder_epoch_N.pth``,
each ``net.state_dict()``), loaded into ours by the user-facing ``model.weights`` import, and compared on the
same inputs: C2–C5, the logits, the class probabilities at the label size (``UPerNet.forward`` with
``use_softmax``: logits resized, then softmax), in eval mode and in train mode (batch statistics).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from reference_packages import import_reference
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.build import build_model
from carafe_exp.models.weight_import import load_model_weights
from carafe_exp.paths import config_dir
from carafe_exp.tasks.segmentation import SegmentationTask

NUM_CLASSES = 150
EPOCH = 20


def csail_reference(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """CSAIL's encoder and upernet decoder, random weights and BN statistics (float64)."""
    mit_models = import_reference("mit_semseg.models.models")
    resnet = import_reference("mit_semseg.models.resnet")
    torch.manual_seed(seed)
    encoder = mit_models.Resnet(resnet.resnet50(pretrained=False))
    decoder = mit_models.ModelBuilder.build_decoder(arch="upernet", fc_dim=2048, num_class=NUM_CLASSES)
    for module in [*encoder.modules(), *decoder.modules()]:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            # SyncBN's bookkeeping, consistent with the statistics as its update keeps it.
            module._running_iter.fill_(3.5)
            module._tmp_running_mean.copy_(module.running_mean * 3.5)
            module._tmp_running_var.copy_(module.running_var * 3.5)
            assert module._tmp_running_mean.shape == (channels,)
    return encoder.double(), decoder.double()


def save_like_csail(encoder: nn.Module, decoder: nn.Module, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(encoder.state_dict(), directory / f"encoder_epoch_{EPOCH}.pth")
    torch.save(decoder.state_dict(), directory / f"decoder_epoch_{EPOCH}.pth")
    return directory


def ours(weights: Path | str, **model_options) -> nn.Module:
    """Our UperNet as conf/model/upernet.yaml builds it (stem=deep), in float64, then ``model.weights``."""
    node = OmegaConf.load(config_dir() / "model" / "upernet.yaml")
    node.backbone.stem = "deep"
    for key, value in model_options.items():
        OmegaConf.update(node, key, value)
    model = build_model(node, upsampler="bilinear", downsampler="conv", num_classes=NUM_CLASSES).double()
    # What build_model does with model.weights, after the cast, so float64 tensors stay float64.
    load_model_weights(model, str(weights))
    return model


@pytest.fixture(scope="module")
def reference(module_tmp_path: Path) -> tuple[nn.Module, nn.Module, Path]:
    encoder, decoder = csail_reference()
    return encoder, decoder, save_like_csail(encoder, decoder, module_tmp_path / "ckpt")


@pytest.fixture(scope="module")
def loaded(reference) -> nn.Module:
    """Ours with the reference's checkpoint directory as model.weights (built once: R-50 is not free)."""
    return ours(reference[2])


def _reference_outputs(encoder: nn.Module, decoder: nn.Module, images: torch.Tensor,
                       label_size: tuple[int, int]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    captured: dict[str, torch.Tensor] = {}
    hook = decoder.conv_last.register_forward_hook(lambda module, args, output: captured.update(logits=output))
    try:
        features = encoder(images, return_feature_maps=True)
        decoder.use_softmax = True
        probabilities = decoder(features, segSize=label_size)
    finally:
        decoder.use_softmax = False
        hook.remove()
    return {"features": features, "logits": captured["logits"], "probabilities": probabilities}


def _task(model: nn.Module) -> SegmentationTask:
    return SegmentationTask(model, optimizer={"name": "sgd", "lr": 0.02}, schedule={"policy": "poly"})


@pytest.mark.parametrize("size", [(64, 96), (72, 100)])
def test_eval_mode_outputs_equal_csail(reference, loaded: nn.Module, size: tuple[int, int]) -> None:
    encoder, decoder, _ = reference
    model = loaded
    encoder.eval(), decoder.eval(), model.eval()
    torch.manual_seed(1)
    image = torch.randn(1, 3, *size, dtype=torch.float64)
    label_size = (size[0] + 7, size[1] - 5)  # the original image's size, not the network input's
    with torch.no_grad():
        expected = _reference_outputs(encoder, decoder, image, label_size)
        features = list(model.backbone(image).values())
        logits = model(image)["out"]
        probabilities = _task(model).predict_probabilities(image[0], label_size)
    assert len(features) == 4
    for ours_c, theirs_c in zip(features, expected["features"], strict=True):  # C2..C5
        torch.testing.assert_close(ours_c, theirs_c, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(probabilities, expected["probabilities"], rtol=1e-10, atol=1e-12)


def test_train_mode_outputs_equal_csail(reference, loaded: nn.Module) -> None:
    # Batch statistics: CSAIL's SyncBN on one device is F.batch_norm in training mode.
    encoder, decoder, _ = reference
    model = loaded
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in (encoder, decoder, model)]
    encoder.train(), decoder.train(), model.train()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    try:
        expected = _reference_outputs(encoder, decoder, images, (64, 64))
        features = list(model.backbone(images).values())
        logits = model(images)["out"]
    finally:  # the other tests see the checkpoint's statistics again
        for module, state in zip((encoder, decoder, model), saved):
            module.load_state_dict(state)
            module.eval()
    for ours_c, theirs_c in zip(features, expected["features"], strict=True):
        torch.testing.assert_close(ours_c, theirs_c, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-9, atol=1e-9)


def test_either_file_names_the_pair_and_a_lone_half_is_refused(reference, loaded: nn.Module, tmp_path: Path) -> None:
    _, decoder, directory = reference
    with torch.no_grad():
        loaded.decode_head.conv_last[1].weight.zero_()
        loaded.backbone.conv1.weight.zero_()
    for named in (f"decoder_epoch_{EPOCH}.pth", f"encoder_epoch_{EPOCH}.pth"):
        source = load_model_weights(loaded, directory / named)
        assert f"encoder_epoch_{EPOCH}.pth + decoder_epoch_{EPOCH}.pth" in source
    torch.testing.assert_close(loaded.decode_head.conv_last[1].weight, decoder.conv_last[1].weight)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / f"encoder_epoch_{EPOCH}.pth").symlink_to(directory / f"encoder_epoch_{EPOCH}.pth")
    with pytest.raises(ConfigError, match=r"partner .*decoder_epoch_20\.pth is missing"):
        load_model_weights(loaded, lone / f"encoder_epoch_{EPOCH}.pth")


def test_the_torchvision_stem_is_the_one_difference_and_names_the_switch(reference) -> None:
    # Our default backbone (torchvision's 7x7 stem) cannot hold CSAIL's encoder; the message names the key
    # whose reference value (deep) makes the outputs equal (the tests above).
    _, _, directory = reference
    with pytest.raises(ConfigError, match=r"model\.backbone\.stem=deep"):
        ours(directory, **{"backbone.stem": "torchvision"})


def test_syncbn_bookkeeping_loads_into_csail_bn_stats(reference) -> None:
    encoder, _, directory = reference
    model = ours(directory, bn_stats="csail")
    assert model.backbone.bn1._running_iter.item() == 3.5
    torch.testing.assert_close(model.backbone.layer1[0].bn1._tmp_running_mean, encoder.layer1[0].bn1._tmp_running_mean)
