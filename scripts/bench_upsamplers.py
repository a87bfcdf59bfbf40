"""Benchmark the guided upsamplers (FADE, SAPA, FreqFusion, IndexNet, A2U), CARAFE, DySample+ and SAPA's similarity.

    python scripts/bench_upsamplers.py [--device cuda] [--channels 256] [--size 64] [--batch 2]

Per upsampler at C channels, an (N, C, size, size) input ×2 (guided ones with an (N, C, 2·size,
2·size) guide): median forward and forward+backward milliseconds on the device. For SAPA's
similarity step: the bytes autograd keeps for backward, for this project's memory-lean
``neighbour_similarity`` and for the portable unfold form of the spec (keys unfolded and
broadcast over the sub-pixels), plus their times. Prints a table and writes JSON (machine
described) into benchmarks/results/upsamplers_<device>_<date>.json. Called by ``make bench-op``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from carafe_exp.resample import build_upsampler  # noqa: E402
from carafe_exp.resample.guided import requires_guide  # noqa: E402
from carafe_exp.resample.sapa_similarity import neighbour_similarity  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
UPSAMPLERS = ("carafe", "dysample_plus", "fade", "sapa", "freqfusion", "indexnet", "a2u")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    return float(f"{statistics.median(samples):.4g}")


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn`` runs (leaf inputs included)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values())


def unfolded_similarity(q: torch.Tensor, key: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """The spec's portable form: unfold the keys, repeat them over the sub-pixels, multiply, sum."""
    n, d, h, w = key.shape
    unfolded = F.unfold(key, kernel_size, padding=kernel_size // 2).view(n, d, kernel_size ** 2, h, w)
    unfolded = unfolded.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return (q.unsqueeze(2) * unfolded).sum(1)


def bench_upsamplers(device: torch.device, channels: int, size: int, batch: int, repeats: int) -> dict:
    results = {}
    for name in UPSAMPLERS:
        module = build_upsampler(name, channels, 2, guide_available=True).to(device)
        x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
        guide = torch.randn(batch, channels, 2 * size, 2 * size, device=device, requires_grad=True)
        call = (lambda m=module: m(x, guide=guide)) if requires_guide(module) else (lambda m=module: m(x))

        def forward_backward(call: Callable[[], torch.Tensor] = call) -> None:
            call().sum().backward()

        with torch.no_grad():
            forward = median_ms(call, device, repeats)
        results[name] = {"forward_ms": forward, "forward_backward_ms": median_ms(forward_backward, device, repeats),
                         "params": sum(p.numel() for p in module.parameters())}
    return results


def bench_similarity(device: torch.device, size: int, batch: int, repeats: int, dim: int = 64) -> dict:
    q = torch.randn(batch, dim, 2 * size, 2 * size, device=device, requires_grad=True)
    key = torch.randn(batch, dim, size, size, device=device, requires_grad=True)
    results = {}
    for name, fn in (("lean", neighbour_similarity), ("unfold", unfolded_similarity)):
        results[name] = {
            "saved_for_backward_MB": round(saved_bytes(lambda fn=fn: fn(q, key, 5, 2)) / 2**20, 2),
            "forward_backward_ms": median_ms(lambda fn=fn: fn(q, key, 5, 2).sum().backward(), device, repeats),
        }
    expected = unfolded_similarity(q, key, 5, 2)
    results["max_abs_difference"] = float((neighbour_similarity(q, key, 5, 2) - expected).abs().max().detach())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="low-res input height = width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    options = parser.parse_args()
    device = torch.device(options.device)
    torch.manual_seed(0)
    record = {
        "benchmark": "guided upsamplers and SAPA similarity",
        "setting": {"channels": options.channels, "size": options.size, "batch": options.batch, "scale": 2},
        "machine": describe_machine(device),
        "upsamplers": bench_upsamplers(device, options.channels, options.size, options.batch, options.repeats),
        "sapa_similarity": bench_similarity(device, options.size, options.batch, options.repeats),
    }
    print(f"{'upsampler':<14}{'params':>10}{'fwd ms':>10}{'fwd+bwd ms':>12}")
    for name, row in record["upsamplers"].items():
        print(f"{name:<14}{row['params']:>10,}{row['forward_ms']:>10}{row['forward_backward_ms']:>12}")
    similarity = record["sapa_similarity"]
    for name in ("lean", "unfold"):
        print(f"SAPA similarity {name:<7} saved for backward {similarity[name]['saved_for_backward_MB']:>8} MB, "
              f"fwd+bwd {similarity[name]['forward_backward_ms']} ms")
    out = options.out or RESULTS / f"upsamplers_{device.type}_{date.today():%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
