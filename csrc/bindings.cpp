// Python bindings of soft_d2._C: input checks, dtype/layout preparation and the choice between
// the fused CUDA forward and the streamed engine. Autograd lives in soft_d2/ops/compiled.py.
// Also the CPU RoIAlign backward (roi_align_cpu.cpp), registered for torchvision's op by
// soft_d2/ops/roi_align.py.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "gaussian_kernel.h"
#include "roi_align.h"

namespace soft_d2 {
namespace {

struct Named {
  const char* name;
  const at::Tensor* tensor;
};

// Rank, floating dtype and one device for all operands; names the offending tensor.
void check_operands(const char* op, const std::vector<Named>& operands) {
  for (const auto& o : operands) {
    TORCH_CHECK(o.tensor->defined(), op, ": ", o.name, " is undefined");
    TORCH_CHECK(o.tensor->dim() == 3, op, ": ", o.name,
                " must be a [batch*heads, rows, features] tensor, got ", o.tensor->dim(), " dims");
    TORCH_CHECK(at::isFloatingType(o.tensor->scalar_type()), op, ": ", o.name,
                " must be a floating-point tensor, got ", o.tensor->scalar_type());
    TORCH_CHECK(o.tensor->device() == operands[0].tensor->device(), op, ": ", o.name, " is on ",
                o.tensor->device(), " but ", operands[0].name, " is on ",
                operands[0].tensor->device());
  }
}

void check_size(const char* op, const Named& x, int64_t dim, const Named& ref, int64_t ref_dim,
                const char* what) {
  TORCH_CHECK(x.tensor->size(dim) == ref.tensor->size(ref_dim), op, ": ", x.name, " has ",
              x.tensor->size(dim), " ", what, " but ", ref.name, " has ",
              ref.tensor->size(ref_dim));
}

// a [BH, N, d], b [BH, m, d]; returns the compute dtype (float64 if any operand is, else float32).
at::ScalarType check_kernel_operands(const char* op, const std::vector<Named>& operands) {
  check_operands(op, operands);
  const Named& a = operands[0];
  const Named& b = operands[1];
  for (size_t i = 1; i < operands.size(); ++i) check_size(op, operands[i], 0, a, 0, "batch*heads");
  check_size(op, b, 2, a, 2, "features");
  bool any_double = false;
  for (const auto& o : operands) any_double |= o.tensor->scalar_type() == at::kDouble;
  return any_double ? at::kDouble : at::kFloat;
}

at::Tensor prepared(const at::Tensor& x, at::ScalarType dtype) {
  return x.to(dtype).contiguous();
}

#ifdef SOFT_D2_WITH_CUDA
bool all_same_dtype(const std::vector<at::Tensor>& xs) {
  for (const auto& x : xs)
    if (x.scalar_type() != xs[0].scalar_type()) return false;
  return true;
}

// The fused kernels read float32/float16/bfloat16 directly (one dtype for all operands).
bool use_fused(const std::vector<at::Tensor>& xs, at::ScalarType compute) {
  return xs[0].is_cuda() && compute == at::kFloat && all_same_dtype(xs);
}
#endif

at::Tensor gaussian_kernel_forward(const at::Tensor& a, const at::Tensor& b, int64_t tile_rows) {
  auto dt = check_kernel_operands("gaussian_kernel", {{"a", &a}, {"b", &b}});
  return gaussian_kernel_dense(prepared(a, dt), prepared(b, dt), tile_rows);
}

std::vector<at::Tensor> gaussian_kernel_backward(const at::Tensor& grad, const at::Tensor& a,
                                                 const at::Tensor& b, const at::Tensor& out,
                                                 int64_t tile_rows) {
  auto dt = check_kernel_operands("gaussian_kernel_backward", {{"a", &a}, {"b", &b}});
  auto [ga, gb] = gaussian_kernel_dense_backward(prepared(grad, dt), prepared(a, dt),
                                                 prepared(b, dt), prepared(out, dt), tile_rows);
  return {ga, gb};
}

at::Tensor kernel_matmul_forward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
                                 int64_t tile_rows) {
  const char* op = "gaussian_kernel_matmul";
  auto dt = check_kernel_operands(op, {{"a", &a}, {"b", &b}, {"w", &w}});
  check_size(op, {"w", &w}, 1, {"b", &b}, 1, "rows");
#ifdef SOFT_D2_WITH_CUDA
  if (use_fused({a, b, w}, dt))
    return kernel_matmul_fused_cuda(a.contiguous(), b.contiguous(), w.contiguous());
#endif
  return kernel_matmul_streamed(prepared(a, dt), prepared(b, dt), prepared(w, dt), tile_rows);
}

std::vector<at::Tensor> kernel_matmul_backward(const at::Tensor& grad, const at::Tensor& a,
                                               const at::Tensor& b, const at::Tensor& w,
                                               int64_t tile_rows) {
  const char* op = "gaussian_kernel_matmul_backward";
  auto dt = check_kernel_operands(op, {{"a", &a}, {"b", &b}, {"w", &w}, {"grad", &grad}});
  check_size(op, {"grad", &grad}, 1, {"a", &a}, 1, "rows");
  check_size(op, {"grad", &grad}, 2, {"w", &w}, 2, "features");
  auto [ga, gb, gw] = kernel_matmul_backward_streamed(
      prepared(grad, dt), prepared(a, dt), prepared(b, dt), prepared(w, dt), tile_rows);
  return {ga, gb, gw};
}

at::Tensor kernel_t_matmul_forward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& v,
                                   int64_t tile_rows) {
  const char* op = "gaussian_kernel_t_matmul";
  auto dt = check_kernel_operands(op, {{"a", &a}, {"b", &b}, {"v", &v}});
  check_size(op, {"v", &v}, 1, {"a", &a}, 1, "rows");
#ifdef SOFT_D2_WITH_CUDA
  if (use_fused({a, b, v}, dt))
    return kernel_t_matmul_fused_cuda(a.contiguous(), b.contiguous(), v.contiguous());
#endif
  return kernel_t_matmul_streamed(prepared(a, dt), prepared(b, dt), prepared(v, dt), tile_rows);
}

