// Python bindings of the CUDA emulation build (test-only): the CUDA kernels and their dispatch
// (carafe_cuda_dispatch.h), compiled unchanged as host code under cuda_emulation.h, run on CPU
// tensors; plus the probes that test the emulation itself. Built by
// carafe_exp.ops.extension.build_emulation().

#include <torch/extension.h>

#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "carafe.h"
#include "carafe_cuda_dispatch.h"
#include "carafe_plan_query.h"
#include "carafe_tensor_geometry.h"
#include "emulation/cuda_emulation.h"
#include "emulation/emulation_probes.cuh"

namespace carafe_exp {
namespace {

using emulation::ThreadOrder;

// The module's own kernel choice, as the extension's set_cuda_kernels keeps one: "current" in a
// call means this one (the benchmark's kernel-set test drives it as it drives the extension's).
CudaKernels current_choice = CudaKernels::simple;

CudaKernels kernels_named(const std::string& name) {
  return name == "current" ? current_choice : cuda_kernels_named(name);
}

ThreadOrder order_named(const std::string& name) {
  TORCH_CHECK(name == "ascending" || name == "descending",
              "thread_order must be 'ascending' or 'descending', got '", name, "'");
  return name == "ascending" ? ThreadOrder::ascending : ThreadOrder::descending;
}

// The launch of the emulation: the kernel runs as host code, block by block, thread by thread.
struct EmulatedLaunch {
  ThreadOrder order;

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), const cuda::LaunchConfig& config,
                  Args... args) const {
    emulation::launch(config.name, dim3(static_cast<unsigned int>(config.blocks)),
                      dim3(static_cast<unsigned int>(config.threads)), config.shared_bytes, order,
                      [&] { kernel(args...); });
  }
};

void check_cpu(const at::Tensor& tensor) {
  TORCH_CHECK(tensor.is_cpu(), "the CUDA emulation runs on CPU tensors, got ", tensor.device());
}

// Outputs start as NaN before every emulated launch: an element no thread writes then shows up,
// instead of reading back what at::empty's memory held (often a previous call's correct value).
void fill_nan(at::Tensor& tensor) { tensor.fill_(std::numeric_limits<double>::quiet_NaN()); }

at::Tensor forward(const at::Tensor& features, const at::Tensor& kernels, int64_t kernel_size,
                   int64_t scale, int64_t groups, bool down, bool channels_last,
                   const std::string& cuda_kernels, int64_t max_blocks,
                   const std::string& thread_order, int64_t multiprocessors) {
  check_cpu(features);
  const Geometry g = make_geometry(features, kernels, kernel_size, scale, groups, down);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                                features.options().memory_format(format_of(channels_last)));
  fill_nan(output);
  EmulatedLaunch launch{order_named(thread_order)};
  cuda::launch_forward(launch, features, kernels, output, g, kernels_named(cuda_kernels),
                       multiprocessors, max_blocks);
  return output;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_output,
                                            const at::Tensor& features,
                                            const at::Tensor& kernels, int64_t kernel_size,
                                            int64_t scale, int64_t groups, bool down,
                                            bool features_channels_last,
                                            bool kernels_channels_last,
                                            const std::string& cuda_kernels, int64_t max_blocks,
                                            const std::string& thread_order,
                                            int64_t multiprocessors) {
  check_cpu(features);
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
  fill_nan(grad_features);
  fill_nan(grad_kernels);
  EmulatedLaunch launch{order_named(thread_order)};
  cuda::launch_backward(launch, grad_output, features, kernels, grad_features, grad_kernels, g,
                        kernels_named(cuda_kernels), multiprocessors, max_blocks);
  return {grad_features, grad_kernels};
}

// What each pass of a call of this shape would run, without running it (carafe_plan_query.h).
py::dict plan(const std::vector<int64_t>& features_shape, int64_t kernel_size, int64_t scale,
              int64_t groups, bool down, const std::string& dtype,
              const std::string& cuda_kernels, int64_t multiprocessors) {
  return plan_query(features_shape, kernel_size, scale, groups, down, dtype,
                    kernels_named(cuda_kernels), multiprocessors);
}

void set_fault(const std::string& name) {
  using emulation::Fault;
  TORCH_CHECK(name == "none" || name == "unwritten_output" || name == "shared_read_past_end" ||
                  name == "global_read_past_end",
              "set_fault: unknown fault '", name, "'");
  emulation::set_fault(name == "unwritten_output"       ? Fault::unwritten_output
                       : name == "shared_read_past_end" ? Fault::shared_read_past_end
                       : name == "global_read_past_end" ? Fault::global_read_past_end
                                                        : Fault::none);
}

py::list launches() {
  py::list result;
  for (const emulation::LaunchRecord& record : emulation::launches()) {
    py::dict entry;
    entry["name"] = record.name;
    entry["grid"] = py::make_tuple(record.grid.x, record.grid.y, record.grid.z);
    entry["block"] = py::make_tuple(record.block.x, record.block.y, record.block.z);
    entry["shared_bytes"] = record.shared_bytes;
    entry["blocks_run"] = record.blocks_run;
    entry["barriers"] = record.barriers;
    entry["vector_loads"] = record.vector_loads;
    result.append(entry);
  }
  return result;
}

