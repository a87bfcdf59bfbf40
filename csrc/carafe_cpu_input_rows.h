// Where the taps of a column block read the buffered input rows (upsampled, as they are, or
// split into column phases), shared by the CPU forward pass and the kernel gradient.
#pragma once

#include <cstdint>
#include <vector>

#include "carafe_cpu_rows.h"
#include "carafe_geometry.h"

namespace carafe_exp {
namespace cpu {

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

}  // namespace cpu
}  // namespace carafe_exp
