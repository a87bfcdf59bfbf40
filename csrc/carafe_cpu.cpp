// CPU forward and backward kernels of CARAFE (upsampling) and CARAFE++ (downsampling).
//
// Every quantity the operator computes is, for one row of one channel, a sum of products of
// two rows shifted against each other: out[x] = sum_t K_t[x] * X[x + shift_t] and the same
// for both gradients. The kernels therefore (1) copy the rows they need into small float
// buffers laid out so that every term is a plain contiguous row with a fixed offset (input
// rows upsampled or split into s phases, zero padded at the borders, converted to the
// accumulation type), and (2) evaluate the sums in register-sized column chunks with the
// term loop inside (dot_rows, dot_block_rows and scale_accumulate_rows below, written with
// explicit SIMD vectors). The forward pass computes two channels and, for upsampling, the s
// output rows that read the same input rows together, so each loaded vector feeds several
// FMAs. Strides are used only when filling and draining the buffers, so channels-last and
// other non-contiguous tensors are read in place; nothing output-sized is allocated.
//
// Parallelism: at::parallel_for over (batch, group, row). Kernel weights are shared by the
// channels of a group, so their buffers are filled once per task and reused for every
// channel. Every gradient element is computed by exactly one task as a gather over the
// outputs that read it: no atomics, deterministic results. Half types accumulate in float
// (at::opmath_type).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "carafe.h"

#ifdef __AVX__
#include <immintrin.h>
#endif

namespace carafe_exp {
namespace {

// Output columns per block (the weight buffers of a block stay in L2 across channels).
constexpr int64_t kColumnBlock = 256;

// Task rows per forward task: consecutive rows share input rows, filled once for the band.
constexpr int64_t kForwardBand = 4;

// Multiply-adds below which a parallel_for chunk is not worth waking another thread for
// (ATen's own kernels use a similar grain); tiny calls then run on the calling thread.
constexpr int64_t kParallelGrainWork = int64_t(1) << 20;

int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kParallelGrainWork / std::max<int64_t>(1, work_per_task));
}

// Block width for `columns` output columns: blocks of at most kColumnBlock and nearly equal
// size (no short remainder block), rounded up to 8 columns (a whole float SIMD vector) so that
// dot_block_rows can finish a block's last partial vector with vector instructions.
int64_t even_block(int64_t columns) {
  const int64_t blocks = std::max<int64_t>(1, ceil_div(columns, kColumnBlock));
  return ceil_div(ceil_div(columns, blocks), 8) * 8;
}

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// ---------------------------------------------------------------------------------------
// Row buffers

// dst[i] = row[(x_lo + i) * stride] for x_lo + i in [0, size), else 0; i in [0, count).
template <typename scalar_t, typename acc_t>
void load_padded(const scalar_t* row, int64_t stride, int64_t size, int64_t x_lo, int64_t count,
                 acc_t* dst) {
  const int64_t lo = std::min(count, std::max<int64_t>(0, -x_lo));
  const int64_t hi = std::max(lo, std::min(count, size - x_lo));
  std::fill(dst, dst + lo, acc_t(0));
  const scalar_t* src = row + (x_lo + lo) * stride;
  if (stride == 1) {
    for (int64_t i = lo; i < hi; ++i) dst[i] = static_cast<acc_t>(src[i - lo]);
  } else {
    for (int64_t i = lo; i < hi; ++i) dst[i] = static_cast<acc_t>(src[(i - lo) * stride]);
  }
  std::fill(dst + hi, dst + count, acc_t(0));
}