// Probes: float32 CPU tensors; `blocks` x `threads` threads.
at::Tensor probe_reverse(const at::Tensor& input, int64_t threads, const std::string& shared,
                         bool with_barrier, const std::string& thread_order) {
  check_cpu(input);
  TORCH_CHECK(input.scalar_type() == at::kFloat && input.is_contiguous() &&
                  input.numel() % threads == 0,
              "probe_reverse: a contiguous float32 tensor of whole blocks");
  at::Tensor out = at::empty_like(input);
  const float* in = input.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  const dim3 grid(static_cast<unsigned int>(input.numel() / threads));
  const dim3 block(static_cast<unsigned int>(threads));
  if (shared == "dynamic") {
    emulation::launch("reverse_through_dynamic_shared", grid, block, threads * 4,
                      order_named(thread_order), [&] {
                        emulation_probes::reverse_through_dynamic_shared(in, o, with_barrier);
                      });
  } else {
    TORCH_CHECK(shared == "static" && with_barrier,
                "probe_reverse: shared is 'dynamic' or 'static' (with the barrier)");
    emulation::launch("reverse_through_static_shared", grid, block, 0, order_named(thread_order),
                      [&] { emulation_probes::reverse_through_static_shared(in, o); });
  }
  return out;
}

void probe_divergent_barrier(int64_t threads) {
  std::vector<float> out(static_cast<size_t>(threads));
  emulation::launch("barrier_in_divergent_code", dim3(1), dim3(static_cast<unsigned int>(threads)),
                    0, ThreadOrder::ascending,
                    [&] { emulation_probes::barrier_in_divergent_code(out.data()); });
}

void probe_vector_load(int64_t offset) {
  alignas(16) float in[16] = {};
  float out[4];
  emulation::launch("vector_load", dim3(1), dim3(4), 0, ThreadOrder::ascending,
                    [&] { emulation_probes::vector_load(in, out, static_cast<int>(offset)); });
}

void probe_shared_write(int64_t shared_floats, int64_t index) {
  emulation::launch("write_shared", dim3(1), dim3(32), shared_floats * 4, ThreadOrder::ascending,
                    [&] { emulation_probes::write_shared(index); });
}

}  // namespace
}  // namespace carafe_exp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CARAFE CUDA kernels run on the CPU by the CUDA emulation (test-only)";
  m.def("forward", &carafe_exp::forward, py::arg("features"), py::arg("kernels"),
        py::arg("kernel_size"), py::arg("scale"), py::arg("groups"), py::arg("down"),
        py::arg("channels_last"), py::arg("cuda_kernels"), py::arg("max_blocks"),
        py::arg("thread_order"), py::arg("multiprocessors") = carafe_exp::cuda::kDefaultMultiprocessors);
  m.def("backward", &carafe_exp::backward, py::arg("grad_output"), py::arg("features"),
        py::arg("kernels"), py::arg("kernel_size"), py::arg("scale"), py::arg("groups"),
        py::arg("down"), py::arg("features_channels_last"), py::arg("kernels_channels_last"),
        py::arg("cuda_kernels"), py::arg("max_blocks"), py::arg("thread_order"),
        py::arg("multiprocessors") = carafe_exp::cuda::kDefaultMultiprocessors);
  m.def("plan", &carafe_exp::plan, "what each pass of a call of this shape would run",
        py::arg("features_shape"), py::arg("kernel_size"), py::arg("scale"), py::arg("groups"),
        py::arg("down"), py::arg("dtype"), py::arg("cuda_kernels"),
        py::arg("multiprocessors") = carafe_exp::cuda::kDefaultMultiprocessors);
  m.def("set_cuda_kernels", [](const std::string& name) {
    carafe_exp::current_choice = carafe_exp::cuda_kernels_named(name);
  }, "the choice calls with cuda_kernels='current' make", py::arg("name"));
  m.def("cuda_kernels", [] { return std::string(carafe_exp::name_of(carafe_exp::current_choice)); });
  m.def("set_fault", &carafe_exp::set_fault,
        "switch on one deliberate bug of the kernels (tests of the emulation), or 'none'",
        py::arg("name"));
  m.def("launches", &carafe_exp::launches, "the launches since clear_launches()");
  m.def("clear_launches", &carafe_exp::emulation::clear_launches);
  m.def("probe_reverse", &carafe_exp::probe_reverse, py::arg("input"), py::arg("threads"),
        py::arg("shared"), py::arg("with_barrier"), py::arg("thread_order"));
  m.def("probe_divergent_barrier", &carafe_exp::probe_divergent_barrier, py::arg("threads"));
  m.def("probe_vector_load", &carafe_exp::probe_vector_load, py::arg("offset"));
  m.def("probe_shared_write", &carafe_exp::probe_shared_write, py::arg("shared_floats"),
        py::arg("index"));
  m.attr("max_blocks") = carafe_exp::cuda::kMaxBlocks;
}
