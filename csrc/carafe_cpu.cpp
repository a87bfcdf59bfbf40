// CPU forward and backward kernels of CARAFE (upsampling) and CARAFE++ (downsampling).
//
// Every quantity the operator computes is, for one row of one channel, a sum of products of
// two rows shifted against each other: out[x] = sum_t K_t[x] * X[x + shift_t] and the same
// for both gradients. The kernels therefore (1) copy the rows they need into small float
// buffers laid out so that every term is a plain contiguous row with a fixed offset (input
// rows zero padded at the borders, upsampled or split into s column phases, converted to the
// accumulation type), and (2) evaluate the sums in register-sized column chunks with the
// term loop inside, written with explicit SIMD vectors. Strides are used only when filling and
// draining the buffers, so channels-last and other non-contiguous tensors are read in place;
// nothing output-sized is allocated.
//
// The forward pass is arithmetic-bound (about 12 FLOPs per byte it must move) and is built
// around one register tile (forward_columns): for upsampling, the s*s sub-pixel outputs of an
// input pixel read the same inputs, so a tile computes 4 of them for several channels at once
// (6 with AVX-512's 32 vector registers: 24 FMAs for 10 vector loads per tap). Outputs larger
// than the cache go out with streaming stores.
//
// Parallelism: at::parallel_for over (batch, group, band of rows[, channel split]). Kernel
// weights are shared by the channels of a group, so their buffers are filled once per task and
// reused for every channel. Every gradient element is computed by exactly one task as a gather
// over the outputs that read it: no atomics, deterministic results. Half types accumulate in
// float (at::opmath_type).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

#include "carafe.h"

#ifdef __AVX__
#include <immintrin.h>
#endif

namespace carafe_exp {
namespace {

// Columns per block of the gradient kernels (their weight buffers stay in L2 across channels).
constexpr int64_t kColumnBlock = 256;

// Task rows per forward task: consecutive rows share input rows, filled once for the band.
constexpr int64_t kForwardBand = 4;

// Bytes of weights a forward task may buffer for one column block: they are re-read for every
// tile of channels and must stay in L2. Blocks as wide as this allows are faster: every block
// re-reads the input rows in short pieces that the hardware prefetchers follow poorly.
constexpr int64_t kForwardWeightBytes = 384 * 1024;

// Multiply-adds below which a parallel_for chunk is not worth waking another thread for
// (ATen's own kernels use a similar grain); tiny calls then run on the calling thread.
constexpr int64_t kParallelGrainWork = int64_t(1) << 20;

int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kParallelGrainWork / std::max<int64_t>(1, work_per_task));
}

// Block width for `columns` columns: blocks of at most max_block and nearly equal size (no
// short remainder block), rounded up to 8 columns (a whole float SIMD vector) so that a block's
// last partial vector can be computed with vector instructions.
int64_t even_block(int64_t columns, int64_t max_block = kColumnBlock) {
  const int64_t blocks = std::max<int64_t>(1, ceil_div(columns, max_block));
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

// Bytes of the last-level cache shared by this CPU's core (Linux sysfs; sysconf's
// _SC_LEVEL3_CACHE_SIZE reports the whole socket on multi-chiplet CPUs), 32 MiB if unknown.
int64_t last_level_cache_bytes() {
  int64_t bytes = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    std::ifstream level_file(dir + "/level"), size_file(dir + "/size");
    int level = 0;
    int64_t size = 0;
    std::string unit;
    if (!(level_file >> level) || !(size_file >> size)) continue;
    size_file >> unit;  // "K" or "M" directly after the number
    const int64_t scale = unit == "M" ? (int64_t(1) << 20) : unit == "K" ? 1024 : 1;
    if (level >= 3) bytes = std::max(bytes, size * scale);
  }
  return bytes > 0 ? bytes : int64_t(32) << 20;
}

