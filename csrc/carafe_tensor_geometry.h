// The Geometry and strides of one call, read from its tensors, with the checks the kernels rely
// on. Shared by the extension's bindings and the CUDA emulation's (emulation/).
#pragma once

#include <ATen/ATen.h>

#include "carafe_geometry.h"

namespace carafe_exp {

inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Argument checking with readable messages lives in Python (carafe_exp/ops/validation.py); the
// TORCH_CHECKs here only guard the invariants the kernels rely on.
inline Geometry make_geometry(const at::Tensor& features, const at::Tensor& kernels,
                              int64_t kernel_size, int64_t scale, int64_t groups, bool down) {
  TORCH_CHECK(features.dim() == 4 && kernels.dim() == 4, "carafe: expected 4-D tensors");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "carafe: kernel_size must be odd");
  TORCH_CHECK(scale >= 1, "carafe: scale must be >= 1");
  TORCH_CHECK(groups >= 1 && features.size(1) % groups == 0,
              "carafe: groups must divide the channels");
  TORCH_CHECK(features.scalar_type() == kernels.scalar_type(),
              "carafe: features and kernels must share a dtype");
  TORCH_CHECK(features.device() == kernels.device(),
              "carafe: features and kernels must share a device");
  Geometry g;
  g.batch = features.size(0);
  g.channels = features.size(1);
  g.in_h = features.size(2);
  g.in_w = features.size(3);
  g.out_h = down ? (g.in_h + scale - 1) / scale : g.in_h * scale;
  g.out_w = down ? (g.in_w + scale - 1) / scale : g.in_w * scale;
  g.kernel_size = kernel_size;
  g.radius = kernel_size / 2;
  g.scale = scale;
  g.groups = groups;
  g.group_channels = g.channels / groups;
  g.down = down;
  TORCH_CHECK(kernels.size(0) == g.batch && kernels.size(1) == groups * g.taps() &&
                  kernels.size(2) == g.out_h && kernels.size(3) == g.out_w,
              "carafe: kernels have shape ", kernels.sizes(), ", expected (", g.batch, ", ",
              groups * g.taps(), ", ", g.out_h, ", ", g.out_w, ")");
  return g;
}

inline at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// grad_output must have the output's shape and the features' dtype and device (the kernels
// read it through a raw pointer on the features' device).
inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& features,
                              const Geometry& g) {
  TORCH_CHECK(grad_output.device() == features.device(), "carafe: grad_output is on ",
              grad_output.device(), " but features are on ", features.device());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch &&
                  grad_output.size(1) == g.channels && grad_output.size(2) == g.out_h &&
                  grad_output.size(3) == g.out_w &&
                  grad_output.scalar_type() == features.scalar_type(),
              "carafe: grad_output has shape ", grad_output.sizes(), " and dtype ",
              grad_output.scalar_type());
}

}  // namespace carafe_exp
