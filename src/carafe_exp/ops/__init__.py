"""The CARAFE / CARAFE++ reassembly operator: functional API, autograd, backends and the JIT build.

Public API:

- ``carafe(features, kernels, kernel_size, scale, groups=1, backend=None)``: content-aware
  upsampling, kernels (N, groups·k², s·H, s·W) → output (N, C, s·H, s·W).
- ``carafe_down(features, kernels, kernel_size, scale, groups=1, backend=None)``: CARAFE++
  content-aware downsampling, kernels (N, groups·k², ⌈H/s⌉, ⌈W/s⌉) → output (N, C, ⌈H/s⌉, ⌈W/s⌉).
- ``backend``: None/"auto" (compiled extension if it builds, else the reference with one
  warning), "compiled", "reference"; $CARAFE_EXP_BACKEND sets the default.
- ``compiled_available()``, ``available_backends()``: what works on this machine.
- ``reassemble_reference``: the pure-PyTorch ground truth (no argument checks).

Modules: functional (the API), validation (argument checks), geometry (shapes and
layouts), reference (pure PyTorch), library (torch.library ops, autograd, fake kernels,
FLOP formulas), backend (choice and fallback), extension (JIT build; ``python -m
carafe_exp.ops.extension``), sources (where csrc/ is), cuda_toolkit (finding CUDA_HOME).
"""

from carafe_exp.ops.backend import available_backends, compiled_available
from carafe_exp.ops.functional import carafe, carafe_down
from carafe_exp.ops.geometry import kernels_shape, output_size
from carafe_exp.ops.reference import reassemble_reference

__all__ = [
    "available_backends",
    "carafe",
    "carafe_down",
    "compiled_available",
    "kernels_shape",
    "output_size",
    "reassemble_reference",
]
