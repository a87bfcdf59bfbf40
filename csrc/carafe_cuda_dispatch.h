// Host side of the CUDA kernels: for one call and pass, picks the kernels (simple or tiled, see
// carafe.h; `automatic` from the launch shape) and their launch configuration, and launches them through a `launch` callable,
//     launch(kernel, LaunchConfig, kernel arguments...)
// which is <<<>>> on the current stream in carafe_cuda.cu and the block-by-block execution of the
// emulation in emulation/carafe_cuda_emulated.cpp, so that the tests run exactly this code.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>

#include "carafe.h"
#include "carafe_cuda_plan.h"
#include "carafe_cuda_simple.cuh"
#include "carafe_cuda_tiled.cuh"
#include "carafe_tensor_geometry.h"

namespace carafe_exp {
namespace cuda {

struct LaunchConfig {
  const char* name;  // which kernel, for the emulation's launch records
  int64_t blocks;
  int threads;
  int64_t shared_bytes;  // dynamic shared memory per block
};

// The dtypes the kernels are compiled for; the sanitizer build of the emulation (a test that only
// needs one) compiles float alone, to build in a fraction of the time.
#ifdef CARAFE_EMULATION_FLOAT_ONLY
#define CARAFE_DISPATCH_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__))
#else
#define CARAFE_DISPATCH_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
#endif

// Fills `output` (any strides). `max_blocks` caps the grid; the kernels' grid- and
// block-stride loops cover the rest (the tests lower it to exercise those loops).
// `multiprocessors` shapes the tiled kernels' grid (carafe_cuda_plan.h).
template <typename Launch>
void launch_forward(Launch& launch, const at::Tensor& features, const at::Tensor& kernels,
                    at::Tensor& output, const Geometry& g, CudaKernels choice,
                    int64_t multiprocessors, int64_t max_blocks = kMaxBlocks) {
  if (output.numel() == 0) return;
  CARAFE_DISPATCH_TYPES(features.scalar_type(), "carafe_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = features.const_data_ptr<scalar_t>();
    const scalar_t* w = kernels.const_data_ptr<scalar_t>();
    scalar_t* o = output.mutable_data_ptr<scalar_t>();
    const PassChoice pass = choose_kernels(g, Pass::forward, sizeof(acc_t), choice, multiprocessors);
    if (pass.tiled) {
      const LaunchConfig config{pass.plan.cell == 1 ? "forward_tiled" : "forward_tiled_cells",
                                std::min(pass.plan.blocks, max_blocks), pass.plan.threads,
                                pass.plan.shared_bytes};
      const Strides4 xs = strides_of(features), ks = strides_of(kernels), os = strides_of(output);
      switch (pass.plan.cell) {
        case 2:
          launch(forward_tiled_kernel<scalar_t, 2>, config, x, w, o, g, pass.plan, xs, ks, os);
          break;
        case 4:
          launch(forward_tiled_kernel<scalar_t, 4>, config, x, w, o, g, pass.plan, xs, ks, os);
          break;
        default:
          launch(forward_tiled_kernel<scalar_t, 1>, config, x, w, o, g, pass.plan, xs, ks, os);
      }
      return;
    }
    launch(forward_kernel<scalar_t>,
           LaunchConfig{"forward_simple", blocks_for(output.numel(), max_blocks), kSimpleThreads,
                        0},
           x, w, o, g, strides_of(features), strides_of(kernels), strides_of(output));
  });
}

// Fills grad_features and grad_kernels (any strides), each a deterministic gather.
template <typename Launch>
void launch_backward(Launch& launch, const at::Tensor& grad_output, const at::Tensor& features,
                     const at::Tensor& kernels, at::Tensor& grad_features,
                     at::Tensor& grad_kernels, const Geometry& g, CudaKernels choice,
                     int64_t multiprocessors, int64_t max_blocks = kMaxBlocks) {
  CARAFE_DISPATCH_TYPES(features.scalar_type(), "carafe_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* x = features.const_data_ptr<scalar_t>();
    const scalar_t* w = kernels.const_data_ptr<scalar_t>();
    const Strides4 gos = strides_of(grad_output), xs = strides_of(features),
                   ks = strides_of(kernels);
    if (grad_kernels.numel() > 0) {
      scalar_t* gk = grad_kernels.mutable_data_ptr<scalar_t>();
      const Strides4 gks = strides_of(grad_kernels);
      const PassChoice pass =
          choose_kernels(g, Pass::grad_kernels, sizeof(acc_t), choice, multiprocessors);
      if (pass.tiled) {
        launch(grad_kernels_tiled_kernel<scalar_t>,
               LaunchConfig{"grad_kernels_tiled", std::min(pass.plan.blocks, max_blocks),
                            pass.plan.threads, pass.plan.shared_bytes},
               go, x, gk, g, pass.plan, gos, xs, gks);
      } else {
        launch(grad_kernels_kernel<scalar_t>,
               LaunchConfig{"grad_kernels_simple", blocks_for(grad_kernels.numel(), max_blocks),
                            kSimpleThreads, 0},
               go, x, gk, g, gos, xs, gks);
      }
    }
    if (grad_features.numel() > 0) {
      scalar_t* gx = grad_features.mutable_data_ptr<scalar_t>();
      const Strides4 gxs = strides_of(grad_features);
      const PassChoice pass =
          choose_kernels(g, Pass::grad_features, sizeof(acc_t), choice, multiprocessors);
      if (pass.tiled) {
        launch(grad_features_tiled_kernel<scalar_t>,
               LaunchConfig{"grad_features_tiled", std::min(pass.plan.blocks, max_blocks),
                            pass.plan.threads, pass.plan.shared_bytes},
               go, w, gx, g, pass.plan, gos, ks, gxs);
      } else {
        launch(grad_features_kernel<scalar_t>,
               LaunchConfig{"grad_features_simple", blocks_for(grad_features.numel(), max_blocks),
                            kSimpleThreads, 0},
               go, w, gx, g, gos, ks, gxs);
      }
    }
  });
}

}  // namespace cuda
}  // namespace carafe_exp
