"""Runs the CUDA kernels under the AddressSanitizer build of the emulation (test_op_cuda_faults.py).

A separate process, because the sanitizer build imports only where libasan is preloaded:

    LD_PRELOAD="<libasan.so> <libstdc++.so>" ASAN_OPTIONS=halt_on_error=0 \
        python -m ops.asan_emulation_case <fault> [<fault> ...]

For each deliberate bug ``fault`` in turn (``none`` for none), writes a line ``=== fault <name>``
to stderr, runs both kernel sets forward and backward in float32 on cases that take every tiled
variant (cells, a split of the channels, the downsampling kernels), and prints the largest
difference from the reference. AddressSanitizer reports each out-of-bounds read on stderr, naming
the kernel, and (halt_on_error=0, a recoverable build) goes on.
"""

from __future__ import annotations

import sys

import torch

from carafe_exp.ops import extension, reassemble_reference
from ops.op_cases import random_case

# (batch, channels, height, width, k, s, groups, down): cells (up by 2), a split of 40 channels
# into two slices, and downsampling.
CASES = [(1, 8, 6, 5, 5, 2, 1, False), (1, 40, 5, 7, 3, 2, 1, False), (2, 8, 9, 7, 5, 2, 2, True)]


def largest_error(emulation) -> float:
    """Largest difference of both kernel sets from the float64 reference over CASES."""
    worst = 0.0
    for batch, channels, height, width, k, s, groups, down in CASES:
        features, kernels = random_case(batch, channels, height, width, k, s, groups, down, dtype=torch.float32)
        reference_features = features.double().requires_grad_()
        reference_kernels = kernels.double().requires_grad_()
        expected = reassemble_reference(reference_features, reference_kernels, k, s, groups, down)
        grad_output = torch.randn(expected.shape)
        expected.backward(grad_output.double())
        for cuda_kernels in ("simple", "tiled"):
            out = emulation.forward(features, kernels, k, s, groups, down, False, cuda_kernels, emulation.max_blocks, "ascending")
            grads = emulation.backward(
                grad_output, features, kernels, k, s, groups, down, False, False, cuda_kernels, emulation.max_blocks, "ascending"
            )
            for got, want in zip((out, *grads), (expected, reference_features.grad, reference_kernels.grad)):
                worst = max(worst, (got.double() - want.detach()).abs().max().item())
    return worst


def main(faults: list[str]) -> int:
    emulation = extension.build_emulation(sanitize=True)
    for fault in faults:
        print(f"=== fault {fault}", file=sys.stderr, flush=True)
        emulation.set_fault(fault)
        print(f"{fault}: largest difference from the reference {largest_error(emulation):.3g}", flush=True)
    emulation.set_fault("none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
