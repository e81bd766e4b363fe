// RoIAlign backward on the CPU, parallel over channels.
//
// RoIAlign's output bin (k, c, ph, pw) is the mean of the input's channel c, bilinearly
// interpolated at a grid_h x grid_w grid of points in that bin of roi k; its backward scatters
// grad * weight / count onto the (up to) 4 input pixels around each point.
//
// Every thread owns a range of channels of grad_input and, for each of its channels, visits the
// rois, bins and points in the serial order (k, ph, pw, iy, ix), adding the 4 contributions of
// a point in the order (low, low), (low, high), (high, low), (high, high). Each element of
// grad_input therefore receives the same sums in the same order as in a single-threaded kernel
// that runs over (k, c, ph, pw, iy, ix): no atomics, and results independent of the number of
// threads. All arithmetic is in the tensors' dtype, operation by operation as written below
// (float16 too), so the results are those of torchvision's single-threaded CPU kernel.
//
// A sampling point's coordinates are separable: y depends on (ph, iy) only and x on (pw, ix)
// only, and so are the out-of-image test, the border clamping, the 4 pixel indices and the
// 1-D weights (hy, ly) and (hx, lx). These are computed once per roi before the parallel loop,
// in tables of size pooled_height * grid_h + pooled_width * grid_w per roi; the 2-D weights
// hy * hx, ... are the products formed per point.
#include "roi_align.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace soft_d2 {
namespace {

// One sampling coordinate along one axis (y: a row, x: a column).
// 16 bytes in float32: the tables of all rois are read once per channel.
template <typename T>
struct AxisPoint {
  int32_t low;   // lower neighbouring pixel (rows: already multiplied by the row length); -1:
                 // the point lies outside [-1, size] and contributes nothing
  int32_t high;  // upper neighbouring pixel, likewise
  T frac;        // weight of `high`: distance of the point from `low`
  T rest;        // weight of `low`: 1 - frac
  bool inside() const { return low >= 0; }
};

// The neighbours and 1-D weights of coordinate v on an axis of `size` pixels. Points in
// [-1, 0] are moved to 0 and points in [size - 1, size] to size - 1 (the border pixel takes
// the whole weight there).
template <typename T>
AxisPoint<T> axis_point(T v, int64_t size, int64_t stride) {
  using acc_t = at::opmath_type<T>;
  AxisPoint<T> p{-1, -1, T(0), T(0)};
  if (static_cast<acc_t>(v) < acc_t(-1) || static_cast<acc_t>(v) > static_cast<acc_t>(size))
    return p;
  if (static_cast<acc_t>(v) <= acc_t(0)) v = T(0);
  int64_t low = static_cast<int64_t>(static_cast<acc_t>(v));
  int64_t high;
  if (low >= size - 1) {
    low = high = size - 1;
    v = static_cast<T>(low);
  } else {
    high = low + 1;
  }
  p.frac = v - static_cast<T>(low);
  p.rest = static_cast<T>(1.0 - static_cast<double>(p.frac));
  p.low = static_cast<int32_t>(low * stride);
  p.high = static_cast<int32_t>(high * stride);
  return p;
}

// Where roi k's points lie in the axis tables, and what its bins average over.
template <typename T>
struct RoiPlan {
  int64_t batch;   // image of the roi
  int64_t grid_h;  // points per bin along y (0: the roi has no points)
  int64_t grid_w;  // points per bin along x
  T count;         // divisor of the bin average: max(grid_h * grid_w, 1)
  int64_t y0;      // first entry of the roi in the y table, pooled_height * grid_h entries
  int64_t x0;      // first entry of the roi in the x table, pooled_width * grid_w entries
};

// Points per bin along one axis: sampling_ratio when positive, else ceil(bin size).
template <typename T>
int64_t grid_size(T bin_size, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  using acc_t = at::opmath_type<T>;
  const acc_t points = std::ceil(static_cast<acc_t>(bin_size));
  if (!(points > acc_t(0))) return 0;  // empty (aligned) or NaN roi
  TORCH_CHECK(points <= acc_t(std::numeric_limits<int32_t>::max()),
              "roi_align_backward_cpu: a roi spans ", static_cast<double>(points),
              " sampling points per bin");
  return static_cast<int64_t>(points);
}

// The coordinate of point i (of `grid`) in bin `bin` along an axis starting at `start`.
template <typename T>
T point_coordinate(T start, int64_t bin, T bin_size, int64_t i, int64_t grid) {
  const T offset_in_bin = static_cast<T>(static_cast<float>(i) + 0.5f) * bin_size;
  return start + static_cast<T>(bin) * bin_size + offset_in_bin / static_cast<T>(grid);
}

template <typename T>
struct Plans {
  std::vector<RoiPlan<T>> rois;
  std::vector<AxisPoint<T>> ys;
  std::vector<AxisPoint<T>> xs;
  int64_t points_per_channel = 0;  // sampling points over all rois and bins
};

template <typename T>
Plans<T> make_plans(const T* rois, int64_t num_rois, double spatial_scale, int64_t pooled_height,
                    int64_t pooled_width, int64_t batch_size, int64_t height, int64_t width,
                    int64_t sampling_ratio, bool aligned) {
  using acc_t = at::opmath_type<T>;
  Plans<T> plans;
  plans.rois.resize(num_rois);
  const T scale = spatial_scale;
  const T offset = aligned ? T(0.5) : T(0.0);
  std::vector<T> starts(2 * num_rois), bins(2 * num_rois);  // (y, x) per roi
  int64_t y_entries = 0, x_entries = 0;
  for (int64_t k = 0; k < num_rois; ++k) {
    const T* r = rois + 5 * k;
    RoiPlan<T>& plan = plans.rois[k];
    plan.batch = static_cast<int64_t>(static_cast<acc_t>(r[0]));
    TORCH_CHECK(plan.batch >= 0 && plan.batch < batch_size, "roi_align_backward_cpu: roi ", k,
                " has batch index ", plan.batch, " outside [0, ", batch_size, ")");
    const T start_w = r[1] * scale - offset;
    const T start_h = r[2] * scale - offset;
    const T end_w = r[3] * scale - offset;
    const T end_h = r[4] * scale - offset;
    T roi_w = end_w - start_w;
    T roi_h = end_h - start_h;
    if (!aligned) {  // a degenerate roi counts as 1 x 1 pixel
      roi_w = std::max(roi_w, T(1.0));
      roi_h = std::max(roi_h, T(1.0));
    }
    const T bin_h = roi_h / static_cast<T>(pooled_height);
    const T bin_w = roi_w / static_cast<T>(pooled_width);
    plan.grid_h = grid_size(bin_h, sampling_ratio);
    plan.grid_w = grid_size(bin_w, sampling_ratio);
    if (plan.grid_h == 0 || plan.grid_w == 0) plan.grid_h = plan.grid_w = 0;
    plan.count = static_cast<T>(std::max<int64_t>(plan.grid_h * plan.grid_w, 1));
    plan.y0 = y_entries;
    plan.x0 = x_entries;
    y_entries += pooled_height * plan.grid_h;
    x_entries += pooled_width * plan.grid_w;
    plans.points_per_channel += pooled_height * pooled_width * plan.grid_h * plan.grid_w;
    starts[2 * k] = start_h;
    starts[2 * k + 1] = start_w;
    bins[2 * k] = bin_h;
    bins[2 * k + 1] = bin_w;
  }
  plans.ys.resize(y_entries);
  plans.xs.resize(x_entries);
  for (int64_t k = 0; k < num_rois; ++k) {
    const RoiPlan<T>& plan = plans.rois[k];
    AxisPoint<T>* ys = plans.ys.data() + plan.y0;
    for (int64_t ph = 0; ph < pooled_height; ++ph)
      for (int64_t iy = 0; iy < plan.grid_h; ++iy)
        *ys++ = axis_point(point_coordinate(starts[2 * k], ph, bins[2 * k], iy, plan.grid_h),
                           height, width);
    AxisPoint<T>* xs = plans.xs.data() + plan.x0;
    for (int64_t pw = 0; pw < pooled_width; ++pw)
      for (int64_t ix = 0; ix < plan.grid_w; ++ix)
        *xs++ = axis_point(
            point_coordinate(starts[2 * k + 1], pw, bins[2 * k + 1], ix, plan.grid_w), width, 1);
  }
  return plans;
}

// A task below this many sampling points (each 4 scattered additions) runs faster on the
// calling thread than handed to another one.
constexpr int64_t kMinTaskPoints = int64_t(1) << 15;

// Adds roi k's contributions to one channel's plane `out`, in the order (ph, pw, iy, ix).
template <typename T>
void scatter_roi(const RoiPlan<T>& roi, const AxisPoint<T>* ys_all, const AxisPoint<T>* xs_all,
                 const T* g_roi, T* out, int64_t pooled_height, int64_t pooled_width) {
  // Locals throughout: the stores into `out` (of type T) could otherwise alias the T fields of
  // the tables and force them to be reloaded after every addition.
  const T count = roi.count;
  const int64_t grid_h = roi.grid_h;
  const int64_t grid_w = roi.grid_w;
  for (int64_t ph = 0; ph < pooled_height; ++ph) {
    const AxisPoint<T>* ys = ys_all + roi.y0 + ph * grid_h;
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      const AxisPoint<T>* xs = xs_all + roi.x0 + pw * grid_w;
      const T g = g_roi[ph * pooled_width + pw];
      for (int64_t iy = 0; iy < grid_h; ++iy) {
        const AxisPoint<T> y = ys[iy];
        if (!y.inside()) continue;
        T* row_low = out + y.low;
        T* row_high = out + y.high;
        for (int64_t ix = 0; ix < grid_w; ++ix) {
          const AxisPoint<T> x = xs[ix];
          if (!x.inside()) continue;
          const T w1 = y.rest * x.rest;
          const T w2 = y.rest * x.frac;
          const T w3 = y.frac * x.rest;
          const T w4 = y.frac * x.frac;
          row_low[x.low] += g * w1 / count;
          row_low[x.high] += g * w2 / count;
          row_high[x.low] += g * w3 / count;
          row_high[x.high] += g * w4 / count;
        }
      }
    }
  }
}

