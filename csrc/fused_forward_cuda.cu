// Fused CUDA forwards of the Gaussian-kernel products. Each block forms 64 x 64 tiles of
// G(a, b) = exp(-||a - b||^2 / 2) in shared memory (squared distance from the expansion
// |a|^2 + |b|^2 - 2 a.b, float32 accumulation) and multiplies them straight into its output:
//   row pass     (G @ w):   block = 64 rows of a x 32 output features; loops over all of b.
//   column pass  (G^T @ v): block = 64 rows of b x 32 output features x one split of a's rows;
//                           the splits' partial sums go to a small [splits, BH, m, e] buffer that
//                           one sum reduces (deterministic: no atomics).
// G never reaches global memory: bytes moved are the inputs (b and w re-read from L2 per tile
// row) and the outputs. Backward passes use the streamed engine (tiled_engine.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>

#include "gaussian_kernel.h"

namespace soft_d2 {
namespace {

constexpr int kThreads = 256;  // 16 x 16 threads; each owns a 4 x 4 (distance) / 4 x 2 (output) patch
constexpr int kRows = 64;      // rows of a per tile
constexpr int kCols = 64;      // rows of b (landmarks) per tile
constexpr int kDepth = 32;     // features staged per step of the distance loop
constexpr int kOut = 32;       // output features per block
static_assert(kRows == kCols, "the staging buffer x serves both passes");

struct TileSmem {
  float a[kRows][kDepth + 1];  // +1: rows land in different banks
  float b[kCols][kDepth + 1];
  float g[kRows][kCols + 1];
  float x[kCols][kOut + 1];    // w rows (row pass) or v rows (column pass)
  float sq_a[kRows];
  float sq_b[kCols];
};

// s.g = G(a[row0 : row0 + 64], b[col0 : col0 + 64]); 0 outside the matrix (so padded rows and
// columns add nothing to the products). a and b point at one head.
template <typename T>
__device__ void gaussian_tile(TileSmem& s, const T* __restrict__ a, const T* __restrict__ b,
                              int n, int m, int d, int row0, int col0) {
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  float dot[4][4] = {};
  float sq = 0.f;  // thread t < 64: |a_row|^2; 64 <= t < 128: |b_row|^2
  for (int k0 = 0; k0 < d; k0 += kDepth) {
    for (int idx = tid; idx < kRows * kDepth; idx += kThreads) {
      const int r = idx / kDepth, c = idx % kDepth, k = k0 + c;
      const bool kin = k < d;
      s.a[r][c] = (kin && row0 + r < n) ? static_cast<float>(a[int64_t(row0 + r) * d + k]) : 0.f;
      s.b[r][c] = (kin && col0 + r < m) ? static_cast<float>(b[int64_t(col0 + r) * d + k]) : 0.f;
    }
    __syncthreads();
    if (tid < kRows) {
      for (int c = 0; c < kDepth; ++c) sq += s.a[tid][c] * s.a[tid][c];
    } else if (tid < kRows + kCols) {
      for (int c = 0; c < kDepth; ++c) sq += s.b[tid - kRows][c] * s.b[tid - kRows][c];
    }
#pragma unroll 8
    for (int c = 0; c < kDepth; ++c) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = s.a[ty + 16 * i][c];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = s.b[tx + 16 * j][c];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) dot[i][j] = fmaf(av[i], bv[j], dot[i][j]);
    }
    __syncthreads();
  }
  if (tid < kRows) {
    s.sq_a[tid] = sq;
  } else if (tid < kRows + kCols) {
    s.sq_b[tid - kRows] = sq;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = ty + 16 * i, c = tx + 16 * j;
      const bool in = row0 + r < n && col0 + c < m;
      s.g[r][c] = in ? expf(-0.5f * (s.sq_a[r] + s.sq_b[c] - 2.f * dot[i][j])) : 0.f;
    }
  }
}

// x[r][c] = src[row0 + r, e0 + c] (0 outside): 64 rows of w or v, one feature chunk.
template <typename T>
__device__ void stage_rows(TileSmem& s, const T* __restrict__ src, int rows, int e, int row0,
                           int e0) {
  for (int idx = threadIdx.x; idx < kCols * kOut; idx += kThreads) {
    const int r = idx / kOut, c = idx % kOut;
    s.x[r][c] = (row0 + r < rows && e0 + c < e)
                    ? static_cast<float>(src[int64_t(row0 + r) * e + e0 + c])
                    : 0.f;
  }
}

