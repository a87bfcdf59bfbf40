// The simple CUDA kernels of CARAFE (upsampling) and CARAFE++ (downsampling): one thread per
// element of the tensor being produced, each computing a gather.
//
// The output sums over taps, the kernel gradient over the channels of its group, and the feature
// gradient over the outputs that read the pixel. No thread writes another thread's element, so
// there are no atomics and the backward pass is deterministic. Shared memory is not used, so
// there is no limit on k*k*groups (mmcv overflows it past 384): these kernels are the fallback
// for every call the tiled kernels (carafe_cuda_tiled.cuh) cannot take. Tensors are read through
// their strides (channels-last included) with 64-bit offsets, half types accumulate in float
// (at::opmath_type), and grid-stride loops cover any number of elements with a capped grid.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>

#include "carafe_cuda_compat.h"
#include "carafe_geometry.h"

namespace carafe_exp {
namespace cuda {

constexpr int kSimpleThreads = 256;

// Grid-stride loops cover the rest; the cap keeps the grid size legal for any tensor.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

inline int64_t blocks_for(int64_t elements, int64_t max_blocks = kMaxBlocks) {
  const int64_t needed = (elements + kSimpleThreads - 1) / kSimpleThreads;
  return std::max<int64_t>(1, std::min<int64_t>(needed, max_blocks));
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ features,
                               const scalar_t* __restrict__ kernels, scalar_t* __restrict__ out,
                               Geometry g, Strides4 xs, Strides4 ks, Strides4 os) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = g.batch * g.channels * g.out_h * g.out_w;
  const int64_t k = g.kernel_size, r = g.radius;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t x = idx % g.out_w;
    int64_t rest = idx / g.out_w;
    const int64_t y = rest % g.out_h;
    rest /= g.out_h;
    const int64_t c = rest % g.channels;
    const int64_t n = rest / g.channels;
    const int64_t first_tap = (c / g.group_channels) * g.taps();
    const int64_t sy = g.source(y), sx = g.source(x);
    acc_t acc = 0;
    for (int64_t dy = -r; dy <= r; ++dy) {
      const int64_t iy = sy + dy;
      if (iy < 0 || iy >= g.in_h) continue;
      for (int64_t dx = -r; dx <= r; ++dx) {
        const int64_t ix = sx + dx;
        if (ix < 0 || ix >= g.in_w) continue;
        const int64_t t = (dy + r) * k + (dx + r);
        acc += static_cast<acc_t>(kernels[ks.offset(n, first_tap + t, y, x)]) *
               static_cast<acc_t>(features[xs.offset(n, c, iy, ix)]);
      }
    }
    if (CARAFE_FAULT(global_read_past_end) && idx == total - 1) {
      // Deliberate bug (emulation tests only): one element past the last one of the features.
      touch(features + xs.offset(g.batch - 1, g.channels - 1, g.in_h - 1, g.in_w - 1) + 1);
    }
    out[os.offset(n, c, y, x)] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void grad_kernels_kernel(const scalar_t* __restrict__ grad_out,
                                    const scalar_t* __restrict__ features,
                                    scalar_t* __restrict__ grad_kernels, Geometry g,
                                    Strides4 gos, Strides4 xs, Strides4 gks) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps();
  const int64_t total = g.batch * g.groups * taps * g.out_h * g.out_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t x = idx % g.out_w;
    int64_t rest = idx / g.out_w;
    const int64_t y = rest % g.out_h;
    rest /= g.out_h;
    const int64_t kc = rest % (g.groups * taps);
    const int64_t n = rest / (g.groups * taps);
    const int64_t grp = kc / taps, t = kc % taps;
    const int64_t iy = g.source(y) + t / g.kernel_size - g.radius;
    const int64_t ix = g.source(x) + t % g.kernel_size - g.radius;
    acc_t acc = 0;
    if (iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w) {
      for (int64_t c = grp * g.group_channels; c < (grp + 1) * g.group_channels; ++c) {
        acc += static_cast<acc_t>(grad_out[gos.offset(n, c, y, x)]) *
               static_cast<acc_t>(features[xs.offset(n, c, iy, ix)]);
      }
    }
    grad_kernels[gks.offset(n, kc, y, x)] = static_cast<scalar_t>(acc);
  }
}

// Output positions along one axis that read input position `i` through offset `d`:
// [first, first + count). Upsampling: s consecutive outputs; downsampling: at most one.
struct Readers {
  int64_t first, count;
};

__device__ __forceinline__ Readers readers_of(const Geometry& g, int64_t i, int64_t d,
                                              int64_t in_size, int64_t out_size) {
  const int64_t src = i - d;
  if (src < 0 || src >= in_size) return {0, 0};
  if (!g.down) return {src * g.scale, g.scale};
  if (src % g.scale != 0 || src / g.scale >= out_size) return {0, 0};
  return {src / g.scale, 1};
}

template <typename scalar_t>
__global__ void grad_features_kernel(const scalar_t* __restrict__ grad_out,
                                     const scalar_t* __restrict__ kernels,
                                     scalar_t* __restrict__ grad_features, Geometry g,
                                     Strides4 gos, Strides4 ks, Strides4 gxs) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = g.batch * g.channels * g.in_h * g.in_w;
  const int64_t k = g.kernel_size, r = g.radius;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t j = idx % g.in_w;
    int64_t rest = idx / g.in_w;
    const int64_t i = rest % g.in_h;
    rest /= g.in_h;
    const int64_t c = rest % g.channels;
    const int64_t n = rest / g.channels;
    const int64_t first_tap = (c / g.group_channels) * g.taps();
    acc_t acc = 0;
    for (int64_t dy = -r; dy <= r; ++dy) {
      const Readers rows = readers_of(g, i, dy, g.in_h, g.out_h);
      for (int64_t dx = -r; dx <= r; ++dx) {
        const Readers cols = readers_of(g, j, dx, g.in_w, g.out_w);
        const int64_t kc = first_tap + (dy + r) * k + (dx + r);
        for (int64_t y = rows.first; y < rows.first + rows.count; ++y) {
          for (int64_t x = cols.first; x < cols.first + cols.count; ++x) {
            acc += static_cast<acc_t>(kernels[ks.offset(n, kc, y, x)]) *
                   static_cast<acc_t>(grad_out[gos.offset(n, c, y, x)]);
          }
        }
      }
    }
    grad_features[gxs.offset(n, c, i, j)] = static_cast<scalar_t>(acc);
  }
}

}  // namespace cuda
}  // namespace carafe_exp
