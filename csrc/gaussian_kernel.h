// Gaussian-kernel products of SOFT attention, G(a, b)[i, j] = exp(-||a_i - b_j||^2 / 2).
//
// Every function takes [BH, rows, features] tensors (batch and heads flattened by the caller),
// already checked by bindings.cpp, and returns float32 (float64 for float64 inputs).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace soft_d2 {

// Streamed engine (tiled_engine.cpp): ATen GEMMs and element-wise ops on row tiles of G, on any
// device. Never holds more than tile_rows x m of G (per thread on the CPU). tile_rows <= 0 picks
// a size from the cache (CPU) or memory budget (CUDA).
at::Tensor gaussian_kernel_dense(const at::Tensor& a, const at::Tensor& b, int64_t tile_rows);
std::tuple<at::Tensor, at::Tensor> gaussian_kernel_dense_backward(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
    int64_t tile_rows);

at::Tensor kernel_matmul_streamed(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, int64_t tile_rows);
std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_matmul_backward_streamed(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
    int64_t tile_rows);

at::Tensor kernel_t_matmul_streamed(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& v, int64_t tile_rows);
std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_t_matmul_backward_streamed(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b, const at::Tensor& v,
    int64_t tile_rows);

#ifdef SOFT_D2_WITH_CUDA
// Fused CUDA forwards (fused_forward_cuda.cu): G is formed tile by tile in shared memory and
// never reaches global memory. float32 / float16 / bfloat16 inputs (all one dtype), float32 out.
at::Tensor kernel_matmul_fused_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w);
at::Tensor kernel_t_matmul_fused_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& v);
#endif

}  // namespace soft_d2
