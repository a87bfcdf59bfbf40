"""Whole training steps beside the implementations they follow, as ratios measured in one run.

Users choose between this tool and the code it reproduces, so each of our training steps is
timed against its reference on the same batch, the same image size and the same device:

- ``detection``: our Faster R-CNN R-50-FPN (``upsampler=nearest``, ``model.fpn_style=torchvision``,
  ``model.head_init=torchvision``, ``model.box_loss_beta=1/9``: torchvision's FPN and heads) against
  torchvision's own ``fasterrcnn_resnet50_fpn``. The two have the same parameter names, so ours
  is loaded with the reference's weights and the first step's losses are compared (same RNG seed
  for the RPN/RoI samplers): the ratio is between two implementations of *one* computation.
- ``upernet``: our UperNet R-50 (``task=segmentation`` defaults: bilinear at every site, 512
  channels, 150 classes) against CSAIL's ``SegmentationModule(Resnet(resnet50()), UPerNet(...),
  NLLLoss)`` from the ``mit-semseg`` package (never pretrained, nothing downloaded). CSAIL's
  ResNet-50 has a deep stem (three 3×3 convs, 64-64-128 channels) where ours (torchvision's) has
  one 7×7 conv, so the whole-step ratio mixes the architectures; ``upernet_encoder`` and
  ``upernet_decoder`` time the two halves alone (forward + backward), the decoder pair on the
  same C2–C5 features, which isolates the implementation.

A step is forward + loss + backward + SGD step (the halves: forward + backward of a sum). After
one warm-up step each, the pair runs interleaved (ours, reference, reference, ours, ...: the
order alternates each round) so that load drift on a shared machine hits both alike; the ratio
is median(ours) / median(reference) (> 1: ours is slower), with the median of the per-round
ratios and the ratio of the fastest rounds beside it. Writes
``benchmarks/results/peers_<device>_<size>px_<date>.json`` (machine and load described) and prints a table.

    python scripts/bench_peers.py [--size 512] [--upernet-size 512] [--batch 1] [--rounds 5]
                                     [--pairs detection,upernet] [--device cpu|cuda] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import describe_machine  # scripts/machine.py, beside this script
from torch import nn

REPO = Path(__file__).resolve().parents[1]
try:
    from carafe_exp.models.rcnn import build_faster_rcnn
    from carafe_exp.models.upernet import build_upernet
    from carafe_exp.tasks.segmentation import OUTPUT_STRIDE, segmentation_loss
except ImportError:  # a bare checkout without `pip install`: use the source tree
    sys.path.insert(0, str(REPO / "src"))
    from carafe_exp.models.rcnn import build_faster_rcnn
    from carafe_exp.models.upernet import build_upernet
    from carafe_exp.tasks.segmentation import OUTPUT_STRIDE, segmentation_loss

PAIRS = ("detection", "upernet")
# The issue's goal: our step within 5% of the reference's.
TARGET_MAX_RATIO = 1.05
NUM_CLASSES_COCO = 80
NUM_CLASSES_ADE20K = 150
# --quick: fewer RPN proposals and RoI samples (both sides alike), so the smoke test stays cheap.
QUICK_BUDGETS = {"rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "box_batch_size_per_image": 32}
# torchvision's RoI box loss is smooth-L1 with beta 1/9 (our default is mmdetection v1's 1.0).
TORCHVISION_BOX_LOSS_BETA = 1.0 / 9.0
# CSAIL's UPerNet as its `upernet` architecture builds it (models.py ModelBuilder.build_decoder).
CSAIL_FC_DIM = 2048
CSAIL_FPN_DIM = 512
CSAIL_IGNORE_INDEX = -1

Step = Callable[[], float]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], None]) -> float:
    """Seconds ``work`` takes, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_of: Callable[[], torch.Tensor]) -> None:
    model.train()
    loss = loss_of()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def detection_batch(batch: int, size: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """``batch`` random images of ``size``² pixels with four random boxes each (labels 1..80)."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=generator).to(device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=generator) * size * 0.6
        wh = torch.rand(4, 2, generator=generator) * size * 0.35 + 16
        boxes = torch.cat([xy, xy + wh], dim=1).clamp(max=size - 1)
        labels = torch.randint(1, NUM_CLASSES_COCO + 1, (4,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def detection_pair(size: int, batch: int, device: torch.device, budgets: dict[str, int] | None = None) -> dict:
    """Our Faster R-CNN in torchvision's configuration and torchvision's, with the same weights.

    ``budgets`` (RPN/RoI sample counts, torchvision's argument names) go to both alike; None keeps
    torchvision's defaults (mmdetection's 1x settings).
    """
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    budgets = dict(budgets or {})
    torch.manual_seed(0)
    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES_COCO + 1,
                                        min_size=size, max_size=size, **budgets).to(device)
    ours = build_faster_rcnn(NUM_CLASSES_COCO, upsampler="nearest", fpn_style="torchvision", head_init="torchvision",
                             box_loss_beta=TORCHVISION_BOX_LOSS_BETA, min_size=size, max_size=size,
                             rcnn=budgets).to(device)
    ours.load_state_dict(reference.state_dict())  # strict: the same parameter names and shapes
    images, targets = detection_batch(batch, size, device)
    optimizers = {"ours": sgd(ours), "reference": sgd(reference)}
    models = {"ours": ours, "reference": reference}
    first_losses = {}

    def step(name: str) -> Step:
        def losses() -> torch.Tensor:
            values = models[name](images, targets)
            if name not in first_losses:
                first_losses[name] = {k: float(v.detach()) for k, v in values.items()}
            return sum(values.values())

        return lambda: timed(device, lambda: train_step(models[name], optimizers[name], losses))

    # The warm-up step of each, from the same seed: the RPN and RoI samplers draw the same boxes.
    warm = {}
    for name in ("ours", "reference"):
        torch.manual_seed(1)
        warm[name] = step(name)()
    difference = max(abs(first_losses["ours"][k] - first_losses["reference"][k]) for k in first_losses["reference"])
    return {"steps": {name: step(name) for name in models}, "warm_up_s": warm,
            "check": {"first_step_losses": first_losses, "max_abs_loss_difference": difference,
                      "parameters": sum(p.numel() for p in ours.parameters())},
            "settings": {"image_size": size, "batch": batch, "num_classes": NUM_CLASSES_COCO,
                         "rcnn_budgets": budgets or "torchvision's defaults",
                         "ours": "build_faster_rcnn(upsampler=nearest, fpn_style=torchvision, head_init=torchvision, "
                                 "box_loss_beta=1/9), loaded with the reference's weights",
                         "reference": "torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, "
                                      "weights_backbone=None)"}}


def csail_upernet(num_classes: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """CSAIL's UperNet R-50 (``mit-semseg``): encoder, decoder, and the training module around them."""
    try:
        from mit_semseg.models.models import Resnet, SegmentationModule, UPerNet
        from mit_semseg.models.resnet import resnet50
    except ImportError as error:
        raise SystemExit(f"the upernet pair needs CSAIL's mit-semseg ({error}): install the reference extra "
                         f"(pip install -e '.[reference]') or run --pairs detection") from None

    encoder = Resnet(resnet50(pretrained=False))
    decoder = UPerNet(num_class=num_classes, fc_dim=CSAIL_FC_DIM, fpn_dim=CSAIL_FPN_DIM)
    module = SegmentationModule(encoder, decoder, nn.NLLLoss(ignore_index=CSAIL_IGNORE_INDEX))
    return encoder, decoder, module


def forward_gflops(forward: Callable[[], object]) -> float:
    """GFLOPs of one forward pass (torch's FLOP counter: convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() / 1e9


def upernet_pairs(size: int, batch: int, device: torch.device) -> dict[str, dict]:
    """Whole training step, encoder alone and decoder alone: ours against CSAIL's."""
    torch.manual_seed(0)
    ours = build_upernet(NUM_CLASSES_ADE20K).to(device)
    encoder, decoder, module = csail_upernet(NUM_CLASSES_ADE20K)
    module = module.to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES_ADE20K, (batch, size, size), generator=generator).to(device)
    # CSAIL's loader hands the network labels already at 1/4 (segm_downsampling_rate=4), top-left pixel.
    quarter_labels = labels[:, ::OUTPUT_STRIDE, ::OUTPUT_STRIDE].contiguous()
    optimizers = {"ours": sgd(ours), "reference": sgd(module)}
    whole = {
        "ours": lambda: timed(device, lambda: train_step(
            ours, optimizers["ours"], lambda: segmentation_loss(ours(images)["out"], labels))),
        "reference": lambda: timed(device, lambda: train_step(
            module, optimizers["reference"], lambda: module({"img_data": images, "seg_label": quarter_labels})[0])),
    }

    def backward_of(forward: Callable[[], object], model: nn.Module) -> Step:
        def work() -> None:
            model.train()
            out = forward()
            total = sum(t.float().sum() for t in (out if isinstance(out, (list, tuple)) else [out]))
            total.backward()
            model.zero_grad(set_to_none=True)

        return lambda: timed(device, work)

    encoders = {"ours": backward_of(lambda: list(ours.backbone(images).values()), ours.backbone),
                "reference": backward_of(lambda: encoder(images, return_feature_maps=True), encoder)}
    with torch.no_grad():  # C2-C5 of this batch (both encoders give 256/512/1024/2048 channels at 1/4..1/32)
        features = [f.detach() for f in ours.backbone(images).values()]
    decoders = {"ours": backward_of(lambda: ours.decode_head([f.requires_grad_() for f in features]),
                                    ours.decode_head),
                "reference": backward_of(lambda: decoder([f.requires_grad_() for f in features]), decoder)}
    common = {"image_size": size, "batch": batch, "num_classes": NUM_CLASSES_ADE20K}
    csail = (f"mit_semseg SegmentationModule(Resnet(resnet50(pretrained=False)), UPerNet(fc_dim={CSAIL_FC_DIM}, "
             f"fpn_dim={CSAIL_FPN_DIM}), NLLLoss(ignore_index=-1)) on labels at 1/4")
    parameters = {"ours": sum(p.numel() for p in ours.parameters()),
                  "reference": sum(p.numel() for p in module.parameters())}
    result = {
        "upernet": {"steps": whole, "check": {"parameters": parameters},
                    "settings": common | {"ours": "build_upernet(150): bilinear at every site (UperNet itself), "
                                                  "segmentation_loss at 1/4", "reference": csail}},
        "upernet_encoder": {"steps": encoders, "check": {"parameters": {
            "ours": sum(p.numel() for p in ours.backbone.parameters()),
            "reference": sum(p.numel() for p in encoder.parameters())}, "forward_gflops": {
            "ours": forward_gflops(lambda: ours.backbone(images)),
            "reference": forward_gflops(lambda: encoder(images, return_feature_maps=True))}},
            "settings": common | {"what": "forward + backward of the ResNet-50 encoder alone (C2-C5)",
                                  "ours": "torchvision ResNet-50 (7x7 stem)",
                                  "reference": "CSAIL Resnet(resnet50()): deep stem, 3x3 convs 64-64-128"}},
        "upernet_decoder": {"steps": decoders, "check": {"parameters": {
            "ours": sum(p.numel() for p in ours.decode_head.parameters()),
            "reference": sum(p.numel() for p in decoder.parameters())}, "forward_gflops": {
            "ours": forward_gflops(lambda: ours.decode_head(features)),
            "reference": forward_gflops(lambda: decoder(features))}},
            "settings": common | {"what": "forward + backward of the decoder alone on the same C2-C5 features",
                                  "ours": "UperNetHead (PPM, FPN, FUSE, classifier)",
                                  "reference": "CSAIL UPerNet (with its log_softmax)"}},
    }
    for pair in result.values():  # warm-up
        pair["warm_up_s"] = {name: step() for name, step in pair["steps"].items()}
    return result


