// Tiles of the tiled CUDA kernels (carafe_cuda_tiled.cuh): which pixels a block takes, which
// window of the other map it stages in shared memory, and how many channels at a time.
//
// Three passes, each a gather over one tile:
// - forward and kernel gradient: a tile of output pixels, reading a window of input pixels;
// - feature gradient: a tile of input pixels, reading a window of output pixels.
// The host picks the largest tile whose shared memory (the tile's kernel weights plus the staged
// windows of a few channels) fits kSharedBudget; the kernels compute the same windows with the
// same functions, so what is staged is exactly what the plan reserved.
#pragma once

#include <algorithm>
#include <cstdint>

#include "carafe_geometry.h"

namespace carafe_exp {
namespace cuda {

constexpr int kTiledThreads = 256;

// Channels a thread accumulates at once: every weight read from shared memory feeds V FMAs.
constexpr int kChannelsPerThread = 4;

// Dynamic shared memory per block. 48 KiB is what every CUDA GPU grants without an opt-in
// (cudaFuncSetAttribute), and leaves room for several blocks per multiprocessor.
constexpr int64_t kSharedBudget = 48 * 1024;

// Most channels staged per round: beyond this the window buffers only crowd out other blocks.
constexpr int64_t kMaxChunk = 32;

enum class Pass { forward, grad_kernels, grad_features };

struct TilePlan {
  Pass pass = Pass::forward;
  int64_t tile_h = 0, tile_w = 0;      // pixels of a block's tile (output or input pixels)
  int64_t tiles_y = 0, tiles_x = 0;    // tiles per map
  int64_t window_h = 0, window_w = 0;  // largest window of the other map a tile reads
  int64_t readers = 1;                 // feature gradient: outputs per tap and axis (up: s, down: 1)
  int64_t chunk = 0;                   // channels staged per round, a multiple of kChannelsPerThread
  int64_t blocks = 0;                  // batch * groups * tiles
  int64_t shared_bytes = 0;            // 0: no tile fits; the simple kernels take the call

