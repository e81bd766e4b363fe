// RoIAlign backward on the CPU, parallel over channels (roi_align_cpu.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace soft_d2 {

// The gradient of RoIAlign with respect to its [batch_size, channels, height, width] input, with
// the arguments and results of torchvision's `torchvision::_roi_align_backward` CPU kernel:
// grad [K, channels, pooled_height, pooled_width] and rois [K, 5] (batch index, x1, y1, x2, y2),
// both float32, float64 or float16 (one dtype). Returns grad's dtype.
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned);

}  // namespace soft_d2