// Nearest-upsampled input row: dst[i] = row[floor((x_lo + i) / s)], zero outside [0, width).
template <typename scalar_t, typename acc_t>
void load_upsampled(const scalar_t* row, int64_t stride, int64_t width, int64_t s, int64_t x_lo,
                    int64_t count, acc_t* dst) {
  int64_t i = 0;
  int64_t ix = floor_div(x_lo, s);
  int64_t phase = x_lo - ix * s;
  // Leading partial group and left padding, one element at a time.
  for (; i < count && (phase != 0 || ix < 0); ++i) {
    dst[i] = (ix >= 0 && ix < width) ? static_cast<acc_t>(row[ix * stride]) : acc_t(0);
    if (++phase == s) {
      phase = 0;
      ++ix;
    }
  }
  // Interior: whole groups of s equal values, branch free.
  const int64_t groups_left = std::max<int64_t>(0, std::min((count - i) / s, width - ix));
  if (s == 2 && stride == 1) {
    const scalar_t* src = row + ix;
    acc_t* out = dst + i;
    for (int64_t m = 0; m < groups_left; ++m) {
      const acc_t v = static_cast<acc_t>(src[m]);
      out[2 * m] = v;
      out[2 * m + 1] = v;
    }
  } else {
    for (int64_t m = 0; m < groups_left; ++m) {
      const acc_t v = static_cast<acc_t>(row[(ix + m) * stride]);
      for (int64_t p = 0; p < s; ++p) dst[i + m * s + p] = v;
    }
  }
  i += groups_left * s;
  ix += groups_left;
  for (; i < count; ++i) {
    dst[i] = (ix >= 0 && ix < width) ? static_cast<acc_t>(row[ix * stride]) : acc_t(0);
    if (++phase == s) {
      phase = 0;
      ++ix;
    }
  }
}

// Input row split into s phases: phase p, position m holds row[s * (m_lo + m) + p] (zero
// outside [0, width)), each phase `count` long, phases `pitch` apart.
template <typename scalar_t, typename acc_t>
void load_phases(const scalar_t* row, int64_t stride, int64_t width, int64_t s, int64_t m_lo,
                 int64_t count, int64_t pitch, acc_t* dst) {
  if (s == 1) {
    load_padded(row, stride, width, m_lo, count, dst);
    return;
  }
  // Interior positions m where every phase is inside the row.
  const int64_t lo = std::min(count, std::max<int64_t>(0, -m_lo));
  const int64_t hi = std::max(lo, std::min(count, width / s - m_lo));
  if (s == 2 && stride == 1) {
    const scalar_t* src = row + 2 * (m_lo + lo);
    acc_t* even = dst + lo;
    acc_t* odd = dst + pitch + lo;
    for (int64_t m = 0; m < hi - lo; ++m) {
      even[m] = static_cast<acc_t>(src[2 * m]);
      odd[m] = static_cast<acc_t>(src[2 * m + 1]);
    }
  } else {
    for (int64_t p = 0; p < s; ++p) {
      acc_t* phase = dst + p * pitch;
      for (int64_t m = lo; m < hi; ++m) {
        phase[m] = static_cast<acc_t>(row[(s * (m_lo + m) + p) * stride]);
      }
    }
  }
  // The few positions at the borders, where some phases fall outside the row.
  for (int64_t p = 0; p < s; ++p) {
    acc_t* phase = dst + p * pitch;
    auto border = [&](int64_t m) {
      const int64_t ix = s * (m_lo + m) + p;
      phase[m] = (ix >= 0 && ix < width) ? static_cast<acc_t>(row[ix * stride]) : acc_t(0);
    };
    for (int64_t m = 0; m < lo; ++m) border(m);
    for (int64_t m = hi; m < count; ++m) border(m);
  }
}

// Output rows are written once and not read again by the kernel: streaming (non-temporal)
// stores skip reading each destination cache line from memory first, which is a sizeable
// part of the forward pass's memory traffic. Callers issue stream_fence() before returning.
inline bool stream_row(const float* values, int64_t count, float* row) {
#ifdef __AVX__
  int64_t i = 0;
  for (; i < count && (reinterpret_cast<uintptr_t>(row + i) & 31) != 0; ++i) row[i] = values[i];
  for (; i + 8 <= count; i += 8) _mm256_stream_ps(row + i, _mm256_loadu_ps(values + i));
  for (; i < count; ++i) row[i] = values[i];
  return true;
#else
  (void)values, (void)count, (void)row;
  return false;
#endif
}

inline void stream_fence() {
#ifdef __AVX__
  _mm_sfence();
#endif
}

template <typename scalar_t, typename acc_t>
void store_row(const acc_t* values, int64_t count, scalar_t* row, int64_t stride) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (stride == 1 && count >= 64 && stream_row(values, count, row)) return;
  }
  if (stride == 1) {
    for (int64_t i = 0; i < count; ++i) row[i] = static_cast<scalar_t>(values[i]);
  } else {
    for (int64_t i = 0; i < count; ++i) row[i * stride] = static_cast<scalar_t>(values[i]);
  }
}

