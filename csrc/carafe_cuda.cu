// CUDA forward and backward kernels of CARAFE (upsampling) and CARAFE++ (downsampling).
//
// One thread per element of the tensor being produced, each computing a gather: the output
// sums over taps, the kernel gradient over the channels of its group, and the feature
// gradient over the outputs that read the pixel. No thread writes another thread's element,
// so there are no atomics and the backward pass is deterministic. Shared memory is not
// used, which is why there is no limit on k*k*groups (mmcv overflows it past 384). Tensors
// are read through their strides (channels-last included) with 64-bit offsets, and half
// types accumulate in float (at::opmath_type).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
// c10's stream header rather than ATen/cuda/CUDAContext.h: the latter pulls in the cuBLAS and
// cuSPARSE headers, which a bare CUDA toolkit may lack and these kernels do not use.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "carafe.h"

namespace carafe_exp {
namespace {

constexpr int kThreads = 256;

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

int64_t blocks_for(int64_t elements) {
  // Grid-stride loops cover the rest; the cap keeps the grid size legal for any tensor.
  const int64_t needed = (elements + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(1) << 20));
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

}  // namespace

void carafe_forward_cuda(const at::Tensor& features, const at::Tensor& kernels,
                         at::Tensor& output, const Geometry& geometry) {
  const c10::cuda::CUDAGuard guard(features.device());
  if (output.numel() == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "carafe_forward_cuda", [&] {
        forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, stream>>>(
            features.const_data_ptr<scalar_t>(), kernels.const_data_ptr<scalar_t>(),
            output.mutable_data_ptr<scalar_t>(), geometry, strides_of(features),
            strides_of(kernels), strides_of(output));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void carafe_backward_cuda(const at::Tensor& grad_output, const at::Tensor& features,
                          const at::Tensor& kernels, at::Tensor& grad_features,
                          at::Tensor& grad_kernels, const Geometry& geometry) {
  const c10::cuda::CUDAGuard guard(features.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "carafe_backward_cuda", [&] {
        if (grad_kernels.numel() > 0) {
          grad_kernels_kernel<scalar_t>
              <<<blocks_for(grad_kernels.numel()), kThreads, 0, stream>>>(
                  grad_output.const_data_ptr<scalar_t>(), features.const_data_ptr<scalar_t>(),
                  grad_kernels.mutable_data_ptr<scalar_t>(), geometry, strides_of(grad_output),
                  strides_of(features), strides_of(grad_kernels));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (grad_features.numel() > 0) {
          grad_features_kernel<scalar_t>
              <<<blocks_for(grad_features.numel()), kThreads, 0, stream>>>(
                  grad_output.const_data_ptr<scalar_t>(), kernels.const_data_ptr<scalar_t>(),
                  grad_features.mutable_data_ptr<scalar_t>(), geometry, strides_of(grad_output),
                  strides_of(kernels), strides_of(grad_features));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
}

}  // namespace carafe_exp
