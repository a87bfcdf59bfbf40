"""An mmagic (mmediting) Global&Local checkpoint as ``model.weights`` of ``model=global_local``.

mmagic's runner saves ``{'meta', 'state_dict', ...}``; the state dict is the ``GLInpaintor``'s, so the
generator (``GLEncoderDecoder`` of ``configs/_base_/models/base_gl.py``) sits under ``generator.`` and
the global + local discriminators (``GLDiscs``) under ``disc.``. mmediting 0.x wrote the same names.
Layer correspondence (mmagic ``models/editors/global_local/gl_{encoder,dilation,decoder}.py``, each a
mmcv ``ConvModule`` with ``conv`` and ``bn``):

- ``encoder.enc1..enc6`` → ``encoder.0, 1.block, 2, 3.block, 4, 5`` (enc2 and enc4 are the stride-2
  convs, our :class:`~carafe_exp.models.global_local.StridedSite` blocks);
- ``dilation_neck.dilation_convs.0..3`` → ``dilation.0..3``;
- ``decoder.dec1..dec7`` → ``decoder.0..6``, the two transposed convs (dec3, dec5) → ``decoder.{2,4}.deconv``;
- ``bn`` → ``norm`` everywhere.

The discriminators are knowingly left out (the model being loaded is the generator; the papers
replace GL's two discriminators by one PatchGAN anyway). The file fits only the original network:
``model=global_local`` with its own deconvs (``upsampler=deconv``) and strided convs (no encoder site).
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

DESCRIPTION = "an mmagic / mmediting Global&Local checkpoint (model=global_local)"
PRIORITY = 30
_GENERATOR = "generator."
_MARKERS = ("generator.encoder.enc1.conv.weight", "generator.dilation_neck.dilation_convs.0.conv.weight",
            "generator.decoder.dec7.conv.weight")
# Our index of each mmagic layer (enc2 / enc4 are wrapped in a StridedSite, dec3 / dec5 are the deconvs).
_ENCODER = {1: "encoder.0", 2: "encoder.1.block", 3: "encoder.2", 4: "encoder.3.block", 5: "encoder.4",
            6: "encoder.5"}
_DECODER_DECONVS = {3: "decoder.2", 5: "decoder.4"}
_LAYER = re.compile(r"^(encoder\.enc(\d)|dilation_neck\.dilation_convs\.(\d)|decoder\.dec(\d))\.(conv|bn)\.(.+)$")
# mmagic's GL data pipeline: GetMaskedImage(zero_value=127.5) then (x - 127.5) / 127.5, so the hole
# reaches the network as 0; GLDecoder clamps its output to [-1, 1].
_TRAINED_HOLE_FILL = 0.0
_TRAINED_OUTPUT = "clip"


def _state_dict(source: Path) -> dict[str, torch.Tensor] | None:
    if source.is_dir():
        return None
    contents = read_checkpoint(source)
    if not isinstance(contents, dict) or "state_dict" not in contents:
        return None
    return tensors_of(contents["state_dict"])


def recognise(source: Path) -> bool:
    tensors = _state_dict(source)
    return tensors is not None and all(marker in tensors for marker in _MARKERS)


def our_name(mmagic_name: str) -> str | None:
    """Our parameter name for a key of mmagic's ``GLEncoderDecoder`` state dict (None: no counterpart)."""
    match = _LAYER.match(mmagic_name)
    if match is None:
        return None
    _, enc, dil, dec, part, rest = match.groups()
    if enc is not None:
        layer = _ENCODER.get(int(enc))
    elif dil is not None:
        layer = f"dilation.{int(dil)}" if int(dil) < 4 else None
    else:
        index = int(dec)
        layer = _DECODER_DECONVS.get(index, f"decoder.{index - 1}" if 1 <= index <= 7 else None)
    if layer is None:
        return None
    if part == "bn":
        return f"{layer}.norm.{rest}"
    deconv = dec is not None and int(dec) in _DECODER_DECONVS
    return f"{layer}.{'deconv' if deconv else 'conv'}.{rest}"


def _check_model(model: nn.Module) -> None:
    # Imported here: the format list is built for every model, the generator module only matters here.
    from carafe_exp.models.global_local import GlobalLocalGenerator, StridedSite, UpsampleSite

    fits = "model=global_local upsampler=deconv model.sites.encoder=false"
    if not isinstance(model, GlobalLocalGenerator):
        raise ConfigError(f"model.weights: {DESCRIPTION} holds a Global&Local generator; it loads into {fits}, "
                          f"not into {type(model).__name__}")
    if model.partial:
        raise ConfigError(f"model.weights: {DESCRIPTION} was trained with plain convolutions; it loads into {fits}, "
                          f"not into model=partial_conv")
    changed = [name for name, module in model.named_modules()
               if (isinstance(module, UpsampleSite) and not module.original)
               or (isinstance(module, StridedSite) and module.downsample is not None)]
    if changed:
        raise ConfigError(f"model.weights: {DESCRIPTION} has the original deconvs and strided convs; it loads into "
                          f"{fits}, but this model replaces {', '.join(changed)}")
    if model.hole_fill != _TRAINED_HOLE_FILL or model.output_activation != _TRAINED_OUTPUT:
        log.warning("model.weights: mmagic trained this generator with model.hole_fill=%s and "
                    "model.output_activation=%s; this model uses %s and %s, so its outputs differ from mmagic's",
                    _TRAINED_HOLE_FILL, _TRAINED_OUTPUT, model.hole_fill, model.output_activation)


def convert(source: Path, model: nn.Module) -> ConvertedWeights:
    _check_model(model)
    tensors = _state_dict(source) or {}
    ours: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    for key, tensor in tensors.items():
        if not key.startswith(_GENERATOR):
            continue
        name = our_name(key[len(_GENERATOR):])
        if name is None:
            unplaced.append(key)
        else:
            ours[name] = tensor
    # A generator tensor without a counterpart is not ours to drop: pass it on under its own name so
    # the strict load lists it as left over.
    ours.update({key: tensors[key] for key in unplaced})
    others = sorted({key.split(".", 1)[0] for key in tensors if not key.startswith(_GENERATOR)})
    ignored = {f"{group}.*": ("Global&Local's global and local discriminators, not part of the generator"
                              if group == "disc" else "not part of the Global&Local generator") for group in others}
    return ConvertedWeights(ours, f"an mmagic Global&Local checkpoint ({source})", ignored)
