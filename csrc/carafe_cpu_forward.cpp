// CPU forward kernel of CARAFE (upsampling) and CARAFE++ (downsampling).
//
// The forward pass is arithmetic-bound (about 12 FLOPs per byte it must move) and is built
// around one register tile (carafe_cpu_forward_tile.h): for upsampling, the s*s sub-pixel
// outputs of an input pixel read the same inputs, so a tile computes 4 of them for several
// channels at once (6 with AVX-512's 32 vector registers: 24 FMAs for 10 vector loads per tap).
// Input rows are buffered zero padded as float rows (carafe_cpu_rows.h); outputs larger than
// the cache go out with streaming stores.
//
// Parallelism: at::parallel_for over (batch, group, band of rows, channel split). Kernel
// weights are shared by the channels of a group, so their buffers are filled once per task and
// reused for every channel. Half types accumulate in float (at::opmath_type).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "carafe.h"
#include "carafe_cpu_common.h"
#include "carafe_cpu_forward_tile.h"
#include "carafe_cpu_input_rows.h"
#include "carafe_cpu_rows.h"

namespace carafe_exp {
namespace cpu {
namespace {

// Task rows per forward task: consecutive rows share input rows, filled once for the band.
constexpr int64_t kForwardBand = 4;

// Bytes of weights a forward task may buffer for one column block: they are re-read for every
// tile of channels and must stay in L2. Blocks as wide as this allows are faster: every block
// re-reads the input rows in short pieces that the hardware prefetchers follow poorly.
constexpr int64_t kForwardWeightBytes = 384 * 1024;

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
  // For a large k*k*s*s the budget allows less than one SIMD vector of columns; even_block then
  // gives one vector per block and the weight buffers outgrow L2 (slower, still exact).
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

}  // namespace
}  // namespace cpu

void carafe_forward_cpu(const at::Tensor& features, const at::Tensor& kernels,
                        at::Tensor& output, const Geometry& geometry) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                  "carafe_forward_cpu", [&] {
                                    cpu::forward_impl<scalar_t>(features, kernels, output, geometry);
                                  });
}

}  // namespace carafe_exp