// ---------------------------------------------------------------------------------------
// Sums of products of shifted rows

// Explicit SIMD vectors (GCC/Clang vector extensions): left to itself the compiler
// vectorises the term loop with gathers instead of the column loop. 32-byte vectors are
// lowered to whatever the target has (AVX-512, AVX2, SSE pairs, NEON pairs).
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int64_t lanes = 8;
};
template <>
struct Simd<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int64_t lanes = 4;
};

template <typename T>
inline typename Simd<T>::type load_vec(const T* p) {
  typename Simd<T>::type v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

template <typename T>
inline void store_vec(T* p, typename Simd<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// Vectors per register chunk: enough independent accumulators to hide the FMA latency.
constexpr int64_t kChunkVectors = 6;  // the switch in dot_rows covers 1 .. kChunkVectors-1

// out[x .. x + NV*L) = sum_t a[t][..] * b[t][..] with NV vector accumulators in registers.
template <typename acc_t, int64_t NV>
inline void dot_chunk(const acc_t* const* a, const acc_t* const* b, int64_t terms, int64_t x,
                      acc_t* __restrict__ out) {
  using V = typename Simd<acc_t>::type;
  constexpr int64_t L = Simd<acc_t>::lanes;
  V acc[NV] = {};
  for (int64_t t = 0; t < terms; ++t) {
    const acc_t* pa = a[t] + x;
    const acc_t* pb = b[t] + x;
#pragma GCC unroll 8
    for (int64_t v = 0; v < NV; ++v) acc[v] += load_vec(pa + v * L) * load_vec(pb + v * L);
  }
#pragma GCC unroll 8
  for (int64_t v = 0; v < NV; ++v) store_vec(out + x + v * L, acc[v]);
}

// out[i] = sum_t a[t][i] * b[t][i] for i in [0, count). The term loop is inside the column
// chunk so the partial sums stay in registers; the last partial chunk still gets one
// accumulator per vector (a single accumulator would serialise on the FMA latency).
template <typename acc_t>
void dot_rows(const acc_t* const* a, const acc_t* const* b, int64_t terms, int64_t count,
              acc_t* __restrict__ out) {
  constexpr int64_t L = Simd<acc_t>::lanes;
  constexpr int64_t chunk = kChunkVectors * L;
  int64_t x = 0;
  for (; x + chunk <= count; x += chunk) dot_chunk<acc_t, kChunkVectors>(a, b, terms, x, out);
  switch ((count - x) / L) {
    case 5: dot_chunk<acc_t, 5>(a, b, terms, x, out); x += 5 * L; break;
    case 4: dot_chunk<acc_t, 4>(a, b, terms, x, out); x += 4 * L; break;
    case 3: dot_chunk<acc_t, 3>(a, b, terms, x, out); x += 3 * L; break;
    case 2: dot_chunk<acc_t, 2>(a, b, terms, x, out); x += 2 * L; break;
    case 1: dot_chunk<acc_t, 1>(a, b, terms, x, out); x += L; break;
    default: break;
  }
  for (; x < count; ++x) {
    acc_t acc = 0;
    for (int64_t t = 0; t < terms; ++t) acc += a[t][x] * b[t][x];
    out[x] = acc;
  }
}

// Register block for the forward pass: R output rows (upsampling: the s rows that read the
// same input rows) times P channels (which share the weights). Per term it loads R weight
// vectors and P input vectors for R*P fused multiply-adds, halving the loads per FMA of
// dot_rows when R = P = 2; the forward pass is bound by those loads.
//   out[r*P + p][x] = sum_t w[t][x + offset + r*row_step] * u[p][t][x]
template <typename acc_t, int64_t R, int64_t P, int64_t NV>
inline void dot_block_chunk(const acc_t* const* w, int64_t offset, int64_t row_step,
                            const acc_t* const* const* u, int64_t terms, int64_t x,
                            acc_t* const* out) {
  using V = typename Simd<acc_t>::type;
  constexpr int64_t L = Simd<acc_t>::lanes;
  V acc[R * P][NV] = {};
  for (int64_t t = 0; t < terms; ++t) {
    const acc_t* pw = w[t] + x + offset;
#pragma GCC unroll 4
    for (int64_t v = 0; v < NV; ++v) {
      V wv[R], uv[P];
#pragma GCC unroll 4
      for (int64_t r = 0; r < R; ++r) wv[r] = load_vec(pw + r * row_step + v * L);
#pragma GCC unroll 4
      for (int64_t p = 0; p < P; ++p) uv[p] = load_vec(u[p][t] + x + v * L);
#pragma GCC unroll 4
      for (int64_t r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int64_t p = 0; p < P; ++p) acc[r * P + p][v] += wv[r] * uv[p];
      }
    }
  }
#pragma GCC unroll 4
  for (int64_t o = 0; o < R * P; ++o) {
#pragma GCC unroll 4
    for (int64_t v = 0; v < NV; ++v) store_vec(out[o] + x + v * L, acc[o][v]);
  }
}

// `capacity` (>= count): columns every buffer holds; the last partial vector is computed in
// full when it fits (its extra lanes read stale buffer contents and are never stored).
template <typename acc_t, int64_t R, int64_t P>
void dot_block_rows(const acc_t* const* w, int64_t offset, int64_t row_step,
                    const acc_t* const* const* u, int64_t terms, int64_t count, int64_t capacity,
                    acc_t* const* out) {
  constexpr int64_t L = Simd<acc_t>::lanes;
  constexpr int64_t NV = (R * P >= 4) ? 3 : 4;  // accumulators fit the 16 vector registers of AVX2
  int64_t x = 0;
  for (; x + NV * L <= count; x += NV * L) dot_block_chunk<acc_t, R, P, NV>(w, offset, row_step, u, terms, x, out);
  const int64_t vector_count = std::min(capacity, ceil_div(count, L) * L);
  for (; x + L <= vector_count; x += L) dot_block_chunk<acc_t, R, P, 1>(w, offset, row_step, u, terms, x, out);
  for (; x < count; ++x) {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t p = 0; p < P; ++p) {
        acc_t sum = 0;
        for (int64_t t = 0; t < terms; ++t) sum += w[t][x + offset + r * row_step] * u[p][t][x];
        out[r * P + p][x] = sum;
      }
    }
  }
}