// out[head] (n x e, float32) = G(a, b) @ w.   grid: (row tiles, feature chunks, heads)
template <typename T>
__global__ void __launch_bounds__(kThreads)
    kernel_matmul_rows(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ w,
                       float* __restrict__ out, int n, int m, int d, int e) {
  __shared__ TileSmem s;
  const int64_t head = blockIdx.z;
  const int row0 = blockIdx.x * kRows, e0 = blockIdx.y * kOut;
  a += head * n * d;
  b += head * m * d;
  w += head * m * e;
  out += head * n * e;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  float acc[4][2] = {};
  for (int col0 = 0; col0 < m; col0 += kCols) {
    gaussian_tile(s, a, b, n, m, d, row0, col0);
    stage_rows(s, w, m, e, col0, e0);
    __syncthreads();
#pragma unroll 8
    for (int j = 0; j < kCols; ++j) {
      const float w0 = s.x[j][tx], w1 = s.x[j][tx + 16];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float g = s.g[ty + 16 * i][j];
        acc[i][0] = fmaf(g, w0, acc[i][0]);
        acc[i][1] = fmaf(g, w1, acc[i][1]);
      }
    }
    __syncthreads();  // s is rewritten by the next tile
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int r = row0 + ty + 16 * i, c = e0 + tx + 16 * j;
      if (r < n && c < e) out[int64_t(r) * e + c] = acc[i][j];
    }
  }
}

// partial[split, head] (m x e, float32) = G(a[split rows], b)^T @ v[split rows].
// grid: (landmark tiles, splits, heads * feature chunks); rows_per_split is a multiple of kRows.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    kernel_t_matmul_cols(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ v,
                         float* __restrict__ partial, int heads, int n, int m, int d, int e,
                         int rows_per_split, int feature_chunks) {
  __shared__ TileSmem s;
  const int64_t head = blockIdx.z / feature_chunks;
  const int e0 = (blockIdx.z % feature_chunks) * kOut;
  const int col0 = blockIdx.x * kCols;
  const int64_t split = blockIdx.y;
  a += head * n * d;
  b += head * m * d;
  v += head * n * e;
  partial += (split * heads + head) * m * e;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  float acc[4][2] = {};  // landmarks ty + 16 i, features tx + 16 j
  const int row_begin = int(split) * rows_per_split;
  const int row_end = min(n, row_begin + rows_per_split);
  for (int row0 = row_begin; row0 < row_end; row0 += kRows) {
    gaussian_tile(s, a, b, n, m, d, row0, col0);
    stage_rows(s, v, n, e, row0, e0);
    __syncthreads();
#pragma unroll 8
    for (int i = 0; i < kRows; ++i) {
      const float v0 = s.x[i][tx], v1 = s.x[i][tx + 16];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float g = s.g[i][ty + 16 * j];
        acc[j][0] = fmaf(g, v0, acc[j][0]);
        acc[j][1] = fmaf(g, v1, acc[j][1]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int r = col0 + ty + 16 * j, c = e0 + tx + 16 * k;
      if (r < m && c < e) partial[int64_t(r) * e + c] = acc[j][k];
    }
  }
}

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

void check_launch_sizes(const char* op, int64_t heads, int64_t n, int64_t m, int64_t d, int64_t e) {
  constexpr int64_t kMax = std::numeric_limits<int>::max() / 2;
  TORCH_CHECK(n < kMax && m < kMax && d < kMax && e < kMax, op, ": sizes exceed the int range");
  TORCH_CHECK(heads * ceil_div(e, kOut) <= 65535, op, ": batch*heads*ceil(features/32) = ",
              heads * ceil_div(e, kOut), " exceeds the CUDA grid limit of 65535");
}

}  // namespace

at::Tensor kernel_matmul_fused_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t heads = a.size(0), n = a.size(1), d = a.size(2), m = b.size(1), e = w.size(2);
  auto out = at::empty({heads, n, e}, a.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  if (m == 0) return out.zero_();
  check_launch_sizes("gaussian_kernel_matmul", heads, n, m, d, e);
  const dim3 grid(ceil_div(n, kRows), ceil_div(e, kOut), heads);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "kernel_matmul_rows", [&] {
    kernel_matmul_rows<scalar_t><<<grid, kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
        out.data_ptr<float>(), int(n), int(m), int(d), int(e));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor kernel_t_matmul_fused_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& v) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t heads = a.size(0), n = a.size(1), d = a.size(2), m = b.size(1), e = v.size(2);
  if (heads * m * e == 0) return at::empty({heads, m, e}, a.options().dtype(at::kFloat));
  if (n == 0) return at::zeros({heads, m, e}, a.options().dtype(at::kFloat));
  check_launch_sizes("gaussian_kernel_t_matmul", heads, n, m, d, e);
  // Split a's rows until the grid has a few blocks per SM.
  const int64_t chunks = ceil_div(e, kOut);
  const int64_t base_blocks = ceil_div(m, kCols) * heads * chunks;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t row_tiles = ceil_div(n, kRows);
  const int64_t wanted = std::clamp<int64_t>(ceil_div(4 * sms, base_blocks), 1, std::min<int64_t>(row_tiles, 65535));
  const int64_t rows_per_split = ceil_div(row_tiles, wanted) * kRows;
  const int64_t splits = ceil_div(n, rows_per_split);
  auto partial = at::empty({splits, heads, m, e}, a.options().dtype(at::kFloat));
  const dim3 grid(ceil_div(m, kCols), splits, heads * chunks);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "kernel_t_matmul_cols", [&] {
    kernel_t_matmul_cols<scalar_t><<<grid, kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        partial.data_ptr<float>(), int(heads), int(n), int(m), int(d), int(e),
        int(rows_per_split), int(chunks));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return splits == 1 ? partial[0] : partial.sum(0);
}

}  // namespace soft_d2