// Output rows are written once and not read again by the kernel. For an output larger than
// the last-level cache, streaming (non-temporal) stores skip reading each destination cache
// line from memory first, a sizeable part of the memory traffic; a smaller output is better
// left in the cache for whatever reads it next. Callers issue stream_fence() before returning.
bool streams(const at::Tensor& output) {
  static const int64_t threshold = last_level_cache_bytes() / 2;
  return int64_t(output.nbytes()) > threshold;
}

inline bool stream_row(const float* values, int64_t count, float* row) {
#ifdef __AVX__
  int64_t i = 0;
  for (; i < count && (reinterpret_cast<uintptr_t>(row + i) & 31) != 0; ++i) row[i] = values[i];
  // 32-byte stores: 64-byte non-temporal stores are several times slower on some AVX-512 CPUs
  // (measured on AMD Zen 4).
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

// row[i * stride] = values[i] for i in [0, count), converted; `streaming` as streams() says.
template <typename scalar_t, typename acc_t>
void store_row(const acc_t* values, int64_t count, scalar_t* row, int64_t stride, bool streaming) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (streaming && stride == 1 && count >= 64 && stream_row(values, count, row)) return;
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
  int64_t block = 0;            // columns per block
  bool upsampled = true;        // upsampling: rows at output resolution (see constructor)
  int64_t pitch = 0;            // floats per buffered input row (all phases)
  int64_t phase_pitch = 0;      // downsampling: floats per phase
  int64_t origin = 0;           // upsampling: column of buffer index 0, minus x0
  int64_t m_origin = 0;         // downsampling: input phase index of position 0, minus x0
  std::vector<int64_t> shift;   // per dx index: buffer offset read by block column 0

  // upsampled = true: upsampling buffers hold input rows at output resolution (every column
  // repeated s times), so a block is output columns; false: they hold the input rows as they
  // are, and a block is input columns (the forward pass's phase columns).
  InputRows(const Geometry& g, int64_t block_columns, bool upsampled = true)
      : block(block_columns), upsampled(upsampled), shift(g.kernel_size) {
    const int64_t r = g.radius, s = g.scale;
    if (!g.down && !upsampled) {
      // Column m at offset dx reads input column m + dx - r, buffer index m + dx.
      origin = -r;
      pitch = block + 2 * r;
      for (int64_t d = 0; d < g.kernel_size; ++d) shift[d] = d;
    } else if (!g.down) {
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

  // Input columns [first_column, end_column) read by block columns x0 .. x0+count (possibly
  // outside the map).
  int64_t first_column(const Geometry& g, int64_t x0) const {
    if (!g.down && upsampled) return floor_div(x0 + origin, g.scale);
    if (!g.down) return x0 + origin;
    return g.scale * (x0 + m_origin);
  }
  int64_t end_column(const Geometry& g, int64_t x0, int64_t count) const {
    const int64_t span = pitch - (block - count);
    if (!g.down && upsampled) return floor_div(x0 + origin + span - 1, g.scale) + 1;
    if (!g.down) return x0 + origin + span;
    return g.scale * (x0 + m_origin + phase_pitch - (block - count));
  }

  // Fills what output columns x0 .. x0+count read (a last, shorter block reads less).
  template <typename scalar_t, typename acc_t>
  void fill(const scalar_t* row, int64_t stride, const Geometry& g, int64_t x0, int64_t count,
            acc_t* dst) const {
    const int64_t unused = block - count;
    if (!g.down && upsampled) {
      load_upsampled(row, stride, g.in_w, g.scale, x0 + origin, pitch - unused, dst);
    } else if (!g.down) {
      load_padded(row, stride, g.in_w, x0 + origin, pitch - unused, dst);
    } else {
      load_phases(row, stride, g.in_w, g.scale, x0 + m_origin, phase_pitch - unused, phase_pitch,
                  dst);
    }
  }
};

// ---------------------------------------------------------------------------------------
// Forward

// Upsampling, read in "phase columns": output column s*m + px reads input columns m-r .. m+r
// whatever its phase px, and output row s*i + py reads input rows i-r .. i+r. The s*s
// sub-pixel planes (py, px) of one input row therefore read exactly the same input values and
// differ only in their weights. The forward register tile computes Q planes times P channels
// (which share the weights) from one load of each input and each weight vector: Q*P FMAs for
// Q+P loads, reading the input rows as they are (zero padded), never upsampled.
// Downsampling has one plane (Q = 1) and reads the input split into s column phases.

// Keeps a loaded vector in a register. Without it GCC folds the load into every FMA that uses
// it (a memory operand per FMA), which turns Q+P loads per tap into Q*P.
template <typename V>
inline V in_register(V v) {
#if defined(__x86_64__) && defined(__AVX__)
  asm("" : "+v"(v));
#endif
  return v;
}

// GCC deletes loops whose body is only __builtin_prefetch; an asm statement it keeps.
inline void prefetch(const void* address) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(address)));
#else
  __builtin_prefetch(address);
