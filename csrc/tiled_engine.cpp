// Streamed Gaussian-kernel products: G(a, b) is formed one tile of a's rows at a time, used, and
// dropped, so memory is O(tile x m + outputs) instead of O(N x m).
//
// The exponent comes from ONE GEMM on augmented operands
//     a_aug = [-|a|^2/2, a, 1],   b_aug = [1, b, -|b|^2/2],   a_aug . b_aug = -||a - b||^2 / 2,
// and the same augmented operands give the row and column sums that the position gradients need:
//     S @ [1, b] = [rowsum S, S b],   S^T @ [a, 1] = [S^T a, colsum S]
// where S = dL/dG * G, dL/da = S b - rowsum(S) a and dL/db = S^T a - colsum(S) b.
//
// On the CPU every (head, row tile) is one work item of at::parallel_for with per-thread buffers
// and accumulators (a tile stays in the core's cache; ATen ops run single-threaded inside the
// parallel region). On CUDA one item covers all heads and the tiles run in sequence (each op is
// a full-GPU launch).
#include "gaussian_kernel.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>

namespace soft_d2 {
namespace {

at::Tensor half_sq_norm(const at::Tensor& x) {
  return x.square().sum(-1, /*keepdim=*/true).mul_(-0.5);
}

// [-|a|^2/2, a, 1]: columns 1..d+1 are [a, 1].
at::Tensor augment_rows(const at::Tensor& a) {
  auto n = half_sq_norm(a);
  return at::cat({n, a, at::ones_like(n)}, -1);
}

// [1, b, -|b|^2/2]: columns 0..d are [1, b].
at::Tensor augment_cols(const at::Tensor& b) {
  auto n = half_sq_norm(b);
  return at::cat({at::ones_like(n), b, n}, -1);
}

struct Schedule {
  int64_t heads;       // BH
  int64_t rows;        // N (rows of a)
  int64_t tile;        // rows per tile
  int64_t tiles;       // ceil(rows / tile)
  bool per_head;       // CPU: one item per (head, tile); CUDA: one item per tile, all heads
  int64_t slots;       // independent buffer sets (threads)
  int64_t item_heads;  // heads per item
  int64_t grain;       // CPU: items per task, so that a task is worth a thread wake-up
};

// A task below this many flops runs faster on the calling thread than handed to another one
// (an OpenMP region costs tens of microseconds, and far more on a loaded machine).
constexpr double kMinTaskFlops = double(1 << 24);

// flops_per_element: work per element of G (GEMM flops of all products on the tile).
Schedule make_schedule(const at::Tensor& a, int64_t cols, int64_t tile_rows,
                       double flops_per_element) {
  Schedule s;
  s.heads = a.size(0);
  s.rows = a.size(1);
  s.per_head = !a.is_cuda();
  s.slots = s.per_head ? at::get_num_threads() : 1;
  s.item_heads = s.per_head ? 1 : s.heads;
  const int64_t n = std::max<int64_t>(s.rows, 1);
  int64_t tile = tile_rows;
  if (tile <= 0) {
    if (s.per_head) {
      // About 64K elements (256 KB in float32) per tile: stays in L2 through its ops.
      tile = std::clamp<int64_t>((int64_t(1) << 16) / std::max<int64_t>(cols, 1), 16, 4096);
      // Enough tiles to keep every thread busy. Deliberately independent of the number of
      // heads/images: a row's result must not depend on its batch-mates (GEMM rounding follows
      // the tile shape, and the unconverged Newton inverse amplifies such differences).
      while (tile > 16 && (n + tile - 1) / tile < 4 * s.slots) tile /= 2;
    } else {
      // About 2^24 elements (64 MB in float32) of G per tile over all heads.
      tile = std::max<int64_t>((int64_t(1) << 24) / std::max<int64_t>(cols * s.heads, 1), 64);
    }
  }
  s.tile = std::min(tile, n);
  s.tiles = s.rows == 0 ? 0 : (s.rows + s.tile - 1) / s.tile;
  const double item_flops = double(s.tile) * double(std::max<int64_t>(cols, 1)) * flops_per_element;
  s.grain = std::max<int64_t>(1, int64_t(kMinTaskFlops / std::max(item_flops, 1.0)));
  return s;
}

// Calls fn(slot, head0, heads, row0, rows) for every tile.
template <typename Fn>
void for_each_tile(const Schedule& s, const Fn& fn) {
  if (s.per_head) {
    // The ATen ops of a tile dispatch on OpenMP worker threads too: they get the caller's
    // thread-local state (grad mode, dispatch keys), or autograd would see out= ops on inputs
    // that require grad.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, s.heads * s.tiles, s.grain, [&](int64_t begin, int64_t end) {
      at::ThreadLocalStateGuard state_guard(caller_state);
      const int64_t slot = std::min<int64_t>(at::get_thread_num(), s.slots - 1);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t head = item / s.tiles;
        const int64_t row0 = (item % s.tiles) * s.tile;
        fn(slot, head, 1, row0, std::min(s.tile, s.rows - row0));
      }
    });
  } else {
    for (int64_t t = 0; t < s.tiles; ++t) {
      const int64_t row0 = t * s.tile;
      fn(0, 0, s.heads, row0, std::min(s.tile, s.rows - row0));
    }
  }
}

