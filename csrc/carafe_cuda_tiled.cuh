// The tiled CUDA kernels of CARAFE (upsampling) and CARAFE++ (downsampling), laid out the way a
// GPU wants them: one block of up to kTiledThreads threads per (image, group, tile), its shape
// and thread count given by the plan (carafe_cuda_plan.h).
//
// - Forward: the tile's kernel weights (k*k per output pixel) are staged in shared memory once
//   and reused for every channel of the group; the input window the tile reads is staged a chunk
//   of channels at a time; each thread accumulates kChannelsPerThread channels of one output
//   pixel, so every weight read from shared memory feeds that many FMAs, or, upsampling by 2 or
//   4, of the s x s outputs sharing a source pixel, so every staged input feeds s*s FMAs too.
// - Kernel gradient: each (tap, pixel) of the tile is accumulated by one thread in shared
//   memory over the chunks of channels, from the staged grad_output tile and input window.
// - Feature gradient: a tile of input pixels gathers from the window of outputs that read it;
//   the weights each input pixel needs (k*k taps times s*s sub-pixel readers when upsampling)
//   are staged once and reused for every channel.
// Every element is written by exactly one thread in a fixed order: no atomics, deterministic.
// Channels-last tensors are staged with 16-byte vector loads when their strides allow; half
// types are converted to float when staged and accumulate in float (at::opmath_type). Taps
// whose neighbour lies outside the map are skipped, not multiplied by zero, as in the reference.
// A block-stride loop over the tiles lets any grid size (a capped grid included) cover the map.
// On a large GPU a map with few tiles splits each group's channels across blocks (Tile::c_begin,
// c_end; carafe_cuda_plan.h): each block of a split stages the same weights and its own channels.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "carafe_cuda_compat.h"
#include "carafe_cuda_plan.h"
#include "carafe_geometry.h"

