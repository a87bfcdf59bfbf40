// Work decomposition shared by the CPU kernels: column blocks, parallel grain, task decoding.
//
// Every CPU kernel works on "task rows" (an input or output row of one image and one channel
// group) split into column blocks, and runs tasks with at::parallel_for. See
// carafe_cpu_forward.cpp, carafe_cpu_grad_kernels.cpp and carafe_cpu_grad_features.cpp.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "carafe_geometry.h"
#include "carafe_tensor_geometry.h"

namespace carafe_exp {
namespace cpu {

// Columns per block of the gradient kernels (their weight buffers stay in L2 across channels).
constexpr int64_t kColumnBlock = 256;

// Multiply-adds below which a parallel_for chunk is not worth waking another thread for
// (ATen's own kernels use a similar grain); tiny calls then run on the calling thread.
constexpr int64_t kParallelGrainWork = int64_t(1) << 20;

inline int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kParallelGrainWork / std::max<int64_t>(1, work_per_task));
}

// Block width for `columns` columns: blocks of at most max_block and nearly equal size (no
// short remainder block), rounded up to 8 columns (a whole float SIMD vector) so that a block's
// last partial vector can be computed with vector instructions. A max_block below one vector
// (a caller's budget divided by a large k*k*s*s) still gives one vector per block.
inline int64_t even_block(int64_t columns, int64_t max_block = kColumnBlock) {
  const int64_t blocks = std::max<int64_t>(1, ceil_div(columns, std::max<int64_t>(8, max_block)));
  return ceil_div(ceil_div(columns, blocks), 8) * 8;
}

// Upsampling: output rows s*i .. s*i+s-1 all read input rows i-r .. i+r, so the "task rows"
// of the upsampling forward and kernel gradient are input rows i producing s output rows, and
// the k upsampled input rows are filled once per channel for all s output rows (the forward
// pass goes further and shares them between a band of consecutive task rows).
// Downsampling: task rows are output rows y reading input rows s*y-r .. s*y+r.
struct Task {
  int64_t n, grp, row;
};

inline Task decode(int64_t task, int64_t rows, int64_t groups) {
  return {task / (rows * groups), (task / rows) % groups, task % rows};
}

}  // namespace cpu
}  // namespace carafe_exp