  CARAFE_HOST_DEVICE bool fits() const { return shared_bytes > 0; }
  CARAFE_HOST_DEVICE int64_t pixels() const { return tile_h * tile_w; }
  CARAFE_HOST_DEVICE int64_t window() const { return window_h * window_w; }
  // Elements of the fixed part of shared memory (weights or gradient accumulators), in front of
  // the per-channel buffers.
  CARAFE_HOST_DEVICE int64_t fixed_elements(const Geometry& g) const {
    return g.taps() * readers * readers * pixels();
  }
  // Elements staged per channel: the window, and for the kernel gradient the tile's grad_output.
  CARAFE_HOST_DEVICE int64_t channel_elements() const {
    return window() + (pass == Pass::grad_kernels ? pixels() : 0);
  }
};

// First input row/column read by output row/column `out_pos` (at offset -r).
CARAFE_HOST_DEVICE int64_t input_window_origin(const Geometry& g, int64_t out_pos) {
  return g.source(out_pos) - g.radius;
}

// First output row/column that reads input row/column `in_pos` or later, at any offset.
CARAFE_HOST_DEVICE int64_t output_window_origin(const Geometry& g, int64_t in_pos) {
  return g.down ? ceil_div(in_pos - g.radius, g.scale) : g.scale * (in_pos - g.radius);
}

// Largest extent, over tiles starting at multiples of `tile`, of the window of the other map.
CARAFE_HOST_DEVICE int64_t window_extent(const Geometry& g, Pass pass, int64_t tile) {
  const int64_t r = g.radius, s = g.scale;
  if (pass == Pass::grad_features) {
    // Outputs reading input rows [i0 - r, i0 + tile - 1 + r].
    return g.down ? (tile - 1 + 2 * r) / s + 1 : s * (tile + 2 * r);
  }
  if (g.down) return s * (tile - 1) + 2 * r + 1;
  // floor((y0 + tile - 1) / s) - floor(y0 / s) for y0 a multiple of tile.
  const int64_t rows_between = (tile % s == 0) ? (tile - 1) / s : (tile - 1) / s + 1;
  return rows_between + 2 * r + 1;
}

// Largest tile (from 16x16 down to 1x1, at most the map) whose weights and the windows of at
// least min(kChannelsPerThread * 2, group channels) channels fit `budget` bytes; a plan that
// does not fit (shared_bytes == 0) when even one pixel's weights do not.
inline TilePlan plan_tiles(const Geometry& g, Pass pass, int64_t element_bytes,
                           int64_t budget = kSharedBudget) {
  static constexpr int64_t kCandidates[][2] = {{16, 16}, {8, 16}, {8, 8}, {4, 8}, {4, 4},
                                               {2, 4},   {2, 2},  {1, 2}, {1, 1}};
  const int64_t map_h = pass == Pass::grad_features ? g.in_h : g.out_h;
  const int64_t map_w = pass == Pass::grad_features ? g.in_w : g.out_w;
  const int64_t v = kChannelsPerThread;
  const int64_t wanted_chunk = std::min<int64_t>(2 * v, ceil_div(g.group_channels, v) * v);
  TilePlan plan;
  plan.pass = pass;
  plan.readers = (pass == Pass::grad_features && !g.down) ? g.scale : 1;
  for (const auto& candidate : kCandidates) {
    plan.tile_h = std::max<int64_t>(1, std::min(candidate[0], map_h));
    plan.tile_w = std::max<int64_t>(1, std::min(candidate[1], map_w));
    plan.window_h = window_extent(g, pass, plan.tile_h);
    plan.window_w = window_extent(g, pass, plan.tile_w);
    const int64_t fixed = plan.fixed_elements(g) * element_bytes;
    const int64_t per_channel = plan.channel_elements() * element_bytes;
    const int64_t room = (budget - fixed) / per_channel;
    if (room < wanted_chunk && candidate[0] * candidate[1] > 1) continue;
    // Channels per round: as many as fit, in whole vectors of kChannelsPerThread, no more than
    // the group has (rounded up to a vector) or kMaxChunk.
    const int64_t chunk =
        std::min({room / v * v, ceil_div(g.group_channels, v) * v, kMaxChunk});
    if (chunk < v) break;  // not even one vector of channels beside one pixel's weights
    plan.chunk = chunk;
    plan.tiles_y = ceil_div(map_h, plan.tile_h);
    plan.tiles_x = ceil_div(map_w, plan.tile_w);
    plan.blocks = g.batch * g.groups * plan.tiles_y * plan.tiles_x;
    plan.shared_bytes = fixed + chunk * per_channel;
    return plan;
  }
  plan.shared_bytes = 0;
  return plan;
}

// The tile block `b` of a plan computes.
struct Tile {
  int64_t n, grp;
  int64_t y0, x0;  // first pixel
  int64_t h, w;    // pixels inside the map (the last tiles of a row or column are cut)
};

CARAFE_HOST_DEVICE Tile tile_of(const TilePlan& plan, const Geometry& g, int64_t b) {
  const int64_t map_h = plan.pass == Pass::grad_features ? g.in_h : g.out_h;
  const int64_t map_w = plan.pass == Pass::grad_features ? g.in_w : g.out_w;
  Tile t;
  const int64_t tx = b % plan.tiles_x;
  int64_t rest = b / plan.tiles_x;
  const int64_t ty = rest % plan.tiles_y;
  rest /= plan.tiles_y;
  t.grp = rest % g.groups;
  t.n = rest / g.groups;
  t.y0 = ty * plan.tile_h;
  t.x0 = tx * plan.tile_w;
  t.h = map_h - t.y0 < plan.tile_h ? map_h - t.y0 : plan.tile_h;
  t.w = map_w - t.x0 < plan.tile_w ? map_w - t.x0 : plan.tile_w;
  return t;
}

}  // namespace cuda
}  // namespace carafe_exp