namespace carafe_exp {
namespace cuda {

// dst[c][p] = src[n, first + c, tile pixel p] for c < count (zero for count <= c < padded and
// for tile pixels outside the map), p over the plan's tile_h x tile_w pixels.
template <typename scalar_t, typename acc_t>
__device__ void stage_tile(const scalar_t* __restrict__ src, const Strides4& ss, const TilePlan& plan,
                           const Tile& tile, int64_t first, int count, int padded,
                           acc_t* __restrict__ dst) {
  const int pixels = static_cast<int>(plan.pixels());
  // Channels-last: a pixel's channels are adjacent, so consecutive threads take channels.
  const bool channels_fastest = ss.c < ss.w;
  for (int item = threadIdx.x; item < padded * pixels; item += blockDim.x) {
    const int c = channels_fastest ? item % padded : item / pixels;
    const int p = channels_fastest ? item / padded : item % pixels;
    const int py = p / static_cast<int>(plan.tile_w), px = p % static_cast<int>(plan.tile_w);
    acc_t value = 0;
    if (c < count && py < tile.h && px < tile.w) {
      value = static_cast<acc_t>(src[ss.offset(tile.n, first + c, tile.y0 + py, tile.x0 + px)]);
    }
    dst[c * pixels + p] = value;
  }
}

// dst[c][row][col] = src[n, first + c, row0 + row, col0 + col] over the plan's window, zero
// outside the map and for channels count <= c < padded.
template <typename scalar_t, typename acc_t>
__device__ void stage_window(const scalar_t* __restrict__ src, const Strides4& ss,
                             const TilePlan& plan, int64_t n, int64_t first, int count, int padded,
                             int64_t row0, int64_t col0, int64_t map_h, int64_t map_w,
                             acc_t* __restrict__ dst) {
  constexpr int kLanes = 16 / static_cast<int>(sizeof(scalar_t));  // elements per 16-byte load
  const int window_w = static_cast<int>(plan.window_w);
  const int window = static_cast<int>(plan.window());
  int vectored = 0;  // channels [0, vectored) are read with vector loads
  if (ss.c == 1 && kLanes > 1) {
    // Every pixel's first channel sits on a 16-byte boundary when the strides and the first
    // channel's address are multiples of 16 bytes.
    constexpr int64_t kBytes = sizeof(scalar_t);
    const bool aligned =
        (ss.n * kBytes) % 16 == 0 && (ss.h * kBytes) % 16 == 0 && (ss.w * kBytes) % 16 == 0 &&
        reinterpret_cast<uintptr_t>(src + n * ss.n + first) % 16 == 0;
    if (aligned) vectored = count / kLanes * kLanes;
    const int vectors = vectored / kLanes;
    for (int item = threadIdx.x; item < vectors * window; item += blockDim.x) {
      const int position = item / vectors, vec = item % vectors;
      const int64_t iy = row0 + position / window_w, ix = col0 + position % window_w;
      acc_t* out = dst + vec * kLanes * window + position;
      if (iy >= 0 && iy < map_h && ix >= 0 && ix < map_w) {
        const Vector<scalar_t, kLanes> values =
            load_vector<scalar_t, kLanes>(src + ss.offset(n, first + vec * kLanes, iy, ix));
        CARAFE_UNROLL
        for (int j = 0; j < kLanes; ++j) out[j * window] = static_cast<acc_t>(values.values[j]);
      } else {
        CARAFE_UNROLL
        for (int j = 0; j < kLanes; ++j) out[j * window] = acc_t(0);
      }
    }
  }
  // The remaining channels element by element: along rows for NCHW, along channels otherwise.
  const int rest = padded - vectored;
  const bool channels_fastest = ss.c < ss.w;
  for (int item = threadIdx.x; item < rest * window; item += blockDim.x) {
    const int c = vectored + (channels_fastest ? item % rest : item / window);
    const int position = channels_fastest ? item / rest : item % window;
    const int64_t iy = row0 + position / window_w, ix = col0 + position % window_w;
    acc_t value = 0;
    if (c < count && iy >= 0 && iy < map_h && ix >= 0 && ix < map_w) {
      value = static_cast<acc_t>(src[ss.offset(n, first + c, iy, ix)]);
    }
    dst[c * window + position] = value;
  }
}

__device__ __forceinline__ int smaller(int a, int b) { return a < b ? a : b; }

// Work item `item` of `vectors` channel vectors times `pixels` pixels: consecutive threads take
// consecutive channel vectors when `channels_fastest` (channels-last outputs), else pixels.
struct PixelVector {
  int pixel, vec;
};

__device__ __forceinline__ PixelVector pixel_vector(int item, int pixels, int vectors,
                                                    bool channels_fastest) {
  return channels_fastest ? PixelVector{item / vectors, item % vectors}
                          : PixelVector{item % pixels, item / pixels};
}

// Taps [begin, end) along one axis whose neighbour source + tap - r lies inside [0, size).
struct TapRange {
  int begin, end;
};

__device__ __forceinline__ TapRange taps_inside(int64_t source, int64_t r, int64_t k,
                                                int64_t size) {
  const int64_t begin = r - source > 0 ? r - source : 0;
  const int64_t end = size - source + r < k ? size - source + r : k;
  return {static_cast<int>(begin), static_cast<int>(end > begin ? end : begin)};
}

// The output position along one axis that reads input position `i` through offset `d` as its
// `a`-th sub-pixel (upsampling; a = 0 when downsampling), if there is one.
__device__ __forceinline__ bool output_reading(const Geometry& g, int64_t i, int64_t d, int64_t a,
                                               int64_t in_size, int64_t out_size,
                                               int64_t& out_pos) {
  const int64_t src = i - d;  // the source position of the outputs that read i through d
  if (src < 0 || src >= in_size) return false;
  if (!g.down) {
    out_pos = src * g.scale + a;
    return true;
  }
  if (src % g.scale != 0 || src / g.scale >= out_size) return false;
  out_pos = src / g.scale;
  return true;
}

// S: outputs per thread and axis (plan.cell). S > 1 only upsampling by S, where the S x S outputs
// of a cell share their source pixel and so the staged inputs of every tap: per tap a thread
// loads V inputs and S*S weights for S*S*V FMAs (S = 1: V + 1 loads for V FMAs).
template <typename scalar_t, int S>
__global__ void __launch_bounds__(kTiledThreads)
    forward_tiled_kernel(const scalar_t* __restrict__ features, const scalar_t* __restrict__ kernels,
                         scalar_t* __restrict__ out, Geometry g, TilePlan plan, Strides4 xs,
                         Strides4 ks, Strides4 os) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kChannelsPerThread;
  const int k = static_cast<int>(g.kernel_size), r = static_cast<int>(g.radius);
  const int taps = k * k, pixels = static_cast<int>(plan.pixels());
  const int tile_w = static_cast<int>(plan.tile_w);
  const int cells_w = tile_w / S, cells = pixels / (S * S);
  const int window = static_cast<int>(plan.window()), window_w = static_cast<int>(plan.window_w);
  acc_t* weights = dynamic_shared<acc_t>();  // [taps][pixels]
  acc_t* inputs = weights + taps * pixels;    // [chunk][window]
  const bool channels_fastest = os.c < os.w;
  for (int64_t b = blockIdx.x; b < plan.blocks; b += gridDim.x) {
    const Tile tile = tile_of(plan, g, b);
    const int c_end = static_cast<int>(tile.c_end);
    __syncthreads();  // the previous tile's readers are done with shared memory
    stage_tile(kernels, ks, plan, tile, tile.grp * taps, taps, taps, weights);
    const int64_t row0 = input_window_origin(g, tile.y0), col0 = input_window_origin(g, tile.x0);
    for (int c0 = static_cast<int>(tile.c_begin); c0 < c_end; c0 += static_cast<int>(plan.chunk)) {
      const int count = smaller(static_cast<int>(plan.chunk), c_end - c0);
      const int vectors = (count + V - 1) / V;
      __syncthreads();  // the previous chunk's readers are done with the window
      stage_window(features, xs, plan, tile.n, tile.grp * g.group_channels + c0, count, vectors * V,
                   row0, col0, g.in_h, g.in_w, inputs);
      __syncthreads();  // weights and window staged
      for (int item = threadIdx.x; item < cells * vectors; item += blockDim.x) {
        const PixelVector pv = pixel_vector(item, cells, vectors, channels_fastest);
        const int py = pv.pixel / cells_w * S, px = pv.pixel % cells_w * S;  // the cell's first
        if (py >= tile.h || px >= tile.w) continue;  // (S > 1: a cell is inside or outside whole)
        const int64_t y = tile.y0 + py, x = tile.x0 + px;
        const int64_t sy = g.source(y), sx = g.source(x);
        const TapRange rows = taps_inside(sy, r, k, g.in_h), cols = taps_inside(sx, r, k, g.in_w);
        const acc_t* in = inputs + pv.vec * V * window +
                          static_cast<int>((sy - r - row0) * window_w + (sx - r - col0));
        const acc_t* cell_weights = weights + py * tile_w + px;
        acc_t acc[S * S][V];
        CARAFE_UNROLL
        for (int o = 0; o < S * S; ++o) {
          CARAFE_UNROLL
          for (int v = 0; v < V; ++v) acc[o][v] = acc_t(0);
        }
        for (int dy = rows.begin; dy < rows.end; ++dy) {
          for (int dx = cols.begin; dx < cols.end; ++dx) {
            const int offset = dy * window_w + dx;
            acc_t staged[V];
            CARAFE_UNROLL
            for (int v = 0; v < V; ++v) staged[v] = in[v * window + offset];
            const acc_t* tap_weights = cell_weights + (dy * k + dx) * pixels;
            CARAFE_UNROLL
            for (int a = 0; a < S; ++a) {
              CARAFE_UNROLL
              for (int e = 0; e < S; ++e) {
                const acc_t w = tap_weights[a * tile_w + e];
                CARAFE_UNROLL
                for (int v = 0; v < V; ++v) acc[a * S + e][v] += w * staged[v];
              }
            }
          }
        }
        if (CARAFE_FAULT(shared_read_past_end)) {
          // Deliberate bug (emulation tests only): one element past the staged windows.
          touch(inputs + plan.chunk * window);
        }
        CARAFE_UNROLL
        for (int v = 0; v < V; ++v) {
          const int c = c0 + pv.vec * V + v;
          if (c >= c_end) continue;
          // Deliberate bug (emulation tests only): the slice's last channel is never written.
          if (CARAFE_FAULT(unwritten_output) && c == c_end - 1) continue;
          CARAFE_UNROLL
          for (int a = 0; a < S; ++a) {
            CARAFE_UNROLL
            for (int e = 0; e < S; ++e) {
              out[os.offset(tile.n, tile.grp * g.group_channels + c, y + a, x + e)] =
                  static_cast<scalar_t>(acc[a * S + e][v]);
            }
          }
        }
      }
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTiledThreads)
    grad_kernels_tiled_kernel(const scalar_t* __restrict__ grad_out,
                              const scalar_t* __restrict__ features,
                              scalar_t* __restrict__ grad_kernels, Geometry g, TilePlan plan,
                              Strides4 gos, Strides4 xs, Strides4 gks) {
  using acc_t = at::opmath_type<scalar_t>;
  const int k = static_cast<int>(g.kernel_size), r = static_cast<int>(g.radius);
  const int taps = k * k, pixels = static_cast<int>(plan.pixels());
  const int window = static_cast<int>(plan.window()), window_w = static_cast<int>(plan.window_w);
  const int group_channels = static_cast<int>(g.group_channels);
  acc_t* grads = dynamic_shared<acc_t>();                          // [taps][pixels]
  acc_t* douts = grads + taps * pixels;                            // [chunk][pixels]
  acc_t* inputs = douts + static_cast<int>(plan.chunk) * pixels;  // [chunk][window]
  const bool taps_fastest = gks.c < gks.w;
  for (int64_t b = blockIdx.x; b < plan.blocks; b += gridDim.x) {
    const Tile tile = tile_of(plan, g, b);
    __syncthreads();  // the previous tile's gradients are stored
    for (int item = threadIdx.x; item < taps * pixels; item += blockDim.x) grads[item] = acc_t(0);
    const int64_t row0 = input_window_origin(g, tile.y0), col0 = input_window_origin(g, tile.x0);
    for (int c0 = 0; c0 < group_channels; c0 += static_cast<int>(plan.chunk)) {
      const int count = smaller(static_cast<int>(plan.chunk), group_channels - c0);
      const int64_t first = tile.grp * g.group_channels + c0;
      __syncthreads();  // the previous chunk's readers are done
      stage_tile(grad_out, gos, plan, tile, first, count, count, douts);
      stage_window(features, xs, plan, tile.n, first, count, count, row0, col0, g.in_h, g.in_w,
                   inputs);
      __syncthreads();
      // Item (tap, pixel) is always the same thread's: it alone accumulates grads[item].
      for (int item = threadIdx.x; item < taps * pixels; item += blockDim.x) {
        const int t = item / pixels, p = item % pixels;
        const int py = p / static_cast<int>(plan.tile_w), px = p % static_cast<int>(plan.tile_w);
        if (py >= tile.h || px >= tile.w) continue;
        const int64_t iy = g.source(tile.y0 + py) + t / k - r;
        const int64_t ix = g.source(tile.x0 + px) + t % k - r;
        if (iy < 0 || iy >= g.in_h || ix < 0 || ix >= g.in_w) continue;  // gradient stays 0
        const acc_t* in = inputs + static_cast<int>((iy - row0) * window_w + (ix - col0));
        acc_t acc = grads[item];
        for (int c = 0; c < count; ++c) acc += douts[c * pixels + p] * in[c * window];
        grads[item] = acc;
      }
    }
    __syncthreads();  // every (tap, pixel) accumulated
    for (int item = threadIdx.x; item < taps * pixels; item += blockDim.x) {
      const int t = taps_fastest ? item % taps : item / pixels;
      const int p = taps_fastest ? item / taps : item % pixels;
      const int py = p / static_cast<int>(plan.tile_w), px = p % static_cast<int>(plan.tile_w);
      if (py >= tile.h || px >= tile.w) continue;
      grad_kernels[gks.offset(tile.n, tile.grp * taps + t, tile.y0 + py, tile.x0 + px)] =
          static_cast<scalar_t>(grads[t * pixels + p]);
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTiledThreads)
    grad_features_tiled_kernel(const scalar_t* __restrict__ grad_out,
                               const scalar_t* __restrict__ kernels,
                               scalar_t* __restrict__ grad_features, Geometry g, TilePlan plan,
                               Strides4 gos, Strides4 ks, Strides4 gxs) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kChannelsPerThread;
  const int k = static_cast<int>(g.kernel_size), r = static_cast<int>(g.radius);
  const int taps = k * k, pixels = static_cast<int>(plan.pixels());
  const int readers = static_cast<int>(plan.readers);  // sub-pixel outputs per tap and axis
  const int terms = taps * readers * readers;
  const int window = static_cast<int>(plan.window()), window_w = static_cast<int>(plan.window_w);
  acc_t* weights = dynamic_shared<acc_t>();  // [tap][a][b][pixels]
  acc_t* douts = weights + terms * pixels;    // [chunk][window of outputs]
  const bool channels_fastest = gxs.c < gxs.w;
  for (int64_t b = blockIdx.x; b < plan.blocks; b += gridDim.x) {
    const Tile tile = tile_of(plan, g, b);
    __syncthreads();  // the previous tile's readers are done with shared memory
    // The weight of every output that reads each pixel of the tile, once for all channels.
    for (int item = threadIdx.x; item < terms * pixels; item += blockDim.x) {
      const int term = item / pixels, p = item % pixels;
      const int t = term / (readers * readers), a = (term / readers) % readers, c = term % readers;
      const int py = p / static_cast<int>(plan.tile_w), px = p % static_cast<int>(plan.tile_w);
      int64_t y = 0, x = 0;
      acc_t w = 0;
      if (py < tile.h && px < tile.w &&
          output_reading(g, tile.y0 + py, t / k - r, a, g.in_h, g.out_h, y) &&
          output_reading(g, tile.x0 + px, t % k - r, c, g.in_w, g.out_w, x)) {
        w = static_cast<acc_t>(kernels[ks.offset(tile.n, tile.grp * taps + t, y, x)]);
      }
      weights[item] = w;
    }
    const int64_t row0 = output_window_origin(g, tile.y0), col0 = output_window_origin(g, tile.x0);
    const int c_end = static_cast<int>(tile.c_end);
    for (int c0 = static_cast<int>(tile.c_begin); c0 < c_end; c0 += static_cast<int>(plan.chunk)) {
      const int count = smaller(static_cast<int>(plan.chunk), c_end - c0);
      const int vectors = (count + V - 1) / V;
      __syncthreads();  // the previous chunk's readers are done with the window
      stage_window(grad_out, gos, plan, tile.n, tile.grp * g.group_channels + c0, count,
                   vectors * V, row0, col0, g.out_h, g.out_w, douts);
      __syncthreads();
      for (int item = threadIdx.x; item < pixels * vectors; item += blockDim.x) {
        const PixelVector pv = pixel_vector(item, pixels, vectors, channels_fastest);
        const int py = pv.pixel / static_cast<int>(plan.tile_w);
        const int px = pv.pixel % static_cast<int>(plan.tile_w);
        if (py >= tile.h || px >= tile.w) continue;
        const int64_t i = tile.y0 + py, j = tile.x0 + px;
        const acc_t* in = douts + pv.vec * V * window;
        acc_t acc[V];
        CARAFE_UNROLL
        for (int v = 0; v < V; ++v) acc[v] = acc_t(0);
        for (int t = 0; t < taps; ++t) {
          for (int a = 0; a < readers; ++a) {
            int64_t y = 0;
            if (!output_reading(g, i, t / k - r, a, g.in_h, g.out_h, y)) continue;
            for (int c = 0; c < readers; ++c) {
              int64_t x = 0;
              if (!output_reading(g, j, t % k - r, c, g.in_w, g.out_w, x)) continue;
              const acc_t w = weights[((t * readers + a) * readers + c) * pixels + pv.pixel];
              const int offset = static_cast<int>((y - row0) * window_w + (x - col0));
              CARAFE_UNROLL
              for (int v = 0; v < V; ++v) acc[v] += w * in[v * window + offset];
            }
          }
        }
        CARAFE_UNROLL
        for (int v = 0; v < V; ++v) {
          const int c = c0 + pv.vec * V + v;
          if (c < c_end) {
            grad_features[gxs.offset(tile.n, tile.grp * g.group_channels + c, i, j)] =
                static_cast<scalar_t>(acc[v]);
          }
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace carafe_exp