#endif
}

// Asks for elements [begin, end) of a row to be brought into the cache.
template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t stride, int64_t begin, int64_t end) {
  constexpr int64_t kLine = 64;
  // A strided row (channels-last) shares its cache lines with the neighbouring channels that
  // the current fill already touches.
  if (begin >= end || stride != 1) return;
  const char* first = reinterpret_cast<const char*>(row + begin);
  const char* last = reinterpret_cast<const char*>(row + end) - 1;
  for (const char* p = first; p <= last; p += kLine) prefetch(p);
  prefetch(last);
}

// Arguments of the forward register tile; strides count acc_t elements.
template <typename acc_t>
struct ForwardTile {
  const acc_t* weights;          // plane 0, tap 0, column 0
  int64_t plane_stride;          // weights of plane q+1 vs plane q
  int64_t tap_stride;            // weights of tap t+1 vs tap t
  const acc_t* inputs;           // channel 0, tap row 0, buffer column 0
  int64_t channel_stride;        // input rows of channel p+1 vs channel p
  int64_t row_stride;            // input row of tap row dy+1 vs dy
  const int64_t* shift;          // per tap column dx: buffer column read by column 0
  int64_t kernel_size;
  int64_t dy_begin, dy_end;      // tap rows whose input row lies inside the map
  acc_t* results;                // plane 0, channel 0, column 0
  int64_t result_plane_stride, result_channel_stride;
  // Upsampling by 2 (Q = 4 planes, (py, px) = (0,0), (0,1), (1,0), (1,1)): when set, the tile
  // interleaves the column phases in registers and writes output rows instead of planes,
  // rows[p * rows_channel_stride + py * rows_row_stride + 2*x + (0 .. 2L)].
  acc_t* rows = nullptr;
  int64_t rows_channel_stride = 0, rows_row_stride = 0;
};

// Pairs of vectors holding even and odd output columns, back in column order. (GCC before 12
// has no __builtin_shufflevector, Clang no __builtin_shuffle.)
template <typename V, int64_t L>
inline void interleave_pair(V even, V odd, V& low, V& high) {
  static_assert(L == 4 || L == 8, "SIMD vectors of 4 or 8 lanes");
#if defined(__clang__)
  if constexpr (L == 8) {
    low = __builtin_shufflevector(even, odd, 0, 8, 1, 9, 2, 10, 3, 11);
    high = __builtin_shufflevector(even, odd, 4, 12, 5, 13, 6, 14, 7, 15);
  } else {
    low = __builtin_shufflevector(even, odd, 0, 4, 1, 5);
    high = __builtin_shufflevector(even, odd, 2, 6, 3, 7);
  }
#else
  if constexpr (L == 8) {
    typedef int32_t Mask __attribute__((vector_size(32)));
    low = __builtin_shuffle(even, odd, Mask{0, 8, 1, 9, 2, 10, 3, 11});
    high = __builtin_shuffle(even, odd, Mask{4, 12, 5, 13, 6, 14, 7, 15});
  } else {
    typedef int64_t Mask __attribute__((vector_size(32)));
    low = __builtin_shuffle(even, odd, Mask{0, 4, 1, 5});
    high = __builtin_shuffle(even, odd, Mask{2, 6, 3, 7});
  }
#endif
}