def interleave(steps: dict[str, Step], rounds: int, label: str) -> dict[str, list[float]]:
    """``rounds`` timings of each step, run ours/reference then reference/ours alternately."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            times[name].append(steps[name]())
        print(f"{label}: round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def summarize(times: dict[str, list[float]], batch: int) -> dict:
    ours, reference = times["ours"], times["reference"]
    ratio = statistics.median(ours) / statistics.median(reference)
    return {
        "ours_step_s_median": statistics.median(ours),
        "reference_step_s_median": statistics.median(reference),
        "ours_images_per_s": batch / statistics.median(ours),
        "reference_images_per_s": batch / statistics.median(reference),
        # > 1: ours takes longer. The per-round ratios pair measurements taken moments apart.
        "ratio_ours_to_reference": ratio,
        "ratio_per_round_median": statistics.median(o / r for o, r in zip(ours, reference)),
        # Interference from other processes only adds time: the fastest rounds are the least disturbed.
        "ratio_of_fastest": min(ours) / min(reference),
        "within_target": ratio <= TARGET_MAX_RATIO,
        "ours_step_s": ours,
        "reference_step_s": reference,
    }


def format_table(results: dict[str, dict]) -> str:
    header = f"{'pair':<18}{'ours s':>10}{'ref s':>10}{'ours/ref':>10}{'per-round':>11}{'fastest':>9}  within 5%"
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        lines.append(f"{name:<18}{row['ours_step_s_median']:>10.3f}{row['reference_step_s_median']:>10.3f}"
                     f"{row['ratio_ours_to_reference']:>10.3f}{row['ratio_per_round_median']:>11.3f}"
                     f"{row['ratio_of_fastest']:>9.3f}  "
                     f"{'yes' if row['within_target'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="detection: square image side (pixels)")
    parser.add_argument("--upernet-size", type=int, default=512, help="UperNet: square image side (pixels)")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per implementation (after a warm-up)")
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated subset of {','.join(PAIRS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="64-px images, batch 1, one round, small RPN/RoI budgets: a smoke test")
    parser.add_argument("--note", default=None, help="free text stored with the machine description")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    pairs = [p for p in args.pairs.split(",") if p]
    unknown = sorted(set(pairs) - set(PAIRS))
    if unknown or not pairs:
        parser.error(f"unknown pair(s) {unknown or pairs}; available: {', '.join(PAIRS)}")
    if args.quick:
        args.size, args.upernet_size, args.batch, args.rounds = 64, 64, 1, 1
    if min(args.size, args.upernet_size, args.batch, args.rounds) < 1:
        parser.error("--size, --upernet-size, --batch and --rounds must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    from carafe_exp.allocator import configure_cpu_allocator

    allocator = configure_cpu_allocator()  # as the carafe-exp process does
    device = torch.device(args.device)
    machine = describe_machine(device) | {"cpu_allocator": vars(allocator)}
    if args.note:
        machine["note"] = args.note

    budgets = QUICK_BUDGETS if args.quick else None
    builders = {"detection": lambda: {"detection": detection_pair(args.size, args.batch, device, budgets)},
                "upernet": lambda: upernet_pairs(args.upernet_size, args.batch, device)}
    results = {}
    for family in pairs:
        # One family's models at a time: the memory of the last is given back before the next is built.
        for name, pair in builders[family]().items():
            results[name] = summarize(interleave(pair["steps"], args.rounds, name), args.batch) | {
                "settings": pair["settings"], "check": pair["check"], "warm_up_s": pair["warm_up_s"]}
        gc.collect()

    report = {
        "benchmark": "whole training steps against the reference implementations (ours / reference)",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "settings": {"rounds": args.rounds, "batch": args.batch, "target_max_ratio": TARGET_MAX_RATIO},
        "methods": {
            "timing": "time.perf_counter around one step (CUDA synchronised); one warm-up step each, then the "
                      "pair interleaved for --rounds rounds, the order alternating each round",
            "ratio": "median(ours) / median(reference): > 1 means ours takes longer; ratio_per_round_median is "
                     "the median of the per-round ratios",
            "train_step": "forward + loss + backward + SGD step (lr 1e-4, momentum 0.9) on a fixed random batch",
            "halves": "upernet_encoder / upernet_decoder: forward + backward of a sum of the outputs",
        },
        "results": results,
    }
    out = args.out
    if out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
        out = (REPO / "benchmarks" / "results" /
               f"peers_{device.type}_{args.size}px{'_quick' if args.quick else ''}_{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(results))
    if "detection" in results:
        print(f"detection: first-step losses differ by at most "
              f"{results['detection']['check']['max_abs_loss_difference']:.2e}")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