// acc[t][i] += g[i] * b[t][i] for every term t, i in [0, count): the kernel-gradient update,
// with a chunk of g held in registers across the terms.
template <typename acc_t>
void scale_accumulate_rows(const acc_t* __restrict__ g, const acc_t* const* b, acc_t* const* acc,
                           int64_t terms, int64_t count) {
  using V = typename Simd<acc_t>::type;
  constexpr int64_t L = Simd<acc_t>::lanes;
  constexpr int64_t chunk = kChunkVectors * L;
  int64_t x = 0;
  for (; x + chunk <= count; x += chunk) {
    V gv[kChunkVectors];
#pragma GCC unroll 8
    for (int64_t v = 0; v < kChunkVectors; ++v) gv[v] = load_vec(g + x + v * L);
    for (int64_t t = 0; t < terms; ++t) {
      const acc_t* pb = b[t] + x;
      acc_t* pa = acc[t] + x;
#pragma GCC unroll 8
      for (int64_t v = 0; v < kChunkVectors; ++v) {
        store_vec(pa + v * L, load_vec(pa + v * L) + gv[v] * load_vec(pb + v * L));
      }
    }
  }
  for (; x + L <= count; x += L) {
    const V gv = load_vec(g + x);
    for (int64_t t = 0; t < terms; ++t) {
      store_vec(acc[t] + x, load_vec(acc[t] + x) + gv * load_vec(b[t] + x));
    }
  }
  for (; x < count; ++x) {
    for (int64_t t = 0; t < terms; ++t) acc[t][x] += g[x] * b[t][x];
  }
}

// ---------------------------------------------------------------------------------------
// Input rows read by output rows

// Upsampling: output rows s*i .. s*i+s-1 all read input rows i-r .. i+r, so the "task rows"
// of the upsampling forward and kernel gradient are input rows i producing s output rows, and
// the k upsampled input rows are filled once per channel for all s output rows (the forward
// pass goes further and shares them between a band of consecutive task rows).
// Downsampling: task rows are output rows y reading input rows s*y-r .. s*y+r.
struct Task {
  int64_t n, grp, row;
};