// Per-slot scratch of `width` columns per tile row, handed out as contiguous [heads, rows, width].
struct Scratch {
  at::Tensor buf;  // [slots, item_heads * tile * width]
  int64_t width;
  Scratch(const Schedule& s, int64_t width, const at::TensorOptions& opt)
      : buf(at::empty({s.slots, s.item_heads * s.tile * width}, opt)), width(width) {}
  at::Tensor get(int64_t slot, int64_t heads, int64_t rows) const {
    return buf[slot].narrow(0, 0, heads * rows * width).view({heads, rows, width});
  }
};

at::Tensor rows_of(const at::Tensor& x, int64_t head0, int64_t heads, int64_t row0, int64_t rows) {
  return x.narrow(0, head0, heads).narrow(1, row0, rows);
}

at::Tensor heads_of(const at::Tensor& x, int64_t head0, int64_t heads) {
  return x.narrow(0, head0, heads);
}

// G for one tile: exp(a_aug[rows] @ b_aug^T), written into `g` ([heads, rows, m]).
void kernel_tile(at::Tensor& g, const at::Tensor& a_aug, const at::Tensor& b_aug, int64_t head0,
                 int64_t heads, int64_t row0, int64_t rows) {
  at::bmm_out(g, rows_of(a_aug, head0, heads, row0, rows),
              heads_of(b_aug, head0, heads).transpose(1, 2));
  g.exp_();
}

// Position gradients from one tile of S = dL/dG * G:
//   grad_a[rows] = S b - rowsum(S) a            (written)
//   grad_b_acc  += [S^T a, colsum(S)]           (accumulated; finished by finish_grad_b)
void position_grads_tile(const at::Tensor& s_tile, at::Tensor& x, const at::Tensor& a_aug,
                         const at::Tensor& b_aug, at::Tensor& grad_a, at::Tensor& grad_b_acc,
                         int64_t head0, int64_t heads, int64_t row0, int64_t rows) {
  const int64_t d = a_aug.size(2) - 2;
  at::bmm_out(x, s_tile, heads_of(b_aug, head0, heads).narrow(2, 0, d + 1));
  auto a_rows = rows_of(a_aug, head0, heads, row0, rows);
  auto ga = rows_of(grad_a, head0, heads, row0, rows);
  ga.copy_(x.narrow(2, 1, d));
  ga.addcmul_(x.narrow(2, 0, 1), a_rows.narrow(2, 1, d), -1);
  heads_of(grad_b_acc, head0, heads).baddbmm_(s_tile.transpose(1, 2), a_rows.narrow(2, 1, d + 1));
}

// grad_b = sum over slots of [S^T a, colsum] -> S^T a - colsum * b.
at::Tensor finish_grad_b(const at::Tensor& acc, const at::Tensor& b) {
  const int64_t d = b.size(2);
  auto total = acc.sum(0);
  return total.narrow(2, 0, d) - total.narrow(2, d, 1) * b;
}

}  // namespace

