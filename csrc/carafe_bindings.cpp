// Python bindings of the compiled CARAFE extension: allocate outputs in the requested memory
// format, build the Geometry and dispatch to the CPU or CUDA kernels. Argument checking with
// readable messages lives in Python (carafe_exp/ops/validation.py); the TORCH_CHECKs here
// only guard the invariants the kernels rely on.

#include <torch/extension.h>

#include <tuple>

#include "carafe.h"

namespace carafe_exp {
namespace {

Geometry make_geometry(const at::Tensor& features, const at::Tensor& kernels,
                       int64_t kernel_size, int64_t scale, int64_t groups, bool down) {
  TORCH_CHECK(features.dim() == 4 && kernels.dim() == 4, "carafe: expected 4-D tensors");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "carafe: kernel_size must be odd");
  TORCH_CHECK(scale >= 1, "carafe: scale must be >= 1");
  TORCH_CHECK(groups >= 1 && features.size(1) % groups == 0,
              "carafe: groups must divide the channels");
  TORCH_CHECK(features.scalar_type() == kernels.scalar_type(),
              "carafe: features and kernels must share a dtype");
  TORCH_CHECK(features.device() == kernels.device(),
              "carafe: features and kernels must share a device");
  Geometry g;
  g.batch = features.size(0);
  g.channels = features.size(1);
  g.in_h = features.size(2);
  g.in_w = features.size(3);
  g.out_h = down ? (g.in_h + scale - 1) / scale : g.in_h * scale;
  g.out_w = down ? (g.in_w + scale - 1) / scale : g.in_w * scale;
  g.kernel_size = kernel_size;
  g.radius = kernel_size / 2;
  g.scale = scale;
  g.groups = groups;
  g.group_channels = g.channels / groups;
  g.down = down;
  TORCH_CHECK(kernels.size(0) == g.batch && kernels.size(1) == groups * g.taps() &&
                  kernels.size(2) == g.out_h && kernels.size(3) == g.out_w,
              "carafe: kernels have shape ", kernels.sizes(), ", expected (", g.batch, ", ",
              groups * g.taps(), ", ", g.out_h, ", ", g.out_w, ")");
  return g;
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Dispatches the forward kernels into `output` (already allocated, any strides).
void run_forward(const at::Tensor& features, const at::Tensor& kernels, at::Tensor& output,
                 const Geometry& g) {
  if (output.numel() == 0) return;
  if (features.is_cuda()) {
#ifdef CARAFE_WITH_CUDA
    carafe_forward_cuda(features, kernels, output, g);
#else
    TORCH_CHECK(false, "carafe: this build of the extension has no CUDA kernels");
#endif
  } else {
    TORCH_CHECK(features.is_cpu(), "carafe: unsupported device ", features.device());
    carafe_forward_cpu(features, kernels, output, g);
  }
}

at::Tensor forward(const at::Tensor& features, const at::Tensor& kernels, int64_t kernel_size,
                   int64_t scale, int64_t groups, bool down, bool channels_last) {
  const Geometry g = make_geometry(features, kernels, kernel_size, scale, groups, down);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                                features.options().memory_format(format_of(channels_last)));
  run_forward(features, kernels, output, g);
  return output;
}

// Writes the reassembly into `output` (any strides), which must have the output's shape, dtype
// and device: the op benchmark times the kernels with it, apart from the first touch of a fresh
// output's memory.
void forward_into(const at::Tensor& features, const at::Tensor& kernels, int64_t kernel_size,
                  int64_t scale, int64_t groups, bool down, at::Tensor output) {
  const Geometry g = make_geometry(features, kernels, kernel_size, scale, groups, down);
  TORCH_CHECK(output.dim() == 4 && output.size(0) == g.batch && output.size(1) == g.channels &&
                  output.size(2) == g.out_h && output.size(3) == g.out_w &&
                  output.scalar_type() == features.scalar_type() &&
                  output.device() == features.device(),
              "carafe: output has shape ", output.sizes(), ", dtype ", output.scalar_type(),
              " and device ", output.device(), ", expected (", g.batch, ", ", g.channels, ", ",
              g.out_h, ", ", g.out_w, "), ", features.scalar_type(), " on ", features.device());
  run_forward(features, kernels, output, g);
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output,
                                            const at::Tensor& features,
                                            const at::Tensor& kernels, int64_t kernel_size,
                                            int64_t scale, int64_t groups, bool down,
                                            bool features_channels_last,
                                            bool kernels_channels_last) {
  const Geometry g = make_geometry(features, kernels, kernel_size, scale, groups, down);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch &&
                  grad_output.size(1) == g.channels && grad_output.size(2) == g.out_h &&
                  grad_output.size(3) == g.out_w &&
                  grad_output.scalar_type() == features.scalar_type(),
              "carafe: grad_output has shape ", grad_output.sizes(), " and dtype ",
              grad_output.scalar_type());
  at::Tensor grad_features = at::empty(
      features.sizes(), features.options().memory_format(format_of(features_channels_last)));
  at::Tensor grad_kernels = at::empty(
      kernels.sizes(), kernels.options().memory_format(format_of(kernels_channels_last)));
  if (grad_output.numel() == 0 || features.numel() == 0) {
    grad_features.zero_();
    grad_kernels.zero_();
    return {grad_features, grad_kernels};
  }
  if (features.is_cuda()) {
#ifdef CARAFE_WITH_CUDA
    carafe_backward_cuda(grad_output, features, kernels, grad_features, grad_kernels, g);
#else
    TORCH_CHECK(false, "carafe: this build of the extension has no CUDA kernels");
#endif
  } else {
    TORCH_CHECK(features.is_cpu(), "carafe: unsupported device ", features.device());
    carafe_backward_cpu(grad_output, features, kernels, grad_features, grad_kernels, g);
  }
  return {grad_features, grad_kernels};
}

}  // namespace
}  // namespace carafe_exp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CARAFE / CARAFE++ reassembly kernels (CPU and, when built with CUDA, CUDA)";
  m.def("forward", &carafe_exp::forward, "CARAFE forward", py::arg("features"),
        py::arg("kernels"), py::arg("kernel_size"), py::arg("scale"), py::arg("groups"),
        py::arg("down"), py::arg("channels_last"),
        // The kernels touch no Python objects: let other Python threads run meanwhile.
        py::call_guard<py::gil_scoped_release>());
  m.def("forward_into", &carafe_exp::forward_into, "CARAFE forward into a given output",
        py::arg("features"), py::arg("kernels"), py::arg("kernel_size"), py::arg("scale"),
        py::arg("groups"), py::arg("down"), py::arg("output"),
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &carafe_exp::backward, "CARAFE backward (grad_features, grad_kernels)",
        py::arg("grad_output"), py::arg("features"), py::arg("kernels"),
        py::arg("kernel_size"), py::arg("scale"), py::arg("groups"), py::arg("down"),
        py::arg("features_channels_last"), py::arg("kernels_channels_last"),
        py::call_guard<py::gil_scoped_release>());
  m.attr("has_cuda") =
#ifdef CARAFE_WITH_CUDA
      true;
#else
      false;
#endif
}