Task decode(int64_t task, int64_t rows, int64_t groups) {
  return {task / (rows * groups), (task / rows) % groups, task % rows};
}

// Layout of the k input-row buffers of one column block and where each tap reads them.
struct InputRows {
  int64_t block = 0;            // output columns per block
  int64_t pitch = 0;            // floats per buffered input row (all phases)
  int64_t phase_pitch = 0;      // downsampling: floats per phase
  int64_t origin = 0;           // upsampling: output column of buffer index 0, minus x0
  int64_t m_origin = 0;         // downsampling: input phase index of position 0, minus x0
  std::vector<int64_t> shift;   // per dx index: buffer offset read by block column 0

  InputRows(const Geometry& g, int64_t block_columns) : block(block_columns), shift(g.kernel_size) {
    const int64_t r = g.radius, s = g.scale;
    if (!g.down) {
      // Output column x at offset dx reads input floor(x/s) + dx = floor((x + s*dx)/s).
      origin = -s * r;
      pitch = block + 2 * s * r;
      for (int64_t d = 0; d < g.kernel_size; ++d) shift[d] = s * d;
    } else {
      // Output column x at offset dx = s*q + p reads phase p at position x + q.
      const int64_t q_min = floor_div(-r, s), q_max = floor_div(r, s);
      m_origin = q_min;
      phase_pitch = block + q_max - q_min;
      pitch = s * phase_pitch;
      for (int64_t d = 0; d < g.kernel_size; ++d) {
        const int64_t dx = d - r, q = floor_div(dx, s);
        shift[d] = (dx - q * s) * phase_pitch + (q - q_min);
      }
    }
  }

  // Fills what output columns x0 .. x0+count read (a last, shorter block reads less).
  template <typename scalar_t, typename acc_t>
  void fill(const scalar_t* row, int64_t stride, const Geometry& g, int64_t x0, int64_t count,
            acc_t* dst) const {
    const int64_t unused = block - count;
    if (!g.down) {
      load_upsampled(row, stride, g.in_w, g.scale, x0 + origin, pitch - unused, dst);
    } else {
      load_phases(row, stride, g.in_w, g.scale, x0 + m_origin, phase_pitch - unused, phase_pitch,
                  dst);
    }
  }
};

// ---------------------------------------------------------------------------------------
// Forward and kernel gradient (share the row structure)

