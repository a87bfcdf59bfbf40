// Entry points of the compiled CARAFE extension, one per device, called by carafe_bindings.cpp.
#pragma once

#include <ATen/ATen.h>

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

// The two sets of CUDA kernels (carafe_cuda_simple.cuh, carafe_cuda_tiled.cuh). `simple` is the
// default until a GPU measurement shows the tiled kernels faster; `tiled` falls back to `simple`
// for a call whose smallest tile does not fit the shared-memory budget (very large k).
enum class CudaKernels { simple, tiled };

#ifdef CARAFE_WITH_CUDA
void carafe_forward_cuda(const at::Tensor& features, const at::Tensor& kernels,
                         at::Tensor& output, const Geometry& geometry, CudaKernels choice);

void carafe_backward_cuda(const at::Tensor& grad_output, const at::Tensor& features,
                          const at::Tensor& kernels, at::Tensor& grad_features,
                          at::Tensor& grad_kernels, const Geometry& geometry,
                          CudaKernels choice);
#endif

}  // namespace carafe_exp