// results[q][p][x] = sum_{dy, dx} weights[q][dy*k + dx][x] * inputs[p][dy][x + shift[dx]]
// for x in [0, count) rounded up to whole vectors (every buffer holds that many columns), or
// the same interleaved into tile.rows.
template <typename acc_t, int Q, int P>
void forward_columns(const ForwardTile<acc_t>& tile, int64_t count) {
  using V = typename Simd<acc_t>::type;
  constexpr int64_t L = Simd<acc_t>::lanes;
  const int64_t k = tile.kernel_size;
  for (int64_t x = 0; x < count; x += L) {
    const acc_t* w[Q];
    const acc_t* u[P];
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) w[q] = tile.weights + q * tile.plane_stride + x;
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) u[p] = tile.inputs + p * tile.channel_stride + x;
    V acc[Q][P] = {};
    for (int64_t dy = tile.dy_begin; dy < tile.dy_end; ++dy) {
      const int64_t w_row = dy * k * tile.tap_stride;
      const int64_t u_row = dy * tile.row_stride;
      for (int64_t dx = 0; dx < k; ++dx) {
        const int64_t w_offset = w_row + dx * tile.tap_stride;
        const int64_t u_offset = u_row + tile.shift[dx];
        V uv[P];
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) uv[p] = in_register(load_vec(u[p] + u_offset));
#pragma GCC unroll 4
        for (int q = 0; q < Q; ++q) {
          const V wv = in_register(load_vec(w[q] + w_offset));
#pragma GCC unroll 8
          for (int p = 0; p < P; ++p) acc[q][p] += wv * uv[p];
        }
      }
    }
    if constexpr (Q == 4) {
      if (tile.rows != nullptr) {
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) {
#pragma GCC unroll 2
          for (int py = 0; py < 2; ++py) {
            V low, high;
            interleave_pair<V, L>(acc[2 * py][p], acc[2 * py + 1][p], low, high);
            acc_t* dst = tile.rows + p * tile.rows_channel_stride + py * tile.rows_row_stride + 2 * x;
            store_vec(dst, low);
            store_vec(dst + L, high);
          }
        }
        continue;
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        store_vec(tile.results + q * tile.result_plane_stride + p * tile.result_channel_stride + x,
                  acc[q][p]);
      }
    }
  }
}

// Accumulators the register tile may hold: the tile also needs P input vectors and a weight
// vector, within the 32 vector registers of AVX-512 (16 otherwise).
#if defined(__AVX512VL__)
constexpr int kTileAccumulators = 24;
#else
constexpr int kTileAccumulators = 8;
#endif
constexpr int kTilePlanes = 4;
constexpr int kTileChannels = 8;

constexpr int tile_channels_for(int planes) {
  return std::max(1, std::min(kTileChannels, kTileAccumulators / planes));
}

template <typename acc_t>
using ForwardColumnsFn = void (*)(const ForwardTile<acc_t>&, int64_t);

template <typename acc_t, int Q, int P = 1>
ForwardColumnsFn<acc_t> forward_columns_for(int64_t channels) {
  if constexpr (P > tile_channels_for(Q)) {
    return nullptr;
  } else {
    return channels == P ? &forward_columns<acc_t, Q, P> : forward_columns_for<acc_t, Q, P + 1>(channels);
  }
}

template <typename acc_t>
ForwardColumnsFn<acc_t> forward_columns_for(int64_t planes, int64_t channels) {
  switch (planes) {
    case 1: return forward_columns_for<acc_t, 1>(channels);
    case 2: return forward_columns_for<acc_t, 2>(channels);
    case 3: return forward_columns_for<acc_t, 3>(channels);
    case 4: return forward_columns_for<acc_t, 4>(channels);
    default: return nullptr;
  }
}

