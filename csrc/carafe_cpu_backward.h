// The two halves of the CPU backward pass (carafe_cpu_grad_kernels.cpp,
// carafe_cpu_grad_features.cpp), joined by carafe_backward_cpu in carafe_cpu_backward.cpp.
#pragma once

#include <ATen/ATen.h>

#include "carafe_geometry.h"

namespace carafe_exp {
namespace cpu {

// dK[n, g*k*k + t, y, x] = sum over the channels c of group g of dOut[n,c,y,x] * X[n,c, src + d_t].
void grad_kernels_cpu(const at::Tensor& grad_output, const at::Tensor& features,
                      at::Tensor& grad_kernels, const Geometry& geometry);

// dX[n,c,i,j] = sum over the outputs (y, x) and taps t reading (i, j) of K[n,t,y,x] * dOut[n,c,y,x].
void grad_features_cpu(const at::Tensor& grad_output, const at::Tensor& kernels,
                       at::Tensor& grad_features, const Geometry& geometry);

}  // namespace cpu
}  // namespace carafe_exp