at::Tensor gaussian_kernel_dense(const at::Tensor& a, const at::Tensor& b, int64_t tile_rows) {
  auto out = at::empty({a.size(0), a.size(1), b.size(1)}, a.options());
  auto a_aug = augment_rows(a), b_aug = augment_cols(b);
  const auto s = make_schedule(a, b.size(1), tile_rows, 2.0 * (a.size(2) + 2));
  for_each_tile(s, [&](int64_t, int64_t h0, int64_t nh, int64_t r0, int64_t nr) {
    auto g = rows_of(out, h0, nh, r0, nr);
    kernel_tile(g, a_aug, b_aug, h0, nh, r0, nr);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gaussian_kernel_dense_backward(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
    int64_t tile_rows) {
  const int64_t m = b.size(1), d = a.size(2);
  auto a_aug = augment_rows(a), b_aug = augment_cols(b);
  const auto s = make_schedule(a, m, tile_rows, 4.0 * (d + 1));
  Scratch s_buf(s, m, a.options()), x_buf(s, d + 1, a.options());
  auto grad_a = at::empty_like(a);
  auto grad_b_acc = at::zeros({s.slots, s.heads, m, d + 1}, a.options());
  for_each_tile(s, [&](int64_t slot, int64_t h0, int64_t nh, int64_t r0, int64_t nr) {
    auto s_tile = s_buf.get(slot, nh, nr);
    at::mul_out(s_tile, rows_of(grad, h0, nh, r0, nr), rows_of(out, h0, nh, r0, nr));
    auto x = x_buf.get(slot, nh, nr);
    auto acc = grad_b_acc[slot];
    position_grads_tile(s_tile, x, a_aug, b_aug, grad_a, acc, h0, nh, r0, nr);
  });
  return {grad_a, finish_grad_b(grad_b_acc, b)};
}

at::Tensor kernel_matmul_streamed(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, int64_t tile_rows) {
  auto out = at::empty({a.size(0), a.size(1), w.size(2)}, a.options());
  auto a_aug = augment_rows(a), b_aug = augment_cols(b);
  const auto s = make_schedule(a, b.size(1), tile_rows, 2.0 * (a.size(2) + 2 + w.size(2)));
  Scratch g_buf(s, b.size(1), a.options());
  for_each_tile(s, [&](int64_t slot, int64_t h0, int64_t nh, int64_t r0, int64_t nr) {
    auto g = g_buf.get(slot, nh, nr);
    kernel_tile(g, a_aug, b_aug, h0, nh, r0, nr);
    auto y = rows_of(out, h0, nh, r0, nr);
    at::bmm_out(y, g, heads_of(w, h0, nh));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_matmul_backward_streamed(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
    int64_t tile_rows) {
  const int64_t m = b.size(1), d = a.size(2), e = w.size(2);
  auto a_aug = augment_rows(a), b_aug = augment_cols(b);
  const auto s = make_schedule(a, m, tile_rows, 2.0 * (3 * d + 4 + 2 * e));
  Scratch g_buf(s, m, a.options()), s_buf(s, m, a.options()), x_buf(s, d + 1, a.options());
  auto grad_a = at::empty_like(a);
  auto grad_b_acc = at::zeros({s.slots, s.heads, m, d + 1}, a.options());
  auto grad_w_acc = at::zeros({s.slots, s.heads, m, e}, a.options());
  for_each_tile(s, [&](int64_t slot, int64_t h0, int64_t nh, int64_t r0, int64_t nr) {
    auto g = g_buf.get(slot, nh, nr);
    kernel_tile(g, a_aug, b_aug, h0, nh, r0, nr);
    auto gy = rows_of(grad, h0, nh, r0, nr);
    heads_of(grad_w_acc[slot], h0, nh).baddbmm_(g.transpose(1, 2), gy);  // G^T dY
    auto s_tile = s_buf.get(slot, nh, nr);
    at::bmm_out(s_tile, gy, heads_of(w, h0, nh).transpose(1, 2));       // dL/dG = dY w^T
    s_tile.mul_(g);
    auto x = x_buf.get(slot, nh, nr);
    auto acc = grad_b_acc[slot];
    position_grads_tile(s_tile, x, a_aug, b_aug, grad_a, acc, h0, nh, r0, nr);
  });
  return {grad_a, finish_grad_b(grad_b_acc, b), grad_w_acc.sum(0)};
}

at::Tensor kernel_t_matmul_streamed(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& v, int64_t tile_rows) {
  const int64_t m = b.size(1), e = v.size(2);
  auto a_aug = augment_rows(a), b_aug = augment_cols(b);
  const auto s = make_schedule(a, m, tile_rows, 2.0 * (a.size(2) + 2 + e));
  Scratch g_buf(s, m, a.options());
  auto acc = at::zeros({s.slots, s.heads, m, e}, a.options());
  for_each_tile(s, [&](int64_t slot, int64_t h0, int64_t nh, int64_t r0, int64_t nr) {
    auto g = g_buf.get(slot, nh, nr);
    kernel_tile(g, a_aug, b_aug, h0, nh, r0, nr);
    heads_of(acc[slot], h0, nh).baddbmm_(g.transpose(1, 2), rows_of(v, h0, nh, r0, nr));
  });
  return acc.sum(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_t_matmul_backward_streamed(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b, const at::Tensor& v,
    int64_t tile_rows) {
  const int64_t m = b.size(1), d = a.size(2), e = v.size(2);
  auto a_aug = augment_rows(a), b_aug = augment_cols(b);
  const auto s = make_schedule(a, m, tile_rows, 2.0 * (3 * d + 4 + 2 * e));
  Scratch g_buf(s, m, a.options()), s_buf(s, m, a.options()), x_buf(s, d + 1, a.options());
  auto grad_a = at::empty_like(a);
  auto grad_v = at::empty_like(v);
  auto grad_b_acc = at::zeros({s.slots, s.heads, m, d + 1}, a.options());
  for_each_tile(s, [&](int64_t slot, int64_t h0, int64_t nh, int64_t r0, int64_t nr) {
    auto g = g_buf.get(slot, nh, nr);
    kernel_tile(g, a_aug, b_aug, h0, nh, r0, nr);
    auto gz = heads_of(grad, h0, nh);
    auto gv = rows_of(grad_v, h0, nh, r0, nr);
    at::bmm_out(gv, g, gz);                                                // G dZ
    auto s_tile = s_buf.get(slot, nh, nr);
    at::bmm_out(s_tile, rows_of(v, h0, nh, r0, nr), gz.transpose(1, 2));  // dL/dG = v dZ^T
    s_tile.mul_(g);
    auto x = x_buf.get(slot, nh, nr);
    auto acc = grad_b_acc[slot];
    position_grads_tile(s_tile, x, a_aug, b_aug, grad_a, acc, h0, nh, r0, nr);
  });
  return {grad_a, finish_grad_b(grad_b_acc, b), grad_v};
}

}  // namespace soft_d2