template <typename scalar_t>
void forward_impl(const at::Tensor& features, const at::Tensor& kernels, at::Tensor& output,
                  const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_data = features.const_data_ptr<scalar_t>();
  const scalar_t* k_data = kernels.const_data_ptr<scalar_t>();
  scalar_t* o_data = output.mutable_data_ptr<scalar_t>();
  const Strides4 xs = strides_of(features), ks = strides_of(kernels), os = strides_of(output);
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius;
  // A task row is one input row producing s output rows (upsampling) or one output row
  // (downsampling). A task takes a band of consecutive task rows so that each input row
  // buffer, which several task rows read, is filled once per channel.
  const int64_t rows_per_task_row = g.down ? 1 : g.scale;
  const int64_t task_rows = g.down ? g.out_h : g.in_h;
  const int64_t band = std::min<int64_t>(kForwardBand, task_rows);
  const int64_t bands = ceil_div(task_rows, band);
  const int64_t input_step = g.down ? g.scale : 1;  // input rows between task rows
  const int64_t band_inputs = (band - 1) * input_step + 2 * r + 1;
  const int64_t block = even_block(g.out_w);
  const InputRows layout(g, block);
  constexpr int64_t kPair = 2;  // channels sharing the weight loads
  const int64_t row_step = taps * block;  // weights of output row a_row+1 vs a_row
  const int64_t task_row_step = rows_per_task_row * row_step;

  const int64_t grain = grain_for(band * g.group_channels * rows_per_task_row * g.out_w * taps);
  at::parallel_for(0, g.batch * g.groups * bands, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(band * task_row_step), inputs(kPair * band_inputs * layout.pitch),
        results(rows_per_task_row * kPair * block);
    std::vector<char> filled(band_inputs);
    std::vector<const acc_t*> w(taps), u_storage(kPair * taps);
    const acc_t* const* u[kPair] = {u_storage.data(), u_storage.data() + taps};
    std::vector<acc_t*> out(rows_per_task_row * kPair);
    for (int64_t o = 0; o < rows_per_task_row * kPair; ++o) out[o] = results.data() + o * block;
    for (int64_t task_id = begin; task_id < end; ++task_id) {
      const Task task = decode(task_id, bands, g.groups);
      const int64_t first = task.row * band, last = std::min(task_rows, first + band);
      const int64_t first_input = g.source(first * rows_per_task_row) - r;
      for (int64_t x0 = 0; x0 < g.out_w; x0 += block) {
        const int64_t count = std::min(block, g.out_w - x0);
        for (int64_t j = first; j < last; ++j) {
          for (int64_t a_row = 0; a_row < rows_per_task_row; ++a_row) {
            const int64_t y = j * rows_per_task_row + a_row;
            for (int64_t t = 0; t < taps; ++t) {
              load_padded(k_data + ks.offset(task.n, task.grp * taps + t, y, 0), ks.w, g.out_w, x0,
                          count, weights.data() + (j - first) * task_row_step + a_row * row_step + t * block);
            }
          }
        }
        const int64_t c_end = (task.grp + 1) * g.group_channels;
        for (int64_t c = task.grp * g.group_channels; c < c_end; c += kPair) {
          const int64_t pair = std::min(kPair, c_end - c);
          const int64_t last_input = g.source((last - 1) * rows_per_task_row) + r;
          for (int64_t iy = first_input; iy <= last_input; ++iy) {
            const int64_t slot = iy - first_input;
            filled[slot] = iy >= 0 && iy < g.in_h;  // rows outside the map contribute nothing
            if (!filled[slot]) continue;
            for (int64_t p = 0; p < pair; ++p) {
              layout.fill(x_data + xs.offset(task.n, c + p, iy, 0), xs.w, g, x0, count,
                          inputs.data() + (p * band_inputs + slot) * layout.pitch);
            }
          }
          for (int64_t j = first; j < last; ++j) {
            const int64_t src_y = g.source(j * rows_per_task_row);
            const acc_t* task_weights = weights.data() + (j - first) * task_row_step;
            int64_t terms = 0;
            for (int64_t dy = -r; dy <= r; ++dy) {
              const int64_t slot = src_y + dy - first_input;
              if (!filled[slot]) continue;
              for (int64_t p = 0; p < pair; ++p) {
                const acc_t* row = inputs.data() + (p * band_inputs + slot) * layout.pitch;
                for (int64_t d = 0; d < k; ++d) u_storage[p * taps + terms + d] = row + layout.shift[d];
              }
              for (int64_t d = 0; d < k; ++d) w[terms + d] = task_weights + ((dy + r) * k + d) * block;
              terms += k;
            }
            if (pair == kPair && rows_per_task_row == 2) {
              dot_block_rows<acc_t, 2, kPair>(w.data(), 0, row_step, u, terms, count, block, out.data());
            } else {
              for (int64_t a_row = 0; a_row < rows_per_task_row; ++a_row) {
                if (pair == kPair) {
                  dot_block_rows<acc_t, 1, kPair>(w.data(), a_row * row_step, 0, u, terms, count, block,
                                                  out.data() + a_row * kPair);
                } else {
                  dot_block_rows<acc_t, 1, 1>(w.data(), a_row * row_step, 0, u, terms, count, block,
                                              out.data() + a_row * kPair);
                }
              }
            }
            for (int64_t a_row = 0; a_row < rows_per_task_row; ++a_row) {
              for (int64_t p = 0; p < pair; ++p) {
                store_row(out[a_row * kPair + p], count,
                          o_data + os.offset(task.n, c + p, j * rows_per_task_row + a_row, x0), os.w);
              }
            }
          }
        }
      }
    }
    stream_fence();
  });
}

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
                      gks.w);
          }
        }
      }
    }
    stream_fence();
  });
}

// ---------------------------------------------------------------------------------------
// Feature gradient

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
          store_row(result.data(), count, gx_data + gxs.offset(task.n, c, i, j0), gxs.w);
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
          store_row(result.data(), count, gx_data + gxs.offset(task.n, c, i, j0), gxs.w);
        }
      }
    }
    stream_fence();
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
