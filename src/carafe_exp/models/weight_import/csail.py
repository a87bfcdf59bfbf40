"""CSAIL's UperNet checkpoints as ``model.weights``: ``encoder_epoch_N.pth`` + ``decoder_epoch_N.pth``.

CSAIL's semantic-segmentation-pytorch (``train.py`` ``checkpoint``; the released models such as
``ade20k-resnet50-upernet``) saves the encoder and the decoder of an epoch as two state dicts.
``model.weights`` takes the directory holding them (the highest epoch present with both files)
or either file (its partner is taken from the same directory). They fit ``model=upernet`` with
``model.backbone.stem=deep`` (CSAIL's ResNet, :mod:`carafe_exp.models.deep_stem`) and UperNet's
own operators at the sites (``upsampler=bilinear``, ``model.channels=512``, no auxiliary head).

Names: the encoder's (``conv1`` … ``layer4``, CSAIL's ``Resnet``) go under ``backbone.`` as they are;
the decoder's ``ppm_conv`` → ``decode_head.ppm.convs``, ``ppm_last_conv`` → ``decode_head.ppm.bottleneck``,
``fpn_in``, ``fpn_out.{i}.0.{k}`` → ``decode_head.fpn_out.{i}.{k}``, ``conv_last`` under ``decode_head.``.
The bookkeeping of CSAIL's SynchronizedBatchNorm2d (``_tmp_running_mean``, ``_tmp_running_var``,
``_running_iter``) is loaded into a model with ``model.bn_stats=csail``, which keeps the same
buffers, and knowingly left out otherwise (PyTorch's BatchNorm has no use for it).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.weight_import.checkpoint_file import read_checkpoint, tensors_of
from carafe_exp.models.weight_import.converted import ConvertedWeights

log = logging.getLogger(__name__)

DESCRIPTION = "CSAIL UperNet encoder_epoch_N.pth + decoder_epoch_N.pth (a directory or either file)"
PRIORITY = 50
_FILE = re.compile(r"^(encoder|decoder)_epoch_(\d+)\.pth$")
SYNC_BN_BUFFERS = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")
# CSAIL decoder name prefix → ours (the rest of the name is unchanged, except fpn_out's extra level).
_DECODER_PREFIXES = (("ppm_conv.", "decode_head.ppm.convs."), ("ppm_last_conv.", "decode_head.ppm.bottleneck."),
                     ("fpn_in.", "decode_head.fpn_in."), ("conv_last.", "decode_head.conv_last."))
_FPN_OUT = re.compile(r"^fpn_out\.(\d+)\.0\.(.+)$")


def _epochs(directory: Path) -> dict[int, dict[str, Path]]:
    found: dict[int, dict[str, Path]] = {}
    for path in directory.iterdir():
        match = _FILE.match(path.name)
        if match and path.is_file():
            found.setdefault(int(match.group(2)), {})[match.group(1)] = path
    return found


def checkpoint_pair(source: Path) -> tuple[Path, Path]:
    """The (encoder, decoder) files that ``source`` names; a missing partner is a ConfigError."""
    if source.is_dir():
        complete = {epoch: files for epoch, files in _epochs(source).items() if len(files) == 2}
        if not complete:
            raise ConfigError(f"{source} holds no encoder_epoch_N.pth with its decoder_epoch_N.pth")
        epoch = max(complete)
        if len(complete) > 1:
            log.info("%s: CSAIL checkpoints of epochs %s; loading epoch %d", source, sorted(complete), epoch)
        return complete[epoch]["encoder"], complete[epoch]["decoder"]
    match = _FILE.match(source.name)
    assert match is not None
    epoch = match.group(2)
    encoder, decoder = (source.with_name(f"{part}_epoch_{epoch}.pth") for part in ("encoder", "decoder"))
    for part in (encoder, decoder):
        if not part.is_file():
            raise ConfigError(f"{source} is half of a CSAIL UperNet checkpoint: its partner {part} is missing")
    return encoder, decoder


def recognise(source: Path) -> bool:
    if source.is_dir():
        return any(len(files) == 2 for files in _epochs(source).values())
    return _FILE.match(source.name) is not None and tensors_of(read_checkpoint(source)) is not None


def _decoder_name(name: str) -> str | None:
    match = _FPN_OUT.match(name)
    if match:
        return f"decode_head.fpn_out.{match.group(1)}.{match.group(2)}"
    for theirs, ours in _DECODER_PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = tensors_of(read_checkpoint(path))
    if tensors is None:
        raise ConfigError(f"{path} is not a state dict (CSAIL saves net.state_dict() per file)")
    return tensors


def convert(source: Path, model: nn.Module) -> ConvertedWeights:
    encoder_file, decoder_file = checkpoint_pair(source)
    head = getattr(model, "decode_head", None)
    if head is None or not hasattr(head, "ppm"):
        raise ConfigError(f"{source} is a CSAIL UperNet checkpoint: it fits model=upernet, not {type(model).__name__}")
    if not hasattr(model.backbone, "conv2"):
        raise ConfigError(f"{source}: CSAIL's encoder is its deep-stem ResNet; set model.backbone.stem=deep")
    ours = model.state_dict()
    keeps_sync_bn = any(name.endswith(SYNC_BN_BUFFERS) for name in ours)
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    dropped = 0
    for part, path in (("encoder", encoder_file), ("decoder", decoder_file)):
        for name, tensor in _tensors(path).items():
            if name.endswith(SYNC_BN_BUFFERS) and not keeps_sync_bn:
                dropped += 1
                continue
            target = f"backbone.{name}" if part == "encoder" else _decoder_name(name)
            if target is None:
                unknown.append(f"{path.name}:{name}")
                continue
            converted[target] = tensor
    if unknown:
        listed = ", ".join(unknown[:6]) + (f" (+{len(unknown) - 6} more)" if len(unknown) > 6 else "")
        raise ConfigError(f"{decoder_file} is not CSAIL's upernet decoder: {len(unknown)} tensors of no known "
                          f"place: {listed}")
    ignored = {}
    if dropped:
        ignored[f"{dropped} SynchronizedBatchNorm2d buffers ({', '.join(SYNC_BN_BUFFERS)})"] = \
            "CSAIL's running-average bookkeeping; model.bn_stats=torch does not keep it (csail does)"
    source_text = f"a CSAIL UperNet checkpoint ({encoder_file.name} + {decoder_file.name} in {encoder_file.parent})"
    return ConvertedWeights(converted, source_text, ignored)
