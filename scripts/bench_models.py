"""End-to-end benchmark: Faster R-CNN R-50-FPN training and inference images/s per FPN upsampler.

Every upsampler of the registry goes into the FPN's top-down steps (``model.sites.fpn``) of the
same Faster R-CNN; each is timed against nearest (the original FPN) *in the same run*, with the
measurements interleaved round by round so that a change in machine load hits every variant
alike. A training step is forward + backward + SGD step on ``--batch`` images of ``--size``²
pixels with a few ground-truth boxes; inference is the eval-mode forward (resize, network,
post-processing). The paper reports CARAFE in the FPN at +2.4% of Faster R-CNN's time on a GPU;
the target here is at most 10% of training throughput on CPU at 512-pixel images.

Then, unless ``--upernet-size 0``, the UperNet case (CARAFE Tables 5-6): UperNet R-50 trained on
``--upernet-size``² images with CARAFE at the PPM, FPN and FUSE sites against bilinear (UperNet's
own operator), reporting the share of the training step its 10 upsamplers take; JSON as
``upernet_<device>_<size>px_<date>.json``.

Prints a table and writes JSON (machine described) into benchmarks/results/.

    python scripts/bench_models.py [--size 512] [--batch 1] [--rounds 3] [--upsamplers nearest,carafe]
                                      [--device cpu|cuda] [--quick] [--out FILE] [--upernet-size 512]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import describe_machine  # scripts/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
try:
    from carafe_exp.models.rcnn import build_faster_rcnn
    from carafe_exp.models.upernet import build_upernet
    from carafe_exp.resample import UPSAMPLERS
    from carafe_exp.tasks.segmentation import segmentation_loss
except ImportError:  # a bare checkout without `pip install`: use the source tree
    sys.path.insert(0, str(REPO / "src"))
    from carafe_exp.models.rcnn import build_faster_rcnn
    from carafe_exp.models.upernet import build_upernet
    from carafe_exp.resample import UPSAMPLERS
    from carafe_exp.tasks.segmentation import segmentation_loss

BASELINE = "nearest"
TARGET_UPSAMPLER = "carafe"
TARGET_MAX_TRAIN_OVERHEAD = 0.10  # the target on CPU at 512 px


def machine_info(device: torch.device) -> dict:
    return describe_machine(device) | {
        "reassembly_backend_setting": os.environ.get("CARAFE_EXP_BACKEND", "auto"),
        "reassembly_backends_available": _backends(),
    }


def _backends() -> list[str] | None:
    try:
        import carafe_exp.ops as ops

        return list(ops.available_backends())
    except (ImportError, AttributeError):
        return None


# carafe_exp.allocator's choices: glibc's defaults, and what the carafe-exp process configures.
ALLOCATOR_SETTINGS = ("system", "tuned")


def allocator_comparison(args: argparse.Namespace) -> dict:
    """The training step of nearest and carafe with glibc's default allocator and with carafe-exp's.

    The allocator is set once per process, so each setting runs in a fresh interpreter of this
    script (``--allocator-child``, ``CARAFE_EXP_CPU_ALLOCATOR``), the same size, batch, rounds and
    threads as the main measurement.
    """
    runs = {}
    for setting in ALLOCATOR_SETTINGS:
        command = [sys.executable, str(Path(__file__).resolve()), "--allocator-child", "--size", str(args.size),
                   "--batch", str(args.batch), "--rounds", str(args.rounds), "--device", args.device,
                   "--upsamplers", f"{BASELINE},{TARGET_UPSAMPLER}"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, env=dict(os.environ, CARAFE_EXP_CPU_ALLOCATOR=setting), capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the allocator comparison ({setting}) failed:\n{done.stderr[-3000:]}")
        runs[setting] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"allocator {setting} done", file=sys.stderr, flush=True)
    steps = {setting: run["train_step_s"] for setting, run in runs.items()}
    return {
        "method": "fastest training step (forward + backward + SGD) of --rounds after a warm-up, nearest and carafe "
                  "interleaved, in one fresh process per allocator setting",
        "runs": runs,
        "train_step_speedup_tuned_vs_system": {name: steps["system"][name] / steps["tuned"][name]
                                               for name in steps["tuned"]},
    }


def allocator_child(args: argparse.Namespace, names: list[str], device: torch.device) -> int:
    """``--allocator-child``: time training steps in this process's allocator setting, print one JSON line."""
    from dataclasses import asdict

    from carafe_exp.allocator import configure_cpu_allocator

    settings = configure_cpu_allocator()
    variants = [Variant(name, args.size, device) for name in names]
    images, targets = make_batch(args.batch, args.size, device)
    for variant in variants:
        variant.train_step(images, targets, device)
    for round_index in range(args.rounds):
        for variant in variants[round_index % len(variants):] + variants[:round_index % len(variants)]:
            variant.train_s.append(variant.train_step(images, targets, device))
    print(json.dumps({"allocator": asdict(settings), "train_step_s": {v.name: min(v.train_s) for v in variants},
                      "train_step_s_all": {v.name: v.train_s for v in variants}}))
    return 0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(batch: int, size: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=generator).to(device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=generator) * size * 0.6
        wh = torch.rand(4, 2, generator=generator) * size * 0.35 + 16
        boxes = torch.cat([xy, xy + wh], dim=1).clamp(max=size - 1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 81, (4,), generator=generator).to(device)})
    return images, targets


