// The few CUDA facilities the kernels use beyond plain C++, behind one seam, so that the same
// kernel source compiles with nvcc and, for the tests, as host code under the CUDA emulation
// (emulation/cuda_emulation.h, selected by CARAFE_CUDA_EMULATION). Everything else the kernels
// use (qualifiers, threadIdx/blockIdx/blockDim/gridDim, __syncthreads, the half and bfloat16
// conversions of c10::Half/c10::BFloat16) is spelled as in CUDA.
#pragma once

#include <cstdint>

#ifdef CARAFE_CUDA_EMULATION
#include <cstring>

#include "emulation/cuda_emulation.h"
#endif

// Deliberate bugs that the emulation tests switch on one at a time, to show that the emulation
// catches them (emulation/cuda_emulation.h: Fault); a constant false in every real build, where
// the compiler removes the code they guard.
#ifdef CARAFE_CUDA_EMULATION
#define CARAFE_FAULT(name) \
  (::carafe_exp::emulation::fault_active(::carafe_exp::emulation::Fault::name))
#else
#define CARAFE_FAULT(name) false
#endif

// Asks for a loop to be unrolled (nvcc's and GCC's spellings differ).
#if defined(__CUDACC__)
#define CARAFE_UNROLL _Pragma("unroll")
#else
#define CARAFE_UNROLL _Pragma("GCC unroll 8")
#endif

namespace carafe_exp {
namespace cuda {

// The dynamic shared memory of the running block (the launch's third <<<>>> argument), as T*.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
#ifdef CARAFE_CUDA_EMULATION
  return reinterpret_cast<T*>(emulation::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) unsigned char carafe_dynamic_shared[];
  return reinterpret_cast<T*>(carafe_dynamic_shared);
#endif
}

// N consecutive elements as one aligned vector: one load instruction (16 bytes at most).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vector {
  T values[N];
};

// Loads N elements from `address`, which must be aligned to the vector's size: on a GPU a
// misaligned vector load is a fault, and the emulation reports it as an error.
template <typename T, int N>
__device__ __forceinline__ Vector<T, N> load_vector(const T* address) {
#ifdef CARAFE_CUDA_EMULATION
  // Reported, then read byte-wise: the host's aligned vector load would fault like the GPU's.
  emulation::check_aligned(address, sizeof(Vector<T, N>));
  Vector<T, N> values;
  std::memcpy(&values, address, sizeof(values));
  return values;
#else
  return *reinterpret_cast<const Vector<T, N>*>(address);
#endif
}

// Reads the first byte at `address` and ignores it: the deliberate out-of-bounds reads of
// CARAFE_FAULT, invisible in the results (a volatile read the compiler must keep).
template <typename T>
__device__ __forceinline__ void touch(const T* address) {
  (void)*reinterpret_cast<const volatile unsigned char*>(address);
}

}  // namespace cuda
}  // namespace carafe_exp
