"""``carafe-exp-visualize``: what each CARAFE module of a trained network reassembles, drawn on an image.

    carafe-exp-visualize outputs/runs/<date>/<time> photo.jpg
    carafe-exp-visualize run/checkpoints/last.ckpt photo.jpg --points 120,80 300,210 --logger tensorboard

For chosen image locations (green), every CARAFE upsampler (the FPN's top-down steps) and
CARAFE++ downsampler (the backbone's sites) gets a panel showing its k×k reassembly kernel as
red cells over the input region it reads, as in CARAFE Fig. 1/5 and CARAFE++ Fig. 1/9. For the
FPN's chain of upsamplers a last panel shows the accumulated region: the P2 location's kernel
traced back through P3, P4, P5 (and P6). Detection (Faster / Mask R-CNN) and classification
(ResNet) runs are supported; the mask head's CARAFE works on RoIs, not on the image, and is
left out. The PNG goes to ``<run dir>/reassembly/`` (or ``--out``) and, with ``--logger``, to
that run's TensorBoard / W&B.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from carafe_exp.analysis.reassembly_kernels import CapturedKernels, accumulate, capture_kernels
from carafe_exp.errors import ConfigError, DataError, UserInputError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Modules that do not work on image-aligned maps (the mask head's CARAFE upsamples RoI features).
_NOT_IMAGE_ALIGNED = ("roi_heads",)


def locate_run(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(run dir, checkpoint)`` from a run directory or a checkpoint file inside one."""
    path = Path(path).expanduser()
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir, path
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return path, candidate
        found = sorted(path.glob("checkpoints/*.ckpt"))
        if found:
            return path, found[-1]
        raise ConfigError(f"{path} holds no checkpoint (checkpoints/last.ckpt); give a run directory of a run "
                          f"with checkpoints (callbacks=default) or a .ckpt file")
    raise ConfigError(f"{path} does not exist; give a run directory or a .ckpt file")


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config: metrics.json's ``config``, else Hydra's ``.hydra/config.yaml``."""
    import json

    from omegaconf import OmegaConf

    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            config = json.loads(metrics.read_text()).get("config")
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{metrics}: not readable ({error})") from None
        if config:
            return dict(config)
    hydra_config = run_dir / ".hydra" / "config.yaml"
    if hydra_config.is_file():
        cfg = OmegaConf.load(hydra_config)
        return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("task", "model", "upsampler",
                                                                                  "downsampler", "data")
                if key in cfg}
    raise ConfigError(f"{run_dir}: no metrics.json or .hydra/config.yaml to tell which model it trained")


def _num_classes(state: dict[str, torch.Tensor]) -> int | None:
    for key, tensor in state.items():
        if key.endswith("roi_heads.box_predictor.cls_score.weight"):
            return int(tensor.shape[0]) - 1  # torchvision counts the background class
    if "fc.weight" in state:
        return int(state["fc.weight"].shape[0])
    return None


def load_trained_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any], Path]:
    """The network of a run (built from its config, weights from its checkpoint), its config and run dir."""
    from carafe_exp.models.build import build_model

    run_dir, checkpoint = locate_run(path)
    config = run_config(run_dir)
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        raise ConfigError(f"{checkpoint}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{checkpoint}: holds no state dict")
    state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")} or state
    model_cfg = dict(config["model"])
    # The checkpoint holds every weight: do not read pretrained ImageNet weights again.
    model_cfg["backbone"] = {**dict(model_cfg.get("backbone") or {}), "weights": None}
    model_cfg["weights"] = None
    kwargs: dict[str, Any] = {}
    num_classes = _num_classes(state)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = build_model(model_cfg, upsampler=config.get("upsampler"), downsampler=config.get("downsampler"),
                        **kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{checkpoint} does not fit the model of {run_dir} ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[:3]})")
    return model.eval(), config, run_dir


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None


def run_network(model: nn.Module, image: Image.Image, size: int) -> tuple[list[CapturedKernels], float, int]:
    """Forward ``image`` through ``model``; the kernels, image→network scale, and the network input height."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if hasattr(model, "transform"):  # torchvision R-CNN: resizes and pads inside
        seen: dict[str, Any] = {}

        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            image_list = output[0]
            seen["padded"] = int(image_list.tensors.shape[-2])
            seen["resized"] = int(image_list.image_sizes[0][0])

        handle = model.transform.register_forward_hook(record)
        try:
            captured = capture_kernels(model, lambda: model([pixels]))
        finally:
            handle.remove()
        return captured, seen["resized"] / image.height, seen["padded"]
    scale = size / min(image.height, image.width)
    height, width = max(round(image.height * scale), 1), max(round(image.width * scale), 1)
    resized = torch.nn.functional.interpolate(pixels[None], size=(height, width), mode="bilinear",
                                              align_corners=False)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    batch = (resized - mean) / std
    return capture_kernels(model, lambda: model(batch)), height / image.height, height


def fpn_chain(captured: Sequence[CapturedKernels]) -> list[CapturedKernels]:
    """The longest run of upsamplers in one module list (the FPN's top-down steps), coarsest first."""
    groups: dict[str, list[CapturedKernels]] = {}
    for item in captured:
        if item.direction == "up":
            groups.setdefault(item.name.rsplit(".", 1)[0], []).append(item)
    return max(groups.values(), key=len, default=[])


