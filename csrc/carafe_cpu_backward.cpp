// CPU backward pass of CARAFE / CARAFE++: both gradients, each a deterministic gather.

#include "carafe.h"
#include "carafe_cpu_backward.h"

namespace carafe_exp {

void carafe_backward_cpu(const at::Tensor& grad_output, const at::Tensor& features,
                         const at::Tensor& kernels, at::Tensor& grad_features,
                         at::Tensor& grad_kernels, const Geometry& geometry) {
  cpu::grad_kernels_cpu(grad_output, features, grad_kernels, geometry);
  cpu::grad_features_cpu(grad_output, kernels, grad_features, geometry);
}

}  // namespace carafe_exp
