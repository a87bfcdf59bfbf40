// Entry points of the compiled CARAFE extension, one per device, called by carafe_bindings.cpp.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

#include "carafe_geometry.h"

namespace carafe_exp {

// Fills `output` (already allocated, any strides) from features and kernels.
void carafe_forward_cpu(const at::Tensor& features, const at::Tensor& kernels,
                        at::Tensor& output, const Geometry& geometry);

// Fills grad_features and grad_kernels (already allocated, any strides). Deterministic:
// every gradient element is a gather over the outputs that read it, no atomics.
void carafe_backward_cpu(const at::Tensor& grad_output, const at::Tensor& features,
                         const at::Tensor& kernels, at::Tensor& grad_features,
                         at::Tensor& grad_kernels, const Geometry& geometry);

// Which CUDA kernels run (carafe_cuda_simple.cuh, carafe_cuda_tiled.cuh). `simple` stays the
// default until a GPU measurement (scripts/gpu_check.py) shows another choice faster;
// `automatic` chooses per call and pass from the launch shape (carafe_cuda_plan.h:
// choose_kernels); `tiled` forces the tiled kernels, which still fall back to `simple` for a pass
// whose smallest tile does not fit the shared-memory budget (very large k).
enum class CudaKernels { automatic, simple, tiled };

inline const char* name_of(CudaKernels choice) {
  switch (choice) {
    case CudaKernels::simple:
      return "simple";
    case CudaKernels::tiled:
      return "tiled";
    default:
      return "auto";
  }
}

inline CudaKernels cuda_kernels_named(const std::string& name) {
  TORCH_CHECK(name == "auto" || name == "simple" || name == "tiled",
              "carafe: the CUDA kernels are 'auto', 'simple' or 'tiled', got '", name, "'");
  if (name == "simple") return CudaKernels::simple;
  return name == "tiled" ? CudaKernels::tiled : CudaKernels::automatic;
}

#ifdef CARAFE_WITH_CUDA
void carafe_forward_cuda(const at::Tensor& features, const at::Tensor& kernels,
                         at::Tensor& output, const Geometry& geometry, CudaKernels choice);

void carafe_backward_cuda(const at::Tensor& grad_output, const at::Tensor& features,
                          const at::Tensor& kernels, at::Tensor& grad_features,
                          at::Tensor& grad_kernels, const Geometry& geometry,
                          CudaKernels choice);
#endif

}  // namespace carafe_exp
