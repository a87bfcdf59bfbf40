// CPU feature gradient of CARAFE (upsampling) and CARAFE++ (downsampling): every input pixel
// gathers over the outputs that read it, computed by exactly one task (no atomics,
// deterministic). Half types accumulate in float.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "carafe_cpu_backward.h"
#include "carafe_cpu_common.h"
#include "carafe_cpu_rows.h"
#include "carafe_cpu_simd.h"

namespace carafe_exp {
namespace cpu {
namespace {


// Upsampling. dX[i, j] = sum_b F[s*j + b] with, at output resolution,
//   F[x] = sum_{dy, a, dx} K_t[s*(i-dy) + a, x - s*dx] * dOut[s*(i-dy) + a, x - s*dx],
// i.e. the products K*dOut of the s output rows of every source row i-dy, shifted by s*dx
// and pooled over the s columns that share a source pixel. F is a dot_rows sum.
template <typename scalar_t>
void grad_features_up_impl(const at::Tensor& grad_output, const at::Tensor& kernels,
                           at::Tensor& grad_features, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* k_data = kernels.const_data_ptr<scalar_t>();
  const scalar_t* go_data = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gx_data = grad_features.mutable_data_ptr<scalar_t>();
  const Strides4 ks = strides_of(kernels), gos = strides_of(grad_output),
                 gxs = strides_of(grad_features);
  const bool streaming = streams(grad_features);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius, s = g.scale;
  const int64_t block = std::min(g.in_w, std::max<int64_t>(1, kColumnBlock / s));  // input columns
  const int64_t span = s * (block + 2 * r);  // output columns read by one block
  const int64_t max_terms = k * s * k;

  const int64_t grain = grain_for(g.group_channels * g.in_w * taps * (g.down ? 1 : s * s));
  at::parallel_for(0, g.batch * g.groups * g.in_h, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(max_terms * span), grads(k * s * span), pooled_src(s * block),
        result(block);
    std::vector<const acc_t*> a(max_terms), b(max_terms);
    for (int64_t task_id = begin; task_id < end; ++task_id) {
      const Task task = decode(task_id, g.in_h, g.groups);
      const int64_t i = task.row;
      for (int64_t j0 = 0; j0 < g.in_w; j0 += block) {
        const int64_t count = std::min(block, g.in_w - j0);
        const int64_t x_lo = s * (j0 - r);
        // Weights of every valid (dy, a, dx), shared by the channels of the group.
        for (int64_t dy = -r; dy <= r; ++dy) {
          const int64_t ip = i - dy;
          if (ip < 0 || ip >= g.in_h) continue;
          for (int64_t a_row = 0; a_row < s; ++a_row) {
            for (int64_t d = 0; d < k; ++d) {
              const int64_t term = ((dy + r) * s + a_row) * k + d;
              load_padded(k_data + ks.offset(task.n, task.grp * taps + (dy + r) * k + d,
                                             s * ip + a_row, 0),
                          ks.w, g.out_w, x_lo, span, weights.data() + term * span);
            }
          }
        }
        for (int64_t c = task.grp * g.group_channels; c < (task.grp + 1) * g.group_channels; ++c) {
          int64_t terms = 0;
          for (int64_t dy = -r; dy <= r; ++dy) {
            const int64_t ip = i - dy;
            if (ip < 0 || ip >= g.in_h) continue;
            for (int64_t a_row = 0; a_row < s; ++a_row) {
              acc_t* grad_row = grads.data() + ((dy + r) * s + a_row) * span;
              load_padded(go_data + gos.offset(task.n, c, s * ip + a_row, 0), gos.w, g.out_w, x_lo,
                          span, grad_row);
              for (int64_t d = 0; d < k; ++d) {
                // F[x] (x relative to s*j0) reads buffer index x + s*r - s*dx = x + s*(2r - d).
                const int64_t shift = s * (2 * r - d);
                a[terms] = weights.data() + (((dy + r) * s + a_row) * k + d) * span + shift;
                b[terms] = grad_row + shift;
                ++terms;
              }
            }
          }
          dot_rows(a.data(), b.data(), terms, s * count, pooled_src.data());
          for (int64_t jj = 0; jj < count; ++jj) {
            acc_t sum = 0;
            for (int64_t p = 0; p < s; ++p) sum += pooled_src[s * jj + p];
            result[jj] = sum;
          }
          store_row(result.data(), count, gx_data + gxs.offset(task.n, c, i, j0), gxs.w, streaming);
        }
      }
    }
    stream_fence();
  });
}

// Downsampling. Input pixel (i, j) is read through tap (dy, dx) by the single output (y, x)
// with s*y + dy = i and s*x + dx = j, when those are integers inside the output. Input
// columns are accumulated by phase p = j mod s (then interleaved), so that every term is a
// contiguous row: phase p, position m (j = j0 + s*m + p) collects from each dx = s*q + p the
// product K_t * dOut at output column j0/s + m - q.
template <typename scalar_t>
void grad_features_down_impl(const at::Tensor& grad_output, const at::Tensor& kernels,
                             at::Tensor& grad_features, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* k_data = kernels.const_data_ptr<scalar_t>();
  const scalar_t* go_data = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gx_data = grad_features.mutable_data_ptr<scalar_t>();
  const Strides4 ks = strides_of(kernels), gos = strides_of(grad_output),
                 gxs = strides_of(grad_features);
  const bool streaming = streams(grad_features);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius, s = g.scale;
  const int64_t q_min = floor_div(-r, s), q_max = floor_div(r, s);
  // Input columns per block: a multiple of s so that block starts are phase 0.
  const int64_t positions = std::max<int64_t>(1, std::min(ceil_div(g.in_w, s), kColumnBlock / s));
  const int64_t block = positions * s;
  const int64_t span = positions + q_max - q_min;  // output columns read by one block

  const int64_t grain = grain_for(g.group_channels * g.in_w * taps * (g.down ? 1 : s * s));
  at::parallel_for(0, g.batch * g.groups * g.in_h, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(k * k * span), grads(k * span), phases(s * positions),
        result(block);
    std::vector<const acc_t*> a(k * k), b(k * k);
    for (int64_t task_id = begin; task_id < end; ++task_id) {
      const Task task = decode(task_id, g.in_h, g.groups);
      const int64_t i = task.row;
      for (int64_t j0 = 0; j0 < g.in_w; j0 += block) {
        const int64_t count = std::min(block, g.in_w - j0);
        const int64_t x_lo = j0 / s - q_max;
        for (int64_t dy = -r; dy <= r; ++dy) {
          const int64_t yy = i - dy;
          if (yy < 0 || yy % s != 0 || yy / s >= g.out_h) continue;
          for (int64_t d = 0; d < k; ++d) {
            load_padded(k_data + ks.offset(task.n, task.grp * taps + (dy + r) * k + d, yy / s, 0),
                        ks.w, g.out_w, x_lo, span, weights.data() + ((dy + r) * k + d) * span);
          }
        }
        for (int64_t c = task.grp * g.group_channels; c < (task.grp + 1) * g.group_channels; ++c) {
          for (int64_t dy = -r; dy <= r; ++dy) {
            const int64_t yy = i - dy;
            if (yy < 0 || yy % s != 0 || yy / s >= g.out_h) continue;
            load_padded(go_data + gos.offset(task.n, c, yy / s, 0), gos.w, g.out_w, x_lo, span,
                        grads.data() + (dy + r) * span);
          }
          for (int64_t p = 0; p < s; ++p) {
            int64_t terms = 0;
            for (int64_t dy = -r; dy <= r; ++dy) {
              const int64_t yy = i - dy;
              if (yy < 0 || yy % s != 0 || yy / s >= g.out_h) continue;
              for (int64_t d = 0; d < k; ++d) {
                const int64_t dx = d - r, q = floor_div(dx, s);
                if (dx - q * s != p) continue;
                // Output column j0/s + m - q sits at buffer index m + q_max - q.
                const int64_t shift = q_max - q;
                a[terms] = weights.data() + ((dy + r) * k + d) * span + shift;
                b[terms] = grads.data() + (dy + r) * span + shift;
                ++terms;
              }
            }
            acc_t* phase = phases.data() + p * positions;
            if (terms == 0) {
              std::fill(phase, phase + positions, acc_t(0));
            } else {
              dot_rows(a.data(), b.data(), terms, positions, phase);
            }
          }
          for (int64_t p = 0; p < s; ++p) {
            const acc_t* phase = phases.data() + p * positions;
            for (int64_t m = 0; s * m + p < count; ++m) result[s * m + p] = phase[m];
          }
          store_row(result.data(), count, gx_data + gxs.offset(task.n, c, i, j0), gxs.w, streaming);
        }
      }
    }
    stream_fence();
  });
}

}  // namespace

void grad_features_cpu(const at::Tensor& grad_output, const at::Tensor& kernels,
                       at::Tensor& grad_features, const Geometry& geometry) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, kernels.scalar_type(), "carafe_grad_features_cpu", [&] {
        if (geometry.down) {
          grad_features_down_impl<scalar_t>(grad_output, kernels, grad_features, geometry);
        } else {
          grad_features_up_impl<scalar_t>(grad_output, kernels, grad_features, geometry);
        }
      });
}

}  // namespace cpu
}  // namespace carafe_exp