// row[s*m + px] = phases[px * phase_stride + m] for m in [0, count): the sub-pixel columns of
// one output row back in order (s = 2 is interleaved in registers by the tile instead).
template <typename acc_t>
void interleave_phases(const acc_t* phases, int64_t phase_stride, int64_t s, int64_t count,
                       acc_t* row) {
  for (int64_t m = 0; m < count; ++m) {
    for (int64_t px = 0; px < s; ++px) row[s * m + px] = phases[px * phase_stride + m];
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
  const int64_t taps = g.taps(), k = g.kernel_size, r = g.radius, s = g.scale;
  // Planes: sub-pixel outputs reading the same inputs (up: s*s; down: 1). A task row is an
  // input row producing s output rows (up) or one output row (down); its "columns" are input
  // columns (up) or output columns (down).
  const int64_t planes = g.down ? 1 : s * s;
  const int64_t out_scale = g.down ? 1 : s;  // output rows and columns per task row/column
  const int64_t plane_group = std::min<int64_t>(kTilePlanes, planes);
  const int64_t tile_channels = tile_channels_for(static_cast<int>(plane_group));
  const int64_t task_rows = g.down ? g.out_h : g.in_h;
  const int64_t columns = g.down ? g.out_w : g.in_w;
  const int64_t input_step = g.down ? s : 1;  // input rows between task rows
  // A task takes a band of consecutive task rows: each input row buffer, which k task rows
  // read, is filled once per channel for the band.
  const int64_t band = std::min<int64_t>(kForwardBand, task_rows);
  const int64_t bands = ceil_div(task_rows, band);
  const int64_t band_inputs = (band - 1) * input_step + 2 * r + 1;
  const int64_t block =
      even_block(columns, kForwardWeightBytes / (band * planes * taps * int64_t(sizeof(acc_t))));
  const InputRows layout(g, block, /*upsampled=*/false);
  const int64_t plane_stride = taps * block;
  const int64_t row_weights = planes * plane_stride;
  const int64_t channel_stride = band_inputs * layout.pitch;
  // Channels of a group may be split over tasks so that small maps still occupy every thread;
  // each split fills the (cheap) weight buffers itself.
  const int64_t base_tasks = g.batch * g.groups * bands;
  const int64_t max_splits = std::max<int64_t>(1, g.group_channels / (8 * tile_channels));
  const int64_t wanted_splits = ceil_div(4 * at::get_num_threads(), base_tasks);
  const int64_t split_channels =
      ceil_div(ceil_div(g.group_channels, std::clamp<int64_t>(wanted_splits, 1, max_splits)),
               tile_channels) * tile_channels;
  const int64_t splits = ceil_div(g.group_channels, split_channels);

  // Upsampling by 2: the register tile writes whole output rows (see ForwardTile::rows).
  const bool tile_writes_rows = !g.down && s == 2;
  const bool streaming = streams(output);

  const int64_t tasks = base_tasks * splits;
  const int64_t grain = grain_for(band * planes * split_channels * block * taps);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(band * row_weights), inputs(tile_channels * channel_stride),
        results(planes * tile_channels * block), rows(tile_channels * out_scale * out_scale * block);
    for (int64_t task_id = begin; task_id < end; ++task_id) {
      const int64_t split = task_id % splits, band_index = (task_id / splits) % bands;
      const int64_t grp = (task_id / (splits * bands)) % g.groups;
      const int64_t n = task_id / (splits * bands * g.groups);
      const int64_t first = band_index * band, last = std::min(task_rows, first + band);
      const int64_t first_input = first * input_step - r;
      const int64_t last_input = (last - 1) * input_step + r;
      const int64_t c_begin = grp * g.group_channels + split * split_channels;
      const int64_t c_end = std::min((grp + 1) * g.group_channels, c_begin + split_channels);
      for (int64_t x0 = 0; x0 < columns; x0 += block) {
        const int64_t count = std::min(block, columns - x0);
        for (int64_t j = first; j < last; ++j) {
          for (int64_t py = 0; py < out_scale; ++py) {
            for (int64_t t = 0; t < taps; ++t) {
              // Up: output row s*j + py split into its s column phases, planes (py, 0 .. s-1).
              acc_t* dst = weights.data() + (j - first) * row_weights +
                           py * out_scale * plane_stride + t * block;
              const scalar_t* k_row = k_data + ks.offset(n, grp * taps + t, out_scale * j + py, 0);
              load_phases(k_row, ks.w, g.out_w, out_scale, x0, count, plane_stride, dst);
            }
          }
        }
        const int64_t iy_begin = std::max<int64_t>(0, first_input);
        const int64_t iy_end = std::min(g.in_h, last_input + 1);
        const int64_t fill_begin = std::max<int64_t>(0, layout.first_column(g, x0));
        const int64_t fill_end = std::min(g.in_w, layout.end_column(g, x0, count));
        for (int64_t c = c_begin; c < c_end; c += tile_channels) {
          const int64_t tile_count = std::min(tile_channels, c_end - c);
          for (int64_t p = 0; p < tile_count; ++p) {
            for (int64_t iy = iy_begin; iy < iy_end; ++iy) {
              layout.fill(x_data + xs.offset(n, c + p, iy, 0), xs.w, g, x0, count,
                          inputs.data() + p * channel_stride + (iy - first_input) * layout.pitch);
            }
          }
          // The next tile's input rows come from memory while this tile computes: filling them
          // on demand would stall on every cache line.
          for (int64_t p = 0; p < std::min(tile_channels, c_end - c - tile_count); ++p) {
            for (int64_t iy = iy_begin; iy < iy_end; ++iy) {
              prefetch_row(x_data + xs.offset(n, c + tile_count + p, iy, 0), xs.w, fill_begin,
                           fill_end);
            }
          }
          for (int64_t j = first; j < last; ++j) {
            const int64_t source = j * input_step;  // input row of tap row r
            ForwardTile<acc_t> tile{};
            tile.plane_stride = plane_stride;
            tile.tap_stride = block;
            tile.inputs = inputs.data() + (source - r - first_input) * layout.pitch;
            tile.channel_stride = channel_stride;
            tile.row_stride = layout.pitch;
            tile.shift = layout.shift.data();
            tile.kernel_size = k;
            tile.dy_begin = std::max<int64_t>(0, r - source);
            tile.dy_end = std::min<int64_t>(k, g.in_h - source + r);
            tile.result_plane_stride = tile_channels * block;
            tile.result_channel_stride = block;
            if (tile_writes_rows) {
              tile.rows = rows.data();
              tile.rows_channel_stride = 2 * 2 * block;
              tile.rows_row_stride = 2 * block;
            }
            for (int64_t q0 = 0; q0 < planes; q0 += plane_group) {
              const int64_t group_planes = std::min(plane_group, planes - q0);
              tile.weights = weights.data() + (j - first) * row_weights + q0 * plane_stride;
              tile.results = results.data() + q0 * tile.result_plane_stride;
              forward_columns_for<acc_t>(group_planes, tile_count)(tile, count);
            }
            for (int64_t p = 0; p < tile_count; ++p) {
              for (int64_t py = 0; py < out_scale; ++py) {
                const acc_t* values = rows.data() + (p * out_scale + py) * out_scale * block;
                if (!tile_writes_rows) {
                  const acc_t* planes_of_row =
                      results.data() + py * out_scale * tile.result_plane_stride + p * block;
                  if (out_scale == 1) {
                    values = planes_of_row;
                  } else {
                    interleave_phases(planes_of_row, tile.result_plane_stride, s, count,
                                      rows.data());
                    values = rows.data();
                  }
                }
                store_row(values, out_scale * count,
                          o_data + os.offset(n, c + p, out_scale * j + py, out_scale * x0), os.w,
                          streaming);
              }
            }
          }
        }
      }
    }
    stream_fence();
  });
}

// ---------------------------------------------------------------------------------------
// Kernel gradient

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
