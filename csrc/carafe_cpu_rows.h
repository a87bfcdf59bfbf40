// Row buffers of the CPU kernels: filling float rows from tensor rows (zero padded, nearest
// upsampled, or split into column phases, converted to the accumulation type) and storing
// result rows back (streaming stores for outputs larger than the cache).
//
// Strides are used only here, when filling and draining the buffers, so channels-last and other
// non-contiguous tensors are read in place and nothing output-sized is allocated.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <type_traits>

#include "carafe_geometry.h"

#ifdef __AVX__
#include <immintrin.h>
#endif

namespace carafe_exp {
namespace cpu {

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
inline int64_t last_level_cache_bytes() {
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
inline bool streams(const at::Tensor& output) {
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

}  // namespace cpu
}  // namespace carafe_exp