template <typename T>
void scatter_channels(const Plans<T>& plans, const T* grad, T* grad_input, int64_t channels,
                      int64_t pooled_height, int64_t pooled_width, int64_t plane) {
  const int64_t bins = pooled_height * pooled_width;
  const int64_t grain =
      std::max<int64_t>(1, kMinTaskPoints / std::max<int64_t>(plans.points_per_channel, 1));
  const RoiPlan<T>* rois = plans.rois.data();
  const int64_t num_rois = static_cast<int64_t>(plans.rois.size());
  const AxisPoint<T>* ys = plans.ys.data();
  const AxisPoint<T>* xs = plans.xs.data();
  at::parallel_for(0, channels, grain, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t k = 0; k < num_rois; ++k) {
        const RoiPlan<T>& roi = rois[k];
        if (roi.grid_h == 0) continue;
        T* out = grad_input + (roi.batch * channels + c) * plane;
        const T* g_roi = grad + (k * channels + c) * bins;
        scatter_roi(roi, ys, xs, g_roi, out, pooled_height, pooled_width);
      }
    }
  });
}

}  // namespace

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned) {
  const char* op = "roi_align_backward_cpu";
  TORCH_CHECK(grad.device().is_cpu(), op, ": grad must be a CPU tensor, got ", grad.device());
  TORCH_CHECK(rois.device().is_cpu(), op, ": rois must be a CPU tensor, got ", rois.device());
  TORCH_CHECK(grad.scalar_type() == rois.scalar_type(), op, ": grad (", grad.scalar_type(),
              ") and rois (", rois.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must be [K, 5], got ",
              rois.sizes());
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be [K, channels, pooled_height, pooled_width],",
              " got ", grad.sizes());
  TORCH_CHECK(grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": grad is ", grad.sizes(), " but rois, channels and the pooled size give [",
              rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width, "]");
  TORCH_CHECK(batch_size >= 0 && height >= 0 && width >= 0, op,
              ": negative input size [", batch_size, ", ", channels, ", ", height, ", ", width,
              "]");

  TORCH_CHECK(height * width <= std::numeric_limits<int32_t>::max(), op,
              ": an input plane of ", height, " x ", width, " pixels has more than 2^31 - 1");

  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input;

  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const Plans<scalar_t> plans = make_plans<scalar_t>(
        rois_c.const_data_ptr<scalar_t>(), rois_c.size(0), spatial_scale, pooled_height,
        pooled_width, batch_size, height, width, sampling_ratio, aligned);
    scatter_channels<scalar_t>(plans, grad_c.const_data_ptr<scalar_t>(),
                               grad_input.mutable_data_ptr<scalar_t>(), channels, pooled_height,
                               pooled_width, height * width);
  });
  return grad_input;
}

}  // namespace soft_d2
