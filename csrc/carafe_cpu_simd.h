// Sums of products of shifted rows with explicit SIMD vectors: the inner loops of the CPU
// gradient kernels (the forward pass has its own register tile, carafe_cpu_forward_tile.h).
//
// Every quantity the operator computes is, for one row of one channel, a sum of products of
// two rows shifted against each other: out[x] = sum_t a_t[x] * b_t[x]. The sums are evaluated
// in register-sized column chunks with the term loop inside.
#pragma once

#include <cstdint>
#include <cstring>

namespace carafe_exp {
namespace cpu {


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

}  // namespace cpu
}  // namespace carafe_exp
