// Python bindings of the compiled CARAFE extension: allocate outputs in the requested memory
// format, build the Geometry (carafe_tensor_geometry.h) and dispatch to the CPU or CUDA kernels.

#include <torch/extension.h>

#include <atomic>
#include <limits>
#include <string>
#include <tuple>

#include "carafe.h"
#include "carafe_plan_query.h"
#include "carafe_tensor_geometry.h"

namespace carafe_exp {
namespace {

// Which CUDA kernels run (set_cuda_kernels); read on every call, so a change applies at once.
std::atomic<CudaKernels> cuda_kernels_choice{CudaKernels::simple};

// Debugging aid of the GPU tests (set_fill_outputs_with_nan): outputs are filled with NaN before
// the kernels run, so an element no thread writes shows up instead of reading back whatever the
// allocator's memory held (often a previous call's correct value).
std::atomic<bool> fill_outputs_with_nan{false};

void set_cuda_kernels(const std::string& name) {
  cuda_kernels_choice = cuda_kernels_named(name);
}

std::string cuda_kernels() { return name_of(cuda_kernels_choice.load()); }

void fill_if_debugging(at::Tensor& tensor) {
  if (fill_outputs_with_nan.load()) tensor.fill_(std::numeric_limits<double>::quiet_NaN());
}

// Dispatches the forward kernels into `output` (already allocated, any strides).
void run_forward(const at::Tensor& features, const at::Tensor& kernels, at::Tensor& output,
                 const Geometry& g) {
  if (output.numel() == 0) return;
  fill_if_debugging(output);
  if (features.is_cuda()) {
#ifdef CARAFE_WITH_CUDA
    carafe_forward_cuda(features, kernels, output, g, cuda_kernels_choice.load());
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
  check_grad_output(grad_output, features, g);
  at::Tensor grad_features = at::empty(
      features.sizes(), features.options().memory_format(format_of(features_channels_last)));
  at::Tensor grad_kernels = at::empty(
      kernels.sizes(), kernels.options().memory_format(format_of(kernels_channels_last)));
  if (grad_output.numel() == 0 || features.numel() == 0) {
    grad_features.zero_();
    grad_kernels.zero_();
    return {grad_features, grad_kernels};
  }
  fill_if_debugging(grad_features);
  fill_if_debugging(grad_kernels);
  if (features.is_cuda()) {
#ifdef CARAFE_WITH_CUDA
    carafe_backward_cuda(grad_output, features, kernels, grad_features, grad_kernels, g,
                         cuda_kernels_choice.load());
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
  m.def("set_cuda_kernels", &carafe_exp::set_cuda_kernels,
        "choose the CUDA kernels: 'simple' (the default), 'tiled' or 'auto' (per call and pass "
        "from the launch shape)",
        py::arg("name"));
  m.def("cuda_kernels", &carafe_exp::cuda_kernels,
        "the CUDA kernels in use: 'auto', 'simple' or 'tiled'");
  m.def(
      "set_fill_outputs_with_nan",
      [](bool on) { carafe_exp::fill_outputs_with_nan = on; },
      "debugging: fill every output with NaN before the kernels run (the GPU tests)",
      py::arg("on"));
  m.def(
      "plan",
      [](const std::vector<int64_t>& features_shape, int64_t kernel_size, int64_t scale,
         int64_t groups, bool down, const std::string& dtype, const std::string& cuda_kernels,
         int64_t multiprocessors) {
        return carafe_exp::plan_query(features_shape, kernel_size, scale, groups, down, dtype,
                                      carafe_exp::cuda_kernels_named(cuda_kernels),
                                      multiprocessors);
      },
      "what each pass of a CUDA call of this shape runs on a GPU of `multiprocessors` (no GPU "
      "needed)",
      py::arg("features_shape"), py::arg("kernel_size"), py::arg("scale"), py::arg("groups"),
      py::arg("down"), py::arg("dtype"), py::arg("cuda_kernels"), py::arg("multiprocessors"));
  m.attr("has_cuda") =
#ifdef CARAFE_WITH_CUDA
      true;
#else
      false;
#endif
}