class Variant:
    """One Faster R-CNN with ``upsampler`` in the FPN, its optimiser, and its timings."""

    def __init__(self, upsampler: str, size: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.name = upsampler
        self.model = build_faster_rcnn(80, upsampler=upsampler, sites={"fpn": True}, min_size=size,
                                       max_size=size).to(device)
        self.optimizer = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=1e-4,
                                         momentum=0.9)
        self.upsampler_params = sum(p.numel() for p in self.model.backbone.fpn.upsamplers.parameters())
        self.train_s: list[float] = []
        self.infer_s: list[float] = []
        self.upsample_s: list[float] = []

    def upsample_step(self, size: int, device: torch.device) -> float:
        """Forward + backward of the FPN's top-down upsamplers alone, at this image size's FPN shapes."""
        fpn = self.model.backbone.fpn
        channels = fpn.layer_blocks[0][0].out_channels
        # upsamplers[i] takes level i+1 (stride 2^(i+3)) to level i (stride 2^(i+2)).
        inputs = [torch.randn(1, channels, size // 2 ** (i + 3), size // 2 ** (i + 3), device=device,
                              requires_grad=True) for i in range(len(fpn.upsamplers))]
        synchronize(device)
        start = time.perf_counter()
        total = sum(upsampler(x).sum() for upsampler, x in zip(fpn.upsamplers, inputs))
        total.backward()
        synchronize(device)
        fpn.upsamplers.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def train_step(self, images: list[torch.Tensor], targets: list[dict], device: torch.device) -> float:
        self.model.train()
        synchronize(device)
        start = time.perf_counter()
        losses = self.model(images, targets)
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    @torch.no_grad()
    def infer_step(self, images: list[torch.Tensor], device: torch.device) -> float:
        self.model.eval()
        synchronize(device)
        start = time.perf_counter()
        self.model(images)
        synchronize(device)
        return time.perf_counter() - start


