// CPU kernel gradient of CARAFE / CARAFE++: every element is a gather over the channels of its
// group, computed by exactly one task (no atomics, deterministic). Half types accumulate in float.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "carafe_cpu_backward.h"
#include "carafe_cpu_common.h"
#include "carafe_cpu_input_rows.h"
#include "carafe_cpu_rows.h"
#include "carafe_cpu_simd.h"

namespace carafe_exp {
namespace cpu {
namespace {


// dK[n, g*k*k + t, y, x] = sum_{c in group g} dOut[n, c, y, x] * X[n, c, src + d_t]: the forward
// loop with the weights and the accumulator exchanged.
template <typename scalar_t>
void grad_kernels_impl(const at::Tensor& grad_output, const at::Tensor& features,
                       at::Tensor& grad_kernels, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_data = features.const_data_ptr<scalar_t>();
  const scalar_t* go_data = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gk_data = grad_kernels.mutable_data_ptr<scalar_t>();
  const Strides4 xs = strides_of(features), gos = strides_of(grad_output),
                 gks = strides_of(grad_kernels);
  const bool streaming = streams(grad_kernels);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius;
  const int64_t rows_per_task = g.down ? 1 : g.scale;
  const int64_t task_rows = g.down ? g.out_h : g.in_h;
  const int64_t block = even_block(g.out_w);
  const InputRows layout(g, block);

  const int64_t grain = grain_for(g.group_channels * rows_per_task * g.out_w * taps);
  at::parallel_for(0, g.batch * g.groups * task_rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grads(rows_per_task * taps * block), inputs(k * layout.pitch),
        grad_row(block);
    std::vector<const acc_t*> b(taps);
    std::vector<acc_t*> acc(taps), acc_row(taps);
    for (int64_t task_id = begin; task_id < end; ++task_id) {
      const Task task = decode(task_id, task_rows, g.groups);
      const int64_t first_out_row = task.row * rows_per_task;
      const int64_t src_y = g.source(first_out_row);
      for (int64_t x0 = 0; x0 < g.out_w; x0 += block) {
        const int64_t count = std::min(block, g.out_w - x0);
        std::fill(grads.begin(), grads.end(), acc_t(0));
        for (int64_t c = task.grp * g.group_channels; c < (task.grp + 1) * g.group_channels; ++c) {
          int64_t terms = 0;
          for (int64_t dy = -r; dy <= r; ++dy) {
            const int64_t iy = src_y + dy;
            if (iy < 0 || iy >= g.in_h) continue;
            acc_t* row = inputs.data() + (dy + r) * layout.pitch;
            layout.fill(x_data + xs.offset(task.n, c, iy, 0), xs.w, g, x0, count, row);
            for (int64_t d = 0; d < k; ++d) {
              b[terms] = row + layout.shift[d];
              acc[terms] = grads.data() + ((dy + r) * k + d) * block;
              ++terms;
            }
          }
          for (int64_t a_row = 0; a_row < rows_per_task; ++a_row) {
            load_padded(go_data + gos.offset(task.n, c, first_out_row + a_row, 0), gos.w, g.out_w,
                        x0, count, grad_row.data());
            for (int64_t t = 0; t < terms; ++t) acc_row[t] = acc[t] + a_row * taps * block;
            scale_accumulate_rows(grad_row.data(), b.data(), acc_row.data(), terms, count);
          }
        }
        // Taps whose input row is outside the map stay zero, as their gradient is.
        for (int64_t a_row = 0; a_row < rows_per_task; ++a_row) {
          for (int64_t t = 0; t < taps; ++t) {
            store_row(grads.data() + (a_row * taps + t) * block, count,
                      gk_data + gks.offset(task.n, task.grp * taps + t, first_out_row + a_row, x0),
                      gks.w, streaming);
          }
        }
      }
    }
    stream_fence();
  });
}

}  // namespace

void grad_kernels_cpu(const at::Tensor& grad_output, const at::Tensor& features,
                      at::Tensor& grad_kernels, const Geometry& geometry) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                  "carafe_grad_kernels_cpu", [&] {
                                    grad_kernels_impl<scalar_t>(grad_output, features, grad_kernels,
                                                                geometry);
                                  });
}

}  // namespace cpu
}  // namespace carafe_exp
