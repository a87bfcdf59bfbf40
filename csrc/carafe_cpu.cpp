// CPU forward and backward kernels of CARAFE (upsampling) and CARAFE++ (downsampling).
//
// Layout of the work: every task is one (batch, group, row) triple, run in parallel with
// at::parallel_for. Within a task the columns are processed in blocks; for one block the
// kernel weights of all k*k taps are converted once into a float buffer (shared by all
// channels of the group) and one input row per (channel, dy) is expanded into a small
// "row buffer" in which the value read by output column x at horizontal offset dx sits at a
// fixed shift from x. The hot loop then is `acc[i] += weight[i] * row[i + shift]` over
// contiguous floats, which the compiler vectorises, whatever the strides of the tensors
// (channels-last included): strides are only used when filling and draining the buffers.
// Half types accumulate in float (at::opmath_type). Nothing output-sized is allocated.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "carafe.h"

namespace carafe_exp {
namespace {

// Output columns per block: the k*k weight rows of a block stay in L1/L2 across channels.
constexpr int64_t kColumnBlock = 256;
// Upper bound on the per-task gradient accumulator (channels of a group x input columns).
constexpr int64_t kAccumulatorElements = 32768;

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The row buffer that turns the horizontal gather into shifted contiguous reads.
//
// Upsampling: buffer[j] holds the input value that output column (x0 - s*r + j) reads at
// offset 0 (nearest upsampling of the row), so output column x0+i at offset dx reads
// buffer[i + s*(dx+r)].
// Downsampling: the input row is split into s phases; phase p holds input columns
// s*m + p for m = x0 + q_min + j, so output column x0+i at offset dx = s*q + p reads
// phase p at position i + q - q_min.
struct RowLayout {
  int64_t length = 0;        // total floats in the buffer
  int64_t phase_length = 0;  // downsampling: floats per phase
  int64_t q_min = 0;         // downsampling: floor(-r / s)
  std::vector<int64_t> shift;  // per dx in [0, k): where output column 0 reads

