"""``model.backbone.stem=deep``: CSAIL's ResNet (mit-semseg 1.0.0 ``models/resnet.py``) inside our UperNet.

CSAIL's stem is three 3×3 convolutions 3→64 (stride 2)→64→128 with BN and ReLU, then the max-pool; layer1
takes 128 channels. Its ImageNet file (``resnet<depth>-imagenet.pth``, the network's full state dict) must
load as ``model.backbone.weights``, and the CARAFE++ backbone site must still fit (its stem max-pool
downsampler sees 128 channels).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference_packages import import_reference
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.resnet import build_resnet
from carafe_exp.models.upernet import build_upernet

CARAFE_DOWN = {"name": "carafe", "k_down": 5, "k_encoder": 3, "c_m": 16, "normalizer": "softmax", "groups": 1}


def test_deep_stem_resnet_has_csails_tensors() -> None:
    resnet = import_reference("mit_semseg.models.resnet")
    theirs = {k: tuple(v.shape) for k, v in resnet.resnet50().state_dict().items()
              if not k.endswith(("_tmp_running_mean", "_tmp_running_var", "_running_iter"))}
    ours = {k: tuple(v.shape) for k, v in build_resnet(50, stem="deep").state_dict().items()}
    assert ours == theirs


def test_csails_imagenet_file_loads_as_backbone_weights(tmp_path: Path) -> None:
    resnet = import_reference("mit_semseg.models.resnet")
    torch.manual_seed(0)
    imagenet = resnet.resnet18()  # CSAIL's ImageNet ResNets are this network's state dict (SyncBN buffers included)
    torch.save(imagenet.state_dict(), tmp_path / "resnet18-imagenet.pth")
    model = build_upernet(4, backbone={"depth": 18, "stem": "deep", "weights": str(tmp_path / "resnet18-imagenet.pth")},
                          channels=16)
    body = model.backbone
    torch.testing.assert_close(body.conv3.weight, imagenet.conv3.weight)
    torch.testing.assert_close(body.layer1[0].downsample[0].weight, imagenet.layer1[0].downsample[0].weight)
    torch.testing.assert_close(body.bn3.running_var, imagenet.bn3.running_var)
    with pytest.raises(ConfigError, match="stem=deep"):
        build_upernet(4, backbone={"depth": 18, "stem": "deep", "weights": "IMAGENET1K_V1"}, channels=16)
    with pytest.raises(ConfigError, match="model.backbone.stem"):
        build_upernet(4, backbone={"depth": 18, "stem": "csail"}, channels=16)


def test_backbone_site_fits_the_deep_stem() -> None:
    torch.manual_seed(0)
    model = build_upernet(4, upsampler="bilinear", downsampler=CARAFE_DOWN, sites={"backbone": True},
                          backbone={"depth": 18, "stem": "deep"}, channels=16)
    assert "backbone.maxpool" in model.sites["backbone"]
    out = model(torch.randn(2, 3, 64, 96))["out"]
    assert out.shape == (2, 4, 16, 24)
    # The stem's output (128 channels) enters the max-pool's downsampler.
    assert isinstance(model.backbone.maxpool, nn.Module) and model.backbone.conv3.out_channels == 128
