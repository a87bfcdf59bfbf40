// Shapes, strides and index arithmetic shared by the CPU and CUDA CARAFE kernels.
//
// The operator (see DESIGN.md, "The reassembly operator"):
//   out[n,c,y,x] = sum_{dy,dx in [-r,r]} K[n, g*k*k + (dy+r)*k + (dx+r), y, x]
//                                        * X[n, c, src_y + dy, src_x + dx]
// with src = floor(y/s) for upsampling and src = s*y for downsampling, g = c / (C/groups),
// and zero outside the input map. All sizes and offsets are int64 so tensors with more
// than 2^31 elements index correctly.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define CARAFE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CARAFE_HOST_DEVICE inline
#endif

namespace carafe_exp {

struct Geometry {
  int64_t batch;     // N
  int64_t channels;  // C
  int64_t in_h, in_w;
  int64_t out_h, out_w;
  int64_t kernel_size;  // k (odd)
  int64_t radius;       // r = k / 2
  int64_t scale;        // s
  int64_t groups;
  int64_t group_channels;  // C / groups
  bool down;               // true: CARAFE++ downsampling, false: upsampling

  CARAFE_HOST_DEVICE int64_t taps() const { return kernel_size * kernel_size; }
  // Row/column of the input the output position reads at offset 0.
  CARAFE_HOST_DEVICE int64_t source(int64_t out_pos) const {
    return down ? out_pos * scale : out_pos / scale;
  }
};

// Element strides of a 4-D tensor (n, c, h, w); passing strides lets the kernels read
// channels-last and other non-contiguous layouts in place instead of copying them.
struct Strides4 {
  int64_t n, c, h, w;
  CARAFE_HOST_DEVICE int64_t offset(int64_t i0, int64_t i1, int64_t i2, int64_t i3) const {
    return i0 * n + i1 * c + i2 * h + i3 * w;
  }
};

CARAFE_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  // C++ division truncates towards zero; the tap arithmetic needs floor for negative offsets.
  const int64_t q = a / b;
  return (q * b > a) ? q - 1 : q;
}

CARAFE_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

}  // namespace carafe_exp
