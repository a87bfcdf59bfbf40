// Host emulation of what the CUDA kernels use from CUDA, so that their own source compiles
// unchanged as host code and runs on the CPU in the tests (CARAFE_CUDA_EMULATION; test-only).
//
// - __global__/__device__/__host__/__forceinline__/__launch_bounds__ become plain C++.
// - threadIdx, blockIdx, blockDim, gridDim are thread-local variables set by the launch.
// - launch() runs the grid block after block. Each thread of a block is a fiber (ucontext) with
//   its own stack; __syncthreads() switches back to the block's scheduler, which runs every thread
//   up to the barrier (in ascending or descending thread order) before releasing any: the block
//   executes phase by phase between barriers, as a GPU guarantees and no more.
// - Dynamic shared memory is filled with 0xFF bytes (a NaN in every floating type) before each
//   block, so a read of something no thread staged shows up in the results, and is fenced by
//   canaries, so a write past its end is reported.
// - Built with -fsanitize=address (a test does), the canaries are poisoned for AddressSanitizer,
//   so a read past the shared memory is reported too, as is any read past a tensor (torch's
//   allocations get ASan's red zones when libasan is preloaded).
// - Misbehaviour the hardware would fault on or leave undefined is an error thrown by launch():
//   a misaligned vector load, a write outside the dynamic shared memory, a __syncthreads() that
//   some threads of a block never reach, more than 1024 threads or 48 KiB of dynamic shared memory.
// Half and bfloat16 need nothing here: the kernels convert through c10::Half / c10::BFloat16,
// whose conversions are the same IEEE round-to-nearest-even on the host and on the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one at a time on a host thread, so a thread_local is shared by exactly one block's
// threads. (The kernels here use dynamic shared memory, which is also poisoned; this is not.)
#define __shared__ static thread_local

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

// Waits until every thread of the block has reached this barrier.
void __syncthreads();

namespace carafe_exp {
namespace emulation {

enum class ThreadOrder { ascending, descending };

// What one launch ran, for the tests to check which kernel and configuration a call used.
struct LaunchRecord {
  std::string name;
  dim3 grid, block;
  int64_t shared_bytes;
  int64_t blocks_run;
  int64_t barriers;      // __syncthreads() phases of the block that had the most
  int64_t vector_loads;  // load_vector calls (carafe_cuda_compat.h), all blocks together
};

// Runs `kernel` (a call of the kernel with its arguments) as every thread of `grid` x `block`.
// Throws std::runtime_error naming the kernel, the block and the problem when a kernel misbehaves.
void launch(const std::string& name, dim3 grid, dim3 block, int64_t shared_bytes,
            ThreadOrder order, const std::function<void()>& kernel);

// __syncthreads(): back to the block's scheduler until every thread of the block is here.
void barrier();

// The running block's dynamic shared memory.
void* dynamic_shared_memory();

// Counts a vector load of `bytes` at `address`, and records an error when `address` is not a
// multiple of `bytes`.
void check_aligned(const void* address, size_t bytes);

// Deliberate bugs of the kernels (CARAFE_FAULT in carafe_cuda_compat.h), switched on one at a
// time by the tests that show the emulation catches them; `none` in normal use.
enum class Fault { none, unwritten_output, shared_read_past_end, global_read_past_end };
void set_fault(Fault fault);
bool fault_active(Fault fault);

// Launches since the last clear_launches(), in order.
std::vector<LaunchRecord> launches();
void clear_launches();

}  // namespace emulation
}  // namespace carafe_exp
