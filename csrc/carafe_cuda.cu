// CUDA entry points of CARAFE (upsampling) and CARAFE++ (downsampling): launch the kernels that
// carafe_cuda_dispatch.h picks (carafe_cuda_simple.cuh or carafe_cuda_tiled.cuh) on the current
// stream of the tensors' device.

// c10's stream header rather than ATen/cuda/CUDAContext.h: the latter pulls in the cuBLAS and
// cuSPARSE headers, which a bare CUDA toolkit may lack and these kernels do not use.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <atomic>

#include "carafe.h"
#include "carafe_cuda_dispatch.h"

namespace carafe_exp {
namespace {

// Launches a kernel on `stream` and checks the launch.
struct StreamLaunch {
  cudaStream_t stream;

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), const cuda::LaunchConfig& config,
                  Args... args) const {
    kernel<<<static_cast<unsigned int>(config.blocks), config.threads,
             static_cast<size_t>(config.shared_bytes), stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// Multiprocessors of the current device, which shape the tiled kernels' grid; asked once per
// device (the query costs a driver call).
int64_t multiprocessors() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> counts[kMaxDevices] = {};
  const int device = c10::cuda::current_device();
  if (device < 0 || device >= kMaxDevices) return cuda::kDefaultMultiprocessors;
  int count = counts[device].load();
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device] = count;
  }
  return count;
}

}  // namespace

void carafe_forward_cuda(const at::Tensor& features, const at::Tensor& kernels,
                         at::Tensor& output, const Geometry& geometry, CudaKernels choice) {
  const c10::cuda::CUDAGuard guard(features.device());
  StreamLaunch launch{c10::cuda::getCurrentCUDAStream()};
  cuda::launch_forward(launch, features, kernels, output, geometry, choice, multiprocessors());
}

void carafe_backward_cuda(const at::Tensor& grad_output, const at::Tensor& features,
                          const at::Tensor& kernels, at::Tensor& grad_features,
                          at::Tensor& grad_kernels, const Geometry& geometry,
                          CudaKernels choice) {
  const c10::cuda::CUDAGuard guard(features.device());
  StreamLaunch launch{c10::cuda::getCurrentCUDAStream()};
  cuda::launch_backward(launch, grad_output, features, kernels, grad_features, grad_kernels,
                        geometry, choice, multiprocessors());
}

}  // namespace carafe_exp
