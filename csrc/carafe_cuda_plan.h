// Tiles of the tiled CUDA kernels (carafe_cuda_tiled.cuh): which pixels a block takes, which
// window of the other map it stages in shared memory, and how many channels at a time; and the
// per-call choice between the tiled and the simple kernels (choose_kernels). Host code only needs
// this header, so the extension can report a call's plan without a GPU (carafe_plan_query.h).
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

#include "carafe.h"
#include "carafe_geometry.h"

namespace carafe_exp {
namespace cuda {

// Most threads of a tiled block; a plan launches fewer (a multiple of a warp) when its tile has
// less work per round of channels, so that no thread idles through the arithmetic.
constexpr int kTiledThreads = 256;
constexpr int kWarp = 32;

// Channels a thread accumulates at once: every weight read from shared memory feeds V FMAs.
constexpr int kChannelsPerThread = 4;

// Dynamic shared memory per block. 48 KiB is what every CUDA GPU grants without an opt-in
// (cudaFuncSetAttribute), and leaves room for several blocks per multiprocessor.
constexpr int64_t kSharedBudget = 48 * 1024;

// Most channels staged per round: beyond this the window buffers only crowd out other blocks.
constexpr int64_t kMaxChunk = 32;

// Blocks a launch should have per multiprocessor: with fewer, part of a large GPU idles (an
// H100/H200 has 132), and with one block per multiprocessor no block's staging overlaps another's
// arithmetic.
constexpr int64_t kBlocksPerMultiprocessor = 2;

// Fewest channels a block takes when a pass splits a group's channels across blocks: every block
// of a split stages the tile's weights again, so thin slices would multiply that traffic.
constexpr int64_t kMinSliceChannels = 16;

// The kernel-gradient pass sums over the channels, so it cannot split them across blocks (that
// would need atomics or a second pass); it shrinks its tile instead, down to this many pixels.
constexpr int64_t kMinGradKernelsTilePixels = 64;

// Multiprocessors assumed when the caller does not know (the emulation's default): an H100/H200.
constexpr int64_t kDefaultMultiprocessors = 132;

enum class Pass { forward, grad_kernels, grad_features };

struct TilePlan {
  Pass pass = Pass::forward;
  int64_t tile_h = 0, tile_w = 0;      // pixels of a block's tile (output or input pixels)
  int64_t tiles_y = 0, tiles_x = 0;    // tiles per map
  int64_t window_h = 0, window_w = 0;  // largest window of the other map a tile reads
  int64_t readers = 1;                 // feature gradient: outputs per tap and axis (up: s, down: 1)
  int64_t chunk = 0;                   // channels staged per round, a multiple of kChannelsPerThread
  int64_t splits = 1;                  // blocks sharing one tile, each a slice of the group's channels
  int64_t slice = 0;                   // channels per slice (a multiple of kChannelsPerThread)
  int64_t cell = 1;                    // forward: outputs per thread and axis (s when upsampling by 2 or 4)
  int64_t blocks = 0;                  // batch * groups * tiles * splits
  int threads = kTiledThreads;         // per block: the round's work items, in whole warps
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

// The plan of one tile size: a chunk of channels as large as fits `budget` beside the fixed part
// (at most the group, rounded up to a vector, and kMaxChunk); `wanted_chunk` is the least a tile
// larger than one pixel must leave room for. shared_bytes == 0 when it does not fit.
inline TilePlan plan_of_tile(const Geometry& g, Pass pass, int64_t element_bytes, int64_t tile_h,
                             int64_t tile_w, int64_t budget) {
  const int64_t v = kChannelsPerThread;
  const int64_t map_h = pass == Pass::grad_features ? g.in_h : g.out_h;
  const int64_t map_w = pass == Pass::grad_features ? g.in_w : g.out_w;
  const int64_t wanted_chunk = std::min<int64_t>(2 * v, ceil_div(g.group_channels, v) * v);
  TilePlan plan;
  plan.pass = pass;
  plan.readers = (pass == Pass::grad_features && !g.down) ? g.scale : 1;
  plan.tile_h = std::max<int64_t>(1, std::min(tile_h, map_h));
  plan.tile_w = std::max<int64_t>(1, std::min(tile_w, map_w));
  plan.window_h = window_extent(g, pass, plan.tile_h);
  plan.window_w = window_extent(g, pass, plan.tile_w);
  const int64_t fixed = plan.fixed_elements(g) * element_bytes;
  const int64_t per_channel = plan.channel_elements() * element_bytes;
  const int64_t room = (budget - fixed) / per_channel;
  if (room < wanted_chunk && tile_h * tile_w > 1) return plan;
  // Channels per round: as many as fit, in whole vectors of kChannelsPerThread, no more than
  // the group has (rounded up to a vector) or kMaxChunk.
  const int64_t chunk = std::min({room / v * v, ceil_div(g.group_channels, v) * v, kMaxChunk});
  if (chunk < v) return plan;  // not even one vector of channels beside one pixel's weights
  plan.chunk = chunk;
  plan.slice = g.group_channels;
  plan.tiles_y = ceil_div(map_h, plan.tile_h);
  plan.tiles_x = ceil_div(map_w, plan.tile_w);
  plan.blocks = g.batch * g.groups * plan.tiles_y * plan.tiles_x;
  plan.shared_bytes = fixed + chunk * per_channel;
  return plan;
}

// The tiles, from 16x16 down to 1x1 (at most the map), the passes try, largest first.
constexpr int64_t kTileCandidates[][2] = {{16, 16}, {8, 16}, {8, 8}, {4, 8}, {4, 4},
                                          {2, 4},   {2, 2},  {1, 2}, {1, 1}};

// The plan of one pass: the largest tile whose weights and the windows of at least
// min(2 * kChannelsPerThread, group channels) channels fit `budget` bytes (shared_bytes == 0
// when even one pixel's weights do not), shaped for a GPU of `multiprocessors`: when that leaves
// fewer than kBlocksPerMultiprocessor blocks per multiprocessor, the forward and feature-gradient
// passes split each group's channels across blocks and the kernel-gradient pass takes smaller
// tiles (multiprocessors = 0: no such shaping). The forward pass of an upsampling by 2 or 4 lets each thread compute the s x s outputs
// that share a source pixel (cell), which share the staged inputs of every tap.
inline TilePlan plan_tiles(const Geometry& g, Pass pass, int64_t element_bytes,
                           int64_t multiprocessors = kDefaultMultiprocessors,
                           int64_t budget = kSharedBudget) {
  const int64_t target = kBlocksPerMultiprocessor * std::max<int64_t>(0, multiprocessors);
  TilePlan plan;
  for (const auto& candidate : kTileCandidates) {
    const TilePlan tried = plan_of_tile(g, pass, element_bytes, candidate[0], candidate[1], budget);
    if (!tried.fits()) {
      if (plan.fits()) break;  // smaller tiles fit whenever larger ones do; this one was clamped
      continue;
    }
    const bool first = !plan.fits();
    if (first || (pass == Pass::grad_kernels && plan.blocks < target &&
                  tried.pixels() >= kMinGradKernelsTilePixels && tried.blocks > plan.blocks)) {
      plan = tried;
      if (pass != Pass::grad_kernels || plan.blocks >= target) break;
      continue;
    }
    break;
  }
  if (!plan.fits()) return plan;
  const int64_t v = kChannelsPerThread;
  if (pass != Pass::grad_kernels && plan.blocks < target) {
    const int64_t most = std::max<int64_t>(1, g.group_channels / kMinSliceChannels);
    const int64_t splits = std::min(ceil_div(target, plan.blocks), most);
    plan.slice = ceil_div(ceil_div(g.group_channels, splits), v) * v;
    plan.splits = ceil_div(g.group_channels, plan.slice);
    plan.blocks *= plan.splits;
    // A round never stages more channels than the slice has.
    plan.chunk = std::min(plan.chunk, plan.slice);
    plan.shared_bytes = plan.fixed_elements(g) * element_bytes +
                        plan.chunk * plan.channel_elements() * element_bytes;
  }
  if (pass == Pass::forward && !g.down && (g.scale == 2 || g.scale == 4) &&
      plan.tile_h % g.scale == 0 && plan.tile_w % g.scale == 0) {
    plan.cell = g.scale;
  }
  // Work items of one round of channels: (cell, channel vector) forward, (pixel, channel vector)
  // feature gradient, (tap, pixel) kernel gradient. A small tile with few channels per round (the
  // upsampling feature gradient stages k*k*s*s weights per pixel, leaving room for 8 channels of
  // an 8x8 tile: 128 items) gets fewer threads instead of leaving the rest idle.
  const int64_t items = pass == Pass::grad_kernels
                            ? g.taps() * plan.pixels()
                            : plan.pixels() / (plan.cell * plan.cell) * ceil_div(plan.chunk, v);
  plan.threads = static_cast<int>(std::min<int64_t>(kTiledThreads, ceil_div(items, kWarp) * kWarp));
  return plan;
}

// The tile block `b` of a plan computes, and the slice of the group's channels it takes.
struct Tile {
  int64_t n, grp;
  int64_t y0, x0;  // first pixel
  int64_t h, w;    // pixels inside the map (the last tiles of a row or column are cut)
  int64_t c_begin, c_end;  // channels of the group, [c_begin, c_end)
};

CARAFE_HOST_DEVICE Tile tile_of(const TilePlan& plan, const Geometry& g, int64_t b) {
  const int64_t map_h = plan.pass == Pass::grad_features ? g.in_h : g.out_h;
  const int64_t map_w = plan.pass == Pass::grad_features ? g.in_w : g.out_w;
  Tile t;
  // The slices of one tile are neighbouring blocks: they read the same weights, close in time.
  const int64_t split = b % plan.splits;
  int64_t rest = b / plan.splits;
  const int64_t tx = rest % plan.tiles_x;
  rest /= plan.tiles_x;
  const int64_t ty = rest % plan.tiles_y;
  rest /= plan.tiles_y;
  t.grp = rest % g.groups;
  t.n = rest / g.groups;
  t.y0 = ty * plan.tile_h;
  t.x0 = tx * plan.tile_w;
  t.h = map_h - t.y0 < plan.tile_h ? map_h - t.y0 : plan.tile_h;
  t.w = map_w - t.x0 < plan.tile_w ? map_w - t.x0 : plan.tile_w;
  t.c_begin = split * plan.slice;
  t.c_end = t.c_begin + plan.slice < g.group_channels ? t.c_begin + plan.slice : g.group_channels;
  return t;
}

// Fewest channels per group for which `automatic` takes the tiled kernels: a thread of theirs
// computes kChannelsPerThread channels, and the weights a block stages are reused by every channel
// of the group; with fewer than two vectors of channels the staging (a pass over the tile's
// weights and two barriers per round) buys little over the simple kernels, which need no shared
// memory. An estimate from the kernels' structure, not yet a measurement (no GPU has run them).
constexpr int64_t kTiledMinGroupChannels = 2 * kChannelsPerThread;

// The kernels one pass of one call runs: the tiled ones with `plan`, or the simple ones.
struct PassChoice {
  bool tiled;
  TilePlan plan;  // the tiled plan (also when the simple kernels run: shared_bytes == 0 if none fits)
};

inline PassChoice choose_kernels(const Geometry& g, Pass pass, int64_t accumulator_bytes,
                                 CudaKernels choice, int64_t multiprocessors) {
  if (choice == CudaKernels::simple) return {false, TilePlan{}};
  const TilePlan plan = plan_tiles(g, pass, accumulator_bytes, multiprocessors);
  if (!plan.fits()) return {false, plan};
  if (choice == CudaKernels::tiled) return {true, plan};
  return {g.group_channels >= kTiledMinGroupChannels, plan};
}

}  // namespace cuda
}  // namespace carafe_exp
