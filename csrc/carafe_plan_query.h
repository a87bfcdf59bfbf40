// The plan query both bindings expose (the extension's and the CUDA emulation's): what each pass
// of a call of a given shape runs on a GPU of a given size, the kernel choice and the tiled plan,
// computed by the same host code the CUDA launch uses (carafe_cuda_plan.h), without a GPU.
#pragma once

#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

#include "carafe.h"
#include "carafe_cuda_plan.h"
#include "carafe_tensor_geometry.h"

namespace carafe_exp {

inline py::dict plan_query(const std::vector<int64_t>& features_shape, int64_t kernel_size,
                           int64_t scale, int64_t groups, bool down, const std::string& dtype,
                           CudaKernels choice, int64_t multiprocessors) {
  TORCH_CHECK(features_shape.size() == 4, "plan: features_shape is (N, C, H, W)");
  TORCH_CHECK(dtype == "float64" || dtype == "float32" || dtype == "float16" ||
                  dtype == "bfloat16",
              "plan: dtype is float32, float64, float16 or bfloat16");
  const at::TensorOptions meta = at::TensorOptions().device(at::kMeta);
  const int64_t out_h = down ? (features_shape[2] + scale - 1) / scale : features_shape[2] * scale;
  const int64_t out_w = down ? (features_shape[3] + scale - 1) / scale : features_shape[3] * scale;
  const at::Tensor features = at::empty(features_shape, meta);
  const at::Tensor kernels =
      at::empty({features_shape[0], groups * kernel_size * kernel_size, out_h, out_w}, meta);
  const Geometry g = make_geometry(features, kernels, kernel_size, scale, groups, down);
  const int64_t accumulator_bytes = dtype == "float64" ? 8 : 4;  // half types accumulate in float
  py::dict result;
  const std::pair<const char*, cuda::Pass> passes[] = {{"forward", cuda::Pass::forward},
                                                       {"grad_kernels", cuda::Pass::grad_kernels},
                                                       {"grad_features", cuda::Pass::grad_features}};
  for (const auto& [name, pass] : passes) {
    const cuda::PassChoice picked =
        cuda::choose_kernels(g, pass, accumulator_bytes, choice, multiprocessors);
    py::dict entry;
    entry["kernels"] = picked.tiled ? "tiled" : "simple";
    entry["tile"] = py::make_tuple(picked.plan.tile_h, picked.plan.tile_w);
    entry["blocks"] = picked.tiled ? picked.plan.blocks : int64_t(0);
    entry["threads"] = picked.tiled ? picked.plan.threads : 0;
    entry["splits"] = picked.plan.splits;
    entry["slice"] = picked.plan.slice;
    entry["cell"] = picked.plan.cell;
    entry["chunk"] = picked.plan.chunk;
    entry["shared_bytes"] = picked.plan.shared_bytes;
    result[name] = entry;
  }
  return result;
}

}  // namespace carafe_exp