def _output_location(item: CapturedKernels, point: tuple[float, float], scale: float, net_height: int
                     ) -> tuple[int, int]:
    stride = net_height / item.output_size[0]
    y = int(point[1] * scale // stride)
    x = int(point[0] * scale // stride)
    return min(max(y, 0), item.output_size[0] - 1), min(max(x, 0), item.output_size[1] - 1)


def _draw_region(axis: Any, region: dict[tuple[int, int], float], stride: float, scale: float, colour: str) -> None:
    from matplotlib.patches import Rectangle

    peak = max(region.values(), default=0.0) or 1.0
    cell = stride / scale
    for (sy, sx), weight in region.items():
        if weight <= 0:
            continue
        axis.add_patch(Rectangle((sx * cell, sy * cell), cell, cell, facecolor=colour, edgecolor="none",
                                 alpha=float(min(0.6, 0.6 * weight / peak))))


def draw(image: Image.Image, captured: Sequence[CapturedKernels], points: Sequence[tuple[float, float]],
         scale: float, net_height: int, out: Path) -> Path:
    """The PNG: one panel per module (kernel over its input), plus the FPN chain's accumulated region."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    chain = fpn_chain(captured)
    panels: list[tuple[str, list[tuple[dict[tuple[int, int], float], float]]]] = []
    for item in captured:
        stride = net_height / item.input_size[0]
        regions = [(item.region(*_output_location(item, p, scale, net_height)), stride) for p in points]
        kind = f"x{item.scale} up" if item.direction == "up" else f"÷{item.scale} down"
        panels.append((f"{item.name}\n{kind}, k={item.kernel_size}, input {item.input_size[0]}x"
                       f"{item.input_size[1]}", regions))
    if len(chain) > 1:
        regions = []
        for point in points:
            location = _output_location(chain[-1], point, scale, net_height)
            for module, region in zip(reversed(chain), accumulate(chain, *location)):
                regions.append((region, net_height / module.input_size[0]))
        panels.append((f"accumulated over the {len(chain)} top-down steps\n(finest to coarsest)", regions))
    ncols = min(3, max(len(panels), 1))
    nrows = max(math.ceil(len(panels) / ncols), 1)
    aspect = image.height / image.width
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.2 * aspect * nrows + 0.6), squeeze=False)
    for index, (title, regions) in enumerate(panels):
        axis = axes[index // ncols][index % ncols]
        axis.imshow(np.asarray(image))
        for region, stride in regions:
            _draw_region(axis, region, stride, scale, "red")
        for x, y in points:
            axis.plot(x, y, "o", markersize=7, markerfacecolor="none", markeredgecolor="lime", markeredgewidth=2)
        axis.set_title(title, fontsize=7)
        axis.set_xlim(0, image.width)
        axis.set_ylim(image.height, 0)
        axis.axis("off")
    for index in range(len(panels), nrows * ncols):
        axes[index // ncols][index % ncols].axis("off")
    figure.suptitle("CARAFE reassembly: red cells are reassembled into the green location", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _parse_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is x,y in image pixels, got {text!r}") from None
    return x, y


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size is a whole number of pixels >= 1, got {text!r}")
    return value


def _log_png(run_dir: Path, logger: str, tag: str, png: Path) -> list[str]:
    from carafe_exp.runs.image_logging import log_image

    if logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        target = TensorBoardLogger(save_dir=str(run_dir), name="reassembly", version="")
    else:
        from lightning.pytorch.loggers import WandbLogger

        from carafe_exp.runs.loggers import wandb_mode

        target = WandbLogger(project="carafe-exp", save_dir=str(run_dir), name=f"reassembly-{run_dir.name}",
                             offline=wandb_mode(None) != "online", job_type="visualize")
    with Image.open(png) as picture:
        written = log_image([target], tag, picture.convert("RGB"), step=0)
    if logger == "tensorboard":
        target.experiment.flush()
    else:
        import wandb

        wandb.finish()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``carafe-exp-visualize``)."""
    parser = argparse.ArgumentParser(prog="carafe-exp-visualize", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (with checkpoints/) or a .ckpt file")
    parser.add_argument("image", help="an image file (any format PIL reads)")
    parser.add_argument("--points", nargs="+", type=_parse_point, metavar="X,Y",
                        help="image locations in pixels (default: three across the image)")
    parser.add_argument("--out", help="PNG to write (default: <run dir>/reassembly/<image name>.png)")
    parser.add_argument("--size", type=_positive_int, default=224, help="short side fed to a classifier (default 224)")
    parser.add_argument("--logger", choices=("none", "tensorboard", "wandb"), default="none",
                        help="also log the picture to the run's TensorBoard or W&B (offline without login)")
    args = parser.parse_args(argv)
    try:
        model, _config, run_dir = load_trained_model(args.run)
        image = read_image(args.image)
        points = args.points or [(image.width * fx, image.height * fy) for fx, fy in ((0.3, 0.35), (0.5, 0.5),
                                                                                       (0.7, 0.65))]
        captured, scale, net_height = run_network(model, image, args.size)
        shown = [c for c in captured if not c.name.startswith(_NOT_IMAGE_ALIGNED)
                 and not any(f".{part}" in c.name for part in _NOT_IMAGE_ALIGNED)]
        if not shown:
            raise ConfigError(f"the model of {run_dir} has no CARAFE module on image-aligned maps "
                              f"(upsampler=carafe at an FPN site, or downsampler=carafe at the backbone site)")
        out = Path(args.out) if args.out else run_dir / "reassembly" / f"{Path(args.image).stem}.png"
        draw(image, shown, points, scale, net_height, out)
        sys.stderr.write(f"reassembly kernels of {len(shown)} modules drawn to {out}\n")
        if args.logger != "none":
            written = _log_png(run_dir, args.logger, f"reassembly/{Path(args.image).stem}", out)
            sys.stderr.write(f"logged to {', '.join(written) or 'no logger'}\n")
    except (UserInputError, FileNotFoundError) as error:
        sys.stderr.write(f"carafe-exp-visualize: error: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
