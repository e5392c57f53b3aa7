/* Max and average pooling over stacks of planes (NCHW: N*C planes), and global pooling.
 * Each output row is built from strided input rows by the vrowmax / vrowsum kernels; threads
 * split the rows. Padded positions never enter a max; for averages the divisor follows
 * count_include_pad (see docs/functional.md). */
#include <math.h>

#include "fastconv.h"
#include "fc_internal.h"
#include "fc_kernels.h"

/* Window taps of output position o along one axis that fall in [0, in) (real input), or in
 * [-pad_begin, in + pad_end) (the padded input) when include_pad is set. */
static size_t window_count(size_t o, size_t stride, size_t dilation, size_t kernel,
                           size_t pad_begin, size_t pad_end, size_t in, int include_pad) {
  size_t count = 0;
  for (size_t i = 0; i < kernel; i++) {
    const ptrdiff_t pos = (ptrdiff_t)(o * stride + i * dilation) - (ptrdiff_t)pad_begin;
    const ptrdiff_t lo = include_pad ? -(ptrdiff_t)pad_begin : 0;
    const ptrdiff_t hi = (ptrdiff_t)in + (include_pad ? (ptrdiff_t)pad_end : 0);
    count += pos >= lo && pos < hi;
  }
  return count;
}

static void pool_row(const fc_pool2d_params* p, fc_vrow_fn reduce, const float* x, float* yr,
                     size_t oh) {
  for (size_t kh = 0; kh < p->kernel_h; kh++) {
    const ptrdiff_t ih = (ptrdiff_t)(oh * p->stride_h + kh * p->dilation_h) - (ptrdiff_t)p->pad_top;
    if (ih < 0 || ih >= (ptrdiff_t)p->in_h) continue;
    const float* xr = x + (size_t)ih * p->in_w;
    for (size_t kw = 0; kw < p->kernel_w; kw++) {
      const ptrdiff_t off = (ptrdiff_t)(kw * p->dilation_w) - (ptrdiff_t)p->pad_left;
      size_t lo, hi;
      fc_valid_range(p->out_w, p->stride_w, off, p->in_w, &lo, &hi);
      if (hi > lo) reduce(hi - lo, xr + (ptrdiff_t)(lo * p->stride_w) + off, p->stride_w, yr + lo);
    }
  }
}

static int pool_threads(const fc_pool2d_params* p) {
  return fc_threads_for((double)p->planes * p->out_h * p->out_w * p->kernel_h * p->kernel_w);
}

void fc_max_pool2d_f32(const fc_pool2d_params* p, const float* x, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t rows = p->planes * p->out_h, in_plane = p->in_h * p->in_w;
#pragma omp parallel for schedule(static) num_threads(pool_threads(p))
  for (size_t row = 0; row < rows; row++) {
    float* yr = y + row * p->out_w;
    for (size_t i = 0; i < p->out_w; i++) yr[i] = -INFINITY;
    pool_row(p, vk->vrowmax, x + (row / p->out_h) * in_plane, yr, row % p->out_h);
  }
}

void fc_avg_pool2d_f32(const fc_pool2d_params* p, const float* x, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t rows = p->planes * p->out_h, in_plane = p->in_h * p->in_w;
#pragma omp parallel for schedule(static) num_threads(pool_threads(p))
  for (size_t row = 0; row < rows; row++) {
    const size_t oh = row % p->out_h;
    float* yr = y + row * p->out_w;
    for (size_t i = 0; i < p->out_w; i++) yr[i] = 0.0f;
    pool_row(p, vk->vrowsum, x + (row / p->out_h) * in_plane, yr, oh);
    const size_t ch = window_count(oh, p->stride_h, p->dilation_h, p->kernel_h, p->pad_top,
                                   p->pad_bottom, p->in_h, p->count_include_pad);
    for (size_t ow = 0; ow < p->out_w; ow++) {
      const size_t cw = window_count(ow, p->stride_w, p->dilation_w, p->kernel_w, p->pad_left,
                                     p->pad_right, p->in_w, p->count_include_pad);
      yr[ow] = ch * cw ? yr[ow] / (float)(ch * cw) : 0.0f;
    }
  }
}

void fc_global_pool_f32(size_t planes, size_t plane_size, int is_max, const float* x, float* y) {
  const int threads = fc_threads_for((double)planes * plane_size);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t c = 0; c < planes; c++) {
    const float* xc = x + c * plane_size;
    if (is_max) {
      float m = -INFINITY;
      for (size_t i = 0; i < plane_size; i++) m = (xc[i] > m || xc[i] != xc[i]) ? xc[i] : m;
      y[c] = m;
    } else {
      double s = 0.0; /* a double sum keeps large planes (224 x 224) exact to float precision */
      for (size_t i = 0; i < plane_size; i++) s += xc[i];
      y[c] = (float)(s / (double)plane_size);
    }
  }
}