class UperNetVariant:
    """UperNet R-50 (paper width) with ``upsampler`` at the PPM, FPN and FUSE sites; bilinear is UperNet itself."""

    def __init__(self, upsampler: str, num_classes: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.name = upsampler
        self.model = build_upernet(num_classes, upsampler=upsampler,
                                   sites={"ppm": True, "fpn": True, "fuse": True}).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.upsamplers = self.model.decode_head.resamplers()
        self.upsampler_params = sum(p.numel() for m in self.upsamplers for p in m.parameters())
        self.upsampler_inputs: list[torch.Tensor] = []
        self.train_s: list[float] = []
        self.upsample_s: list[float] = []

    def record_upsampler_inputs(self, images: torch.Tensor) -> None:
        """One forward with hooks: the exact input of every upsampler module at this image size."""
        inputs: dict[int, torch.Tensor] = {}
        hooks = [m.register_forward_pre_hook(lambda module, args: inputs.__setitem__(id(module), args[0].detach()))
                 for m in self.upsamplers]
        with torch.no_grad():
            self.model(images)
        for hook in hooks:
            hook.remove()
        self.upsampler_inputs = [inputs[id(m)].clone() for m in self.upsamplers]

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
        self.model.train()
        synchronize(device)
        start = time.perf_counter()
        loss = segmentation_loss(self.model(images)["out"], labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    def upsample_step(self, device: torch.device) -> float:
        """Forward + backward of the decoder's upsamplers alone, on their recorded inputs."""
        inputs = [x.clone().requires_grad_(True) for x in self.upsampler_inputs]
        synchronize(device)
        start = time.perf_counter()
        total = sum(m(x).sum() for m, x in zip(self.upsamplers, inputs))
        if isinstance(total, torch.Tensor):
            total.backward()
        synchronize(device)
        for m in self.upsamplers:
            m.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def bench_upernet(size: int, batch: int, rounds: int, device: torch.device, machine: dict, quick: bool,
                  out: Path | None = None) -> Path:
    """UperNet R-50 training step with CARAFE at the PPM/FPN/FUSE sites vs bilinear (CARAFE Tables 5-6).

    Reports the share of a CARAFE training step spent in its 10 upsamplers (4 PPM, 3 FPN, 3 FUSE at
    512/1024/1536 channels) and the training throughput lost against UperNet's bilinear resize.
    """
    num_classes = 150
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch, size, size), generator=generator).to(device)
    variants = [UperNetVariant(name, num_classes, device) for name in ("bilinear", "carafe")]
    for variant in variants:
        variant.record_upsampler_inputs(images)
        variant.train_step(images, labels, device)  # warm-up
    for round_index in range(rounds):
        for variant in variants[round_index % 2:] + variants[:round_index % 2]:
            variant.train_s.append(variant.train_step(images, labels, device))
            variant.upsample_s.append(variant.upsample_step(device))
        print(f"upernet round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    base, carafe = variants
    step_carafe, step_base = min(carafe.train_s), min(base.train_s)
    result = {
        "benchmark": "UperNet R-50 (512 channels, 150 classes): CARAFE at PPM, FPN and FUSE vs bilinear",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {"image_size": size, "batch": batch, "rounds": rounds},
        "methods": {
            "train_step": "forward + NLL at 1/4 resolution + backward + SGD step, fastest round after a warm-up; "
                          "the two variants interleaved, alternating order",
            "upsamplers": "forward + backward of the 10 upsampler modules alone on the inputs they saw in a "
                          "forward pass of this image size, fastest round",
        },
        "results": [{"upsampler": v.name, "upsampler_modules": len(v.upsamplers),
                     "upsampler_params": v.upsampler_params, "train_step_s": min(v.train_s),
                     "train_images_per_s": batch / min(v.train_s), "train_step_s_all": v.train_s,
                     "upsamplers_fwd_bwd_s": min(v.upsample_s) if v.upsamplers else 0.0} for v in variants],
        "carafe_upsamplers_share_of_carafe_train_step": min(carafe.upsample_s) / step_carafe,
        "carafe_train_overhead_vs_bilinear": 1.0 - step_base / step_carafe,
    }
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    if out is None:
        out = REPO / "benchmarks" / "results" / f"upernet_{device.type}_{size}px{'_quick' if quick else ''}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["results"]:
        print(f"UperNet {row['upsampler']:<9} {row['upsampler_modules']:>3} upsamplers "
              f"{row['upsampler_params']:>9} params  train {row['train_images_per_s']:.3f} img/s  "
              f"upsamplers f+b {row['upsamplers_fwd_bwd_s']:.3f} s")
    print(f"UperNet: CARAFE's upsamplers take {result['carafe_upsamplers_share_of_carafe_train_step'] * 100:.1f}% of "
          f"its training step; CARAFE costs {result['carafe_train_overhead_vs_bilinear'] * 100:+.1f}% of bilinear's "
          f"training throughput")
    print(f"results written to {out}")
    return out


def format_table(rows: list[dict]) -> str:
    header = (f"{'upsampler':<18}{'params':>10}{'train img/s':>14}{'vs nearest':>12}{'infer img/s':>14}"
              f"{'vs nearest':>12}{'ups. f+b s':>12}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['upsampler']:<18}{row['upsampler_params']:>10}{row['train_images_per_s']:>14.3f}"
                     f"{row['train_overhead_vs_nearest'] * 100:>+11.1f}%{row['infer_images_per_s']:>14.3f}"
                     f"{row['infer_overhead_vs_nearest'] * 100:>+11.1f}%{row['fpn_upsamplers_fwd_bwd_s']:>12.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="square image side (pixels)")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--upsamplers", default=None, help="comma-separated subset (default: all registered)")
    parser.add_argument("--skip-allocator-comparison", action="store_true",
                        help="do not time the training step again with glibc's default allocator (CPU only)")
    parser.add_argument("--allocator-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="128-px images, one round: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--upernet-size", type=int, default=512, help="UperNet case: square image side (0: skip it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.size, args.rounds = 128, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.upsamplers.split(",") if args.upsamplers else sorted(UPSAMPLERS)
    unknown = sorted(set(names) - set(UPSAMPLERS))
    if unknown:
        parser.error(f"unknown upsampler(s) {unknown}; available: {', '.join(sorted(UPSAMPLERS))}")
    names = [BASELINE] + [n for n in names if n != BASELINE]
    if args.allocator_child:
        return allocator_child(args, names, device)
    from carafe_exp.allocator import configure_cpu_allocator  # importable once the imports above have run

    allocator_settings = configure_cpu_allocator()  # as the carafe-exp process does

    machine = machine_info(device)
    variants = [Variant(name, args.size, device) for name in names]
    images, targets = make_batch(args.batch, args.size, device)
    for variant in variants:  # warm-up: allocator, one-time kernel builds, lazy init
        variant.train_step(images, targets, device)
        variant.infer_step(images, device)
    for round_index in range(args.rounds):
        # Interleaved, and in a rotated order each round, so load drift does not favour anyone.
        order = variants[round_index % len(variants):] + variants[:round_index % len(variants)]
        for variant in order:
            variant.train_s.append(variant.train_step(images, targets, device))
            variant.infer_s.append(variant.infer_step(images, device))
            variant.upsample_s.append(variant.upsample_step(args.size, device))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    # The fastest round is the one least disturbed by other processes (interference only adds
    # time), so throughput and overheads use the minimum; the medians are recorded beside it.
    base_train = min(variants[0].train_s)
    base_infer = min(variants[0].infer_s)
    rows = []
    for variant in variants:
        train, infer = min(variant.train_s), min(variant.infer_s)
        rows.append({
            "upsampler": variant.name,
            "upsampler_params": variant.upsampler_params,
            "train_images_per_s": args.batch / train,
            "infer_images_per_s": args.batch / infer,
            # Relative loss of throughput: 1 - (ours / nearest); +0.05 means 5% fewer images/s.
            "train_overhead_vs_nearest": 1.0 - base_train / train,
            "infer_overhead_vs_nearest": 1.0 - base_infer / infer,
            "train_images_per_s_median": args.batch / statistics.median(variant.train_s),
            "infer_images_per_s_median": args.batch / statistics.median(variant.infer_s),
            # The upsamplers' own forward+backward per image: a contention-robust view of their cost.
            "fpn_upsamplers_fwd_bwd_s": min(variant.upsample_s),
            "fpn_upsamplers_share_of_nearest_train_step": min(variant.upsample_s) / base_train * args.batch,
            "train_step_s": variant.train_s,
            "infer_step_s": variant.infer_s,
        })
    allocator = {"this_process": vars(allocator_settings)}
    if device.type == "cpu" and not args.skip_allocator_comparison:
        allocator["comparison"] = allocator_comparison(args)
    target = next((r for r in rows if r["upsampler"] == TARGET_UPSAMPLER), None)
    report = {
        "benchmark": "Faster R-CNN R-50-FPN, upsampler in the FPN top-down steps",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "settings": {"image_size": args.size, "batch": args.batch, "rounds": args.rounds, "num_classes": 80,
                     "rcnn": "torchvision defaults (mmdetection 1x budgets)"},
        "methods": {
            "timing": "time.perf_counter around one step (CUDA synchronised), the fastest of the rounds after "
                      "one warm-up step (medians recorded too); variants interleaved in rotated order each round",
            "train_step": "forward + backward + SGD step of the whole detector on random boxes",
            "inference": "eval-mode forward under no_grad (resize, network, post-processing)",
            "fpn_upsamplers": "forward + backward of the FPN's top-down upsamplers alone on random inputs of the "
                              "FPN's shapes for one image, fastest round",
        },
        "results": rows,
        "cpu_allocator": allocator,
        "target": None if target is None else {
            "upsampler": TARGET_UPSAMPLER,
            "max_train_overhead": TARGET_MAX_TRAIN_OVERHEAD,
            "train_overhead": target["train_overhead_vs_nearest"],
            # The same question answered from the upsamplers' own time, which other processes on a
            # shared machine disturb far less than whole training steps.
            "upsampler_share_of_train_step": target["fpn_upsamplers_share_of_nearest_train_step"],
            "met": max(target["train_overhead_vs_nearest"],
                       target["fpn_upsamplers_share_of_nearest_train_step"]) <= TARGET_MAX_TRAIN_OVERHEAD,
        },
    }
    out = args.out
    if out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
        suffix = "_quick" if args.quick else ""
        out = REPO / "benchmarks" / "results" / f"models_{device.type}_{args.size}px{suffix}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(rows))
    if report["target"] is not None:
        verdict = "met" if report["target"]["met"] else "NOT met"
        print(f"target: {TARGET_UPSAMPLER} costs {report['target']['train_overhead'] * 100:.1f}% of training "
              f"throughput; its upsamplers take {report['target']['upsampler_share_of_train_step'] * 100:.1f}% of "
              f"a nearest training step (at most {TARGET_MAX_TRAIN_OVERHEAD * 100:.0f}%): {verdict}")
    if "comparison" in allocator:
        speedups = allocator["comparison"]["train_step_speedup_tuned_vs_system"]
        print("training step with carafe-exp's CPU allocator vs glibc's defaults: "
              + ", ".join(f"{name} x{value:.2f}" for name, value in speedups.items()))
    print(f"results written to {out}")
    if args.upernet_size:
        # Beside --out when given (upernet_<name>), else in benchmarks/results/.
        upernet_out = args.out.with_name(f"upernet_{args.out.name}") if args.out else None
        bench_upernet(128 if args.quick else args.upernet_size, args.batch, args.rounds, device, machine, args.quick,
                      upernet_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