  RowLayout(const Geometry& g, int64_t block) : shift(g.kernel_size) {
    const int64_t r = g.radius, s = g.scale;
    if (!g.down) {
      length = block + 2 * s * r;
      for (int64_t d = 0; d < g.kernel_size; ++d) shift[d] = s * d;
    } else {
      q_min = floor_div(-r, s);
      const int64_t q_max = floor_div(r, s);
      phase_length = block + (q_max - q_min);
      length = s * phase_length;
      for (int64_t d = 0; d < g.kernel_size; ++d) {
        const int64_t dx = d - r;
        const int64_t q = floor_div(dx, s);
        const int64_t p = dx - q * s;
        shift[d] = p * phase_length + (q - q_min);
      }
    }
  }
};

template <typename scalar_t, typename acc_t>
void fill_row_buffer(const scalar_t* row, int64_t stride_w, const Geometry& g,
                     const RowLayout& layout, int64_t x0, acc_t* buffer) {
  const int64_t s = g.scale, width = g.in_w;
  if (!g.down) {
    // Walk input columns instead of dividing per element: s consecutive entries share one.
    int64_t ix = x0 / s - g.radius;
    int64_t phase = x0 % s;
    for (int64_t j = 0; j < layout.length; ++j) {
      buffer[j] = (ix >= 0 && ix < width) ? static_cast<acc_t>(row[ix * stride_w]) : acc_t(0);
      if (++phase == s) {
        phase = 0;
        ++ix;
      }
    }
  } else {
    for (int64_t p = 0; p < s; ++p) {
      acc_t* phase_buffer = buffer + p * layout.phase_length;
      int64_t ix = s * (x0 + layout.q_min) + p;
      for (int64_t j = 0; j < layout.phase_length; ++j, ix += s) {
        phase_buffer[j] =
            (ix >= 0 && ix < width) ? static_cast<acc_t>(row[ix * stride_w]) : acc_t(0);
      }
    }
  }
}

template <typename acc_t>
inline void multiply_accumulate(acc_t* __restrict__ acc, const acc_t* __restrict__ a,
                                const acc_t* __restrict__ b, int64_t count) {
  for (int64_t i = 0; i < count; ++i) acc[i] += a[i] * b[i];
}

template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* row, int64_t stride_w, int64_t count, acc_t* out) {
  if (stride_w == 1) {
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<acc_t>(row[i]);
  } else {
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<acc_t>(row[i * stride_w]);
  }
}

template <typename scalar_t, typename acc_t>
inline void store_row(const acc_t* values, int64_t count, scalar_t* row, int64_t stride_w) {
  if (stride_w == 1) {
    for (int64_t i = 0; i < count; ++i) row[i] = static_cast<scalar_t>(values[i]);
  } else {
    for (int64_t i = 0; i < count; ++i) row[i * stride_w] = static_cast<scalar_t>(values[i]);
  }
}

// Loads the weights of `taps` consecutive kernel channels starting at `first_channel`, row y,
// columns [x_lo, x_lo + count) into buffer rows of `pitch` floats; columns outside [0, out_w)
// become zero so that products with them vanish.
template <typename scalar_t, typename acc_t>
void load_weights(const scalar_t* kernels, const Strides4& ks, const Geometry& g, int64_t n,
                  int64_t first_channel, int64_t taps, int64_t y, int64_t x_lo, int64_t count,
                  int64_t pitch, acc_t* buffer) {
  const int64_t valid_lo = std::min<int64_t>(count, std::max<int64_t>(0, -x_lo));
  const int64_t valid_hi = std::max<int64_t>(valid_lo, std::min<int64_t>(count, g.out_w - x_lo));
  for (int64_t t = 0; t < taps; ++t) {
    acc_t* dst = buffer + t * pitch;
    const scalar_t* src = kernels + ks.offset(n, first_channel + t, y, 0);
    for (int64_t i = 0; i < valid_lo; ++i) dst[i] = acc_t(0);
    load_row(src + (x_lo + valid_lo) * ks.w, ks.w, valid_hi - valid_lo, dst + valid_lo);
    for (int64_t i = valid_hi; i < count; ++i) dst[i] = acc_t(0);
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& features, const at::Tensor& kernels, at::Tensor& output,
                  const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_data = features.const_data_ptr<scalar_t>();
  const scalar_t* k_data = kernels.const_data_ptr<scalar_t>();
  scalar_t* o_data = output.mutable_data_ptr<scalar_t>();
  const Strides4 xs = strides_of(features), ks = strides_of(kernels), os = strides_of(output);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius;
  const int64_t block = std::min(kColumnBlock, g.out_w);
  const RowLayout layout(g, block);
  const int64_t tasks = g.batch * g.groups * g.out_h;

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(taps * block), row_buffer(layout.length), acc(block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % g.out_h;
      const int64_t grp = (task / g.out_h) % g.groups;
      const int64_t n = task / (g.out_h * g.groups);
      const int64_t src_y = g.source(y);
      for (int64_t x0 = 0; x0 < g.out_w; x0 += block) {
        const int64_t count = std::min(block, g.out_w - x0);
        load_weights(k_data, ks, g, n, grp * taps, taps, y, x0, count, block, weights.data());
        for (int64_t c = grp * g.group_channels; c < (grp + 1) * g.group_channels; ++c) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t dy = -r; dy <= r; ++dy) {
            const int64_t iy = src_y + dy;
            if (iy < 0 || iy >= g.in_h) continue;
            fill_row_buffer(x_data + xs.offset(n, c, iy, 0), xs.w, g, layout, x0,
                            row_buffer.data());
            const acc_t* tap_weights = weights.data() + (dy + r) * k * block;
            for (int64_t d = 0; d < k; ++d) {
              multiply_accumulate(acc.data(), tap_weights + d * block,
                                  row_buffer.data() + layout.shift[d], count);
            }
          }
          store_row(acc.data(), count, o_data + os.offset(n, c, y, x0), os.w);
        }
      }
    }
  });
}