std::vector<at::Tensor> kernel_t_matmul_backward(const at::Tensor& grad, const at::Tensor& a,
                                                 const at::Tensor& b, const at::Tensor& v,
                                                 int64_t tile_rows) {
  const char* op = "gaussian_kernel_t_matmul_backward";
  auto dt = check_kernel_operands(op, {{"a", &a}, {"b", &b}, {"v", &v}, {"grad", &grad}});
  check_size(op, {"grad", &grad}, 1, {"b", &b}, 1, "rows");
  check_size(op, {"grad", &grad}, 2, {"v", &v}, 2, "features");
  auto [ga, gb, gv] = kernel_t_matmul_backward_streamed(
      prepared(grad, dt), prepared(a, dt), prepared(b, dt), prepared(v, dt), tile_rows);
  return {ga, gb, gv};
}

bool built_with_cuda() {
#ifdef SOFT_D2_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// How many threads an at::parallel_for of this extension runs on: 1 when it was compiled without
// OpenMP (the inline template then runs serially), whatever torch.get_num_threads() says.
int64_t parallel_threads() {
  std::vector<char> seen(at::get_num_threads(), 0);
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) { seen[at::get_thread_num()] = 1; });
  int64_t n = 0;
  for (char s : seen) n += s;
  return n;
}

}  // namespace
}  // namespace soft_d2

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace soft_d2;
  m.doc() =
      "soft_d2 Gaussian-kernel ops (CPU streamed engine; CUDA fused forward when built) and the "
      "CPU RoIAlign backward";
  m.def("gaussian_kernel_forward", &gaussian_kernel_forward);
  m.def("gaussian_kernel_backward", &gaussian_kernel_backward);
  m.def("kernel_matmul_forward", &kernel_matmul_forward);
  m.def("kernel_matmul_backward", &kernel_matmul_backward);
  m.def("kernel_t_matmul_forward", &kernel_t_matmul_forward);
  m.def("kernel_t_matmul_backward", &kernel_t_matmul_backward);
  // Pure C++ on tensors: the GIL is released while it runs (it can take a while on large inputs).
  m.def("roi_align_backward_cpu", &roi_align_backward_cpu,
        py::call_guard<py::gil_scoped_release>());
  m.def("built_with_cuda", &built_with_cuda);
  m.def("parallel_threads", &parallel_threads);
}
