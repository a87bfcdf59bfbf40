// Kernels that test the CUDA emulation itself (test-only): each exercises one promise of
// cuda_emulation.h, so that a test can show the emulation would catch what a GPU would expose.
#pragma once

#include <cstdint>

#include "carafe_cuda_compat.h"

namespace carafe_exp {
namespace emulation_probes {

// out[block, i] = in[block, blockDim - 1 - i] through dynamic shared memory. Without the barrier
// a thread reads entries that other threads have not written yet (poison, in at least one of
// the two thread orders); with it, every order gives the reversal.
__global__ void reverse_through_dynamic_shared(const float* in, float* out, bool with_barrier) {
  float* staged = cuda::dynamic_shared<float>();
  const int64_t base = int64_t(blockIdx.x) * blockDim.x;
  staged[threadIdx.x] = in[base + threadIdx.x];
  if (with_barrier) __syncthreads();
  out[base + threadIdx.x] = staged[blockDim.x - 1 - threadIdx.x];
}

// The same through a static __shared__ array (at most 1024 threads), with the barrier.
__global__ void reverse_through_static_shared(const float* in, float* out) {
  __shared__ float staged[1024];
  const int64_t base = int64_t(blockIdx.x) * blockDim.x;
  staged[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = staged[blockDim.x - 1 - threadIdx.x];
}

// Odd threads return before a barrier the even ones wait at: undefined on a GPU.
__global__ void barrier_in_divergent_code(float* out) {
  if (threadIdx.x % 2 == 1) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// A 16-byte vector load from `offset` floats past a 16-byte aligned address.
__global__ void vector_load(const float* in, float* out, int offset) {
  const cuda::Vector<float, 4> values = cuda::load_vector<float, 4>(in + offset);
  out[threadIdx.x] = values.values[threadIdx.x % 4];
}

// Every thread writes dynamic shared memory element `index`.
__global__ void write_shared(int64_t index) {
  float* staged = cuda::dynamic_shared<float>();
  staged[index] = 1.0f;
}

}  // namespace emulation_probes
}  // namespace carafe_exp