// dK[n, g*k*k + t, y, x] = sum_{c in group g} dOut[n, c, y, x] * X[n, c, src + d_t]:
// the forward loop with the roles of the weights and the accumulator exchanged.
template <typename scalar_t>
void grad_kernels_impl(const at::Tensor& grad_output, const at::Tensor& features,
                       at::Tensor& grad_kernels, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_data = features.const_data_ptr<scalar_t>();
  const scalar_t* go_data = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gk_data = grad_kernels.mutable_data_ptr<scalar_t>();
  const Strides4 xs = strides_of(features), gos = strides_of(grad_output),
                 gks = strides_of(grad_kernels);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius;
  const int64_t block = std::min(kColumnBlock, g.out_w);
  const RowLayout layout(g, block);
  const int64_t tasks = g.batch * g.groups * g.out_h;

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad_weights(taps * block), row_buffer(layout.length), grad_row(block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % g.out_h;
      const int64_t grp = (task / g.out_h) % g.groups;
      const int64_t n = task / (g.out_h * g.groups);
      const int64_t src_y = g.source(y);
      for (int64_t x0 = 0; x0 < g.out_w; x0 += block) {
        const int64_t count = std::min(block, g.out_w - x0);
        std::fill(grad_weights.begin(), grad_weights.end(), acc_t(0));
        for (int64_t c = grp * g.group_channels; c < (grp + 1) * g.group_channels; ++c) {
          load_row(go_data + gos.offset(n, c, y, x0), gos.w, count, grad_row.data());
          for (int64_t dy = -r; dy <= r; ++dy) {
            const int64_t iy = src_y + dy;
            if (iy < 0 || iy >= g.in_h) continue;
            fill_row_buffer(x_data + xs.offset(n, c, iy, 0), xs.w, g, layout, x0,
                            row_buffer.data());
            acc_t* tap_grads = grad_weights.data() + (dy + r) * k * block;
            for (int64_t d = 0; d < k; ++d) {
              multiply_accumulate(tap_grads + d * block, grad_row.data(),
                                  row_buffer.data() + layout.shift[d], count);
            }
          }
        }
        for (int64_t t = 0; t < taps; ++t) {
          store_row(grad_weights.data() + t * block, count,
                    gk_data + gks.offset(n, grp * taps + t, y, x0), gks.w);
        }
      }
    }
  });
}

// Column block of the features gradient such that the per-task accumulator (all channels of
// a group) stays cache-sized.
int64_t input_column_block(const Geometry& g) {
  const int64_t by_cache = kAccumulatorElements / std::max<int64_t>(1, g.group_channels);
  return std::min(g.in_w, std::max<int64_t>(16, std::min(kColumnBlock, by_cache)));
}

// Upsampling, gradient of the features. Input pixel (i, j) is read through tap (dy, dx) by
// the s*s outputs (s*(i-dy) + a, s*(j-dx) + b), a, b in [0, s). For one input row i and one
// dy the contributing output rows are s*(i-dy) + a; the products K*dOut over those rows and
// the s columns of each block are pooled to input resolution and then shifted by dx.
template <typename scalar_t>
void grad_features_up_impl(const at::Tensor& grad_output, const at::Tensor& kernels,
                           at::Tensor& grad_features, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* k_data = kernels.const_data_ptr<scalar_t>();
  const scalar_t* go_data = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gx_data = grad_features.mutable_data_ptr<scalar_t>();
  const Strides4 ks = strides_of(kernels), gos = strides_of(grad_output),
                 gxs = strides_of(grad_features);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius, s = g.scale;
  const int64_t block = input_column_block(g);
  const int64_t pooled_len = block + 2 * r;   // input columns m = j0 - r .. j0 + block + r
  const int64_t span = s * pooled_len;         // output columns covering them
  const int64_t cg = g.group_channels;
  const int64_t tasks = g.batch * g.groups * g.in_h;

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    // weights[a][d][xx]: row s*(i-dy)+a, tap (dy, d-r); grads[a][xx]: dOut rows of a channel.
    std::vector<acc_t> weights(s * k * span), grads(s * span), products(span),
        pooled(pooled_len), acc(cg * block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task % g.in_h;
      const int64_t grp = (task / g.in_h) % g.groups;
      const int64_t n = task / (g.in_h * g.groups);
      for (int64_t j0 = 0; j0 < g.in_w; j0 += block) {
        const int64_t count = std::min(block, g.in_w - j0);
        const int64_t x_lo = s * (j0 - r);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t dy = -r; dy <= r; ++dy) {
          const int64_t ip = i - dy;
          if (ip < 0 || ip >= g.in_h) continue;
          for (int64_t a = 0; a < s; ++a) {
            load_weights(k_data, ks, g, n, grp * taps + (dy + r) * k, k, s * ip + a, x_lo, span,
                         span, weights.data() + a * k * span);
          }
          for (int64_t cc = 0; cc < cg; ++cc) {
            const int64_t c = grp * cg + cc;
            for (int64_t a = 0; a < s; ++a) {
              // Reuse load_weights for its zero padding outside [0, out_w).
              load_weights(go_data, gos, g, n, c, 1, s * ip + a, x_lo, span, span,
                           grads.data() + a * span);
            }
            acc_t* acc_c = acc.data() + cc * block;
            for (int64_t d = 0; d < k; ++d) {
              std::fill(products.begin(), products.end(), acc_t(0));
              for (int64_t a = 0; a < s; ++a) {
                multiply_accumulate(products.data(), weights.data() + (a * k + d) * span,
                                    grads.data() + a * span, span);
              }
              if (s == 1) {
                std::copy(products.begin(), products.end(), pooled.begin());
              } else {
                for (int64_t m = 0; m < pooled_len; ++m) {
                  acc_t sum = 0;
                  for (int64_t b = 0; b < s; ++b) sum += products[m * s + b];
                  pooled[m] = sum;
                }
              }
              // Input column j0+jj reads pooled column (j0+jj) - dx, i.e. index jj + r - dx.
              const acc_t* shifted = pooled.data() + (2 * r - d);
              for (int64_t jj = 0; jj < count; ++jj) acc_c[jj] += shifted[jj];
            }
          }
        }
        for (int64_t cc = 0; cc < cg; ++cc) {
          store_row(acc.data() + cc * block, count,
                    gx_data + gxs.offset(n, grp * cg + cc, i, j0), gxs.w);
        }
      }
    }
  });
}

