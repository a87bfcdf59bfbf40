// The register tile of the CPU forward pass: Q sub-pixel planes times P channels computed from
// one load of each input and each weight vector per tap.
//
// Upsampling, read in "phase columns": output column s*m + px reads input columns m-r .. m+r
// whatever its phase px, and output row s*i + py reads input rows i-r .. i+r. The s*s
// sub-pixel planes (py, px) of one input row therefore read exactly the same input values and
// differ only in their weights. The forward register tile computes Q planes times P channels
// (which share the weights) from one load of each input and each weight vector: Q*P FMAs for
// Q+P loads, reading the input rows as they are (zero padded), never upsampled.
// Downsampling has one plane (Q = 1) and reads the input split into s column phases.
#pragma once

#include <algorithm>
#include <cstdint>

#include "carafe_cpu_simd.h"

namespace carafe_exp {
namespace cpu {

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

}  // namespace cpu
}  // namespace carafe_exp