// Downsampling, gradient of the features. Input pixel (i, j) is read through tap (dy, dx)
// by the single output (y, x) with s*y + dy = i and s*x + dx = j, when those are integers
// inside the output.
template <typename scalar_t>
void grad_features_down_impl(const at::Tensor& grad_output, const at::Tensor& kernels,
                             at::Tensor& grad_features, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* k_data = kernels.const_data_ptr<scalar_t>();
  const scalar_t* go_data = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gx_data = grad_features.mutable_data_ptr<scalar_t>();
  const Strides4 ks = strides_of(kernels), gos = strides_of(grad_output),
                 gxs = strides_of(grad_features);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius, s = g.scale;
  const int64_t block = input_column_block(g);
  const int64_t span = ceil_div(block + 2 * r, s) + 1;  // output columns touching a block
  const int64_t cg = g.group_channels;
  const int64_t tasks = g.batch * g.groups * g.in_h;

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(k * span), grads(span), acc(cg * block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task % g.in_h;
      const int64_t grp = (task / g.in_h) % g.groups;
      const int64_t n = task / (g.in_h * g.groups);
      for (int64_t j0 = 0; j0 < g.in_w; j0 += block) {
        const int64_t count = std::min(block, g.in_w - j0);
        const int64_t x_lo = ceil_div(j0 - r, s);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t dy = -r; dy <= r; ++dy) {
          const int64_t yy = i - dy;
          if (yy < 0 || yy % s != 0 || yy / s >= g.out_h) continue;
          const int64_t y = yy / s;
          load_weights(k_data, ks, g, n, grp * taps + (dy + r) * k, k, y, x_lo, span, span,
                       weights.data());
          for (int64_t cc = 0; cc < cg; ++cc) {
            const int64_t c = grp * cg + cc;
            load_weights(go_data, gos, g, n, c, 1, y, x_lo, span, span, grads.data());
            acc_t* acc_c = acc.data() + cc * block;
            for (int64_t d = 0; d < k; ++d) {
              const int64_t dx = d - r;
              // Outputs x with j0 <= s*x + dx < j0 + count, relative to x_lo.
              const int64_t lo = ceil_div(j0 - dx, s) - x_lo;
              const int64_t hi = floor_div(j0 + count - 1 - dx, s) - x_lo;
              const acc_t* w = weights.data() + d * span;
              acc_t* target = acc_c + (s * (x_lo + lo) + dx - j0);
              for (int64_t xx = lo; xx <= hi; ++xx, target += s) {
                *target += w[xx] * grads[xx];
              }
            }
          }
        }
        for (int64_t cc = 0; cc < cg; ++cc) {
          store_row(acc.data() + cc * block, count,
                    gx_data + gxs.offset(n, grp * cg + cc, i, j0), gxs.w);
        }
      }
    }
  });
}

}  // namespace

void carafe_forward_cpu(const at::Tensor& features, const at::Tensor& kernels,
                        at::Tensor& output, const Geometry& geometry) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                  "carafe_forward_cpu", [&] {
                                    forward_impl<scalar_t>(features, kernels, output, geometry);
                                  });
}

void carafe_backward_cpu(const at::Tensor& grad_output, const at::Tensor& features,
                         const at::Tensor& kernels, at::Tensor& grad_features,
                         at::Tensor& grad_kernels, const Geometry& geometry) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "carafe_backward_cpu", [&] {
        grad_kernels_impl<scalar_t>(grad_output, features, grad_kernels, geometry);
        if (geometry.down) {
          grad_features_down_impl<scalar_t>(grad_output, kernels, grad_features, geometry);
        } else {
          grad_features_up_impl<scalar_t>(grad_output, kernels, grad_features, geometry);
        }
      });
}

}  // namespace carafe_exp
