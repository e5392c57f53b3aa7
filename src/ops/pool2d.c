/* Max and average pooling over stacks of planes (NCHW: N*C planes), and global pooling.
 * Each input plane is laid out as phase planes (src/ops/window.c) so that a whole output plane
 * is one run of the wmax / wmacc window kernels; threads split the planes. Padded positions
 * never enter a max; for averages the divisor follows count_include_pad (docs/functional.md). */
#include <math.h>
#include <string.h>

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

/* Everything a pooling call shares between its threads: the layout, the tap offsets and, for
 * averages, the weights (all ones) and the divisors per output row and column. */
typedef struct pool_setup {
  fc_phase_layout layout;
  ptrdiff_t* offsets;
  float* ones;
  size_t* count_h;
  size_t* count_w;
} pool_setup;

static void pool_setup_free(pool_setup* s) {
  fc_free(s->offsets), fc_free(s->ones), fc_free(s->count_h), fc_free(s->count_w);
}

static int pool_setup_init(const fc_pool2d_params* p, int is_max, pool_setup* s) {
  const size_t taps = p->kernel_h * p->kernel_w;
  fc_phase_layout_init(&s->layout, p->in_h, p->in_w, p->out_h, p->out_w, p->kernel_h,
                       p->kernel_w, p->stride_h, p->stride_w, p->dilation_h, p->dilation_w,
                       p->pad_top, p->pad_left);
  s->offsets = (ptrdiff_t*)fc_alloc(taps * sizeof(ptrdiff_t));
  s->ones = is_max ? NULL : (float*)fc_alloc(taps * sizeof(float));
  s->count_h = is_max ? NULL : (size_t*)fc_alloc(p->out_h * sizeof(size_t));
  s->count_w = is_max ? NULL : (size_t*)fc_alloc(p->out_w * sizeof(size_t));
  if (!s->offsets || (!is_max && (!s->ones || !s->count_h || !s->count_w))) {
    pool_setup_free(s);
    return FC_ERROR_NOMEM;
  }
  fc_phase_offsets(&s->layout, s->offsets);
  if (is_max) return 0;
  for (size_t t = 0; t < taps; t++) s->ones[t] = 1.0f;
  for (size_t o = 0; o < p->out_h; o++) {
    s->count_h[o] = window_count(o, p->stride_h, p->dilation_h, p->kernel_h, p->pad_top,
                                 p->pad_bottom, p->in_h, p->count_include_pad);
  }
  for (size_t o = 0; o < p->out_w; o++) {
    s->count_w[o] = window_count(o, p->stride_w, p->dilation_w, p->kernel_w, p->pad_left,
                                 p->pad_right, p->in_w, p->count_include_pad);
  }
  return 0;
}

/* One plane: phase layout, one window-kernel run, then the run's valid columns into y. */
static void pool_plane(const fc_pool2d_params* p, const fc_vector_config* vk, const pool_setup* s,
                       int is_max, const float* x, float* planes, float* run, float* y) {
  const fc_phase_layout* l = &s->layout;
  const size_t taps = p->kernel_h * p->kernel_w;
  fc_phase_fill(l, x, is_max ? -INFINITY : 0.0f, planes);
  if (is_max) {
    vk->wmax(l->run, planes, s->offsets, taps, run);
  } else {
    const fc_window_epilogue sum = {0, 0.0f, -INFINITY, INFINITY};
    vk->wmacc(l->run, planes, s->offsets, s->ones, taps, &sum, run);
  }
  for (size_t oh = 0; oh < p->out_h; oh++) {
    const float* src = run + oh * l->cols;
    float* dst = y + oh * p->out_w;
    if (is_max) {
      memcpy(dst, src, p->out_w * sizeof(float));
      continue;
    }
    for (size_t ow = 0; ow < p->out_w; ow++) {
      const size_t count = s->count_h[oh] * s->count_w[ow];
      dst[ow] = count ? src[ow] / (float)count : 0.0f;
    }
  }
}

/* Threads for a pooling of `flops_per_output` per output: its input and output floats weigh
 * more than its arithmetic (fc_threads_for_traffic). */
static int pool_threads(const fc_pool2d_params* p, double flops_per_output) {
  const double outputs = (double)p->planes * p->out_h * p->out_w;
  return fc_threads_for_traffic(flops_per_output * outputs,
                                (double)p->planes * p->in_h * p->in_w + outputs);
}

static int pool2d(const fc_pool2d_params* p, int is_max, const float* x, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  pool_setup s;
  if (pool_setup_init(p, is_max, &s) != 0) return FC_ERROR_NOMEM;
  const size_t in_plane = p->in_h * p->in_w, out_plane = p->out_h * p->out_w;
  const int threads = pool_threads(p, (double)p->kernel_h * p->kernel_w);
  int rc = 0;
#pragma omp parallel num_threads(threads)
  {
    const unsigned fp_mode = fc_fp_enter();
    /* Each thread's own buffers (workspaces are per thread): the phase planes of one input
     * plane and one output run. */
    float* planes = (float*)fc_workspace(FC_WS_INPUT, fc_phase_planes_size(&s.layout) * sizeof(float));
    float* run = (float*)fc_workspace(FC_WS_OUTPUT, fc_run_size(&s.layout) * sizeof(float));
    if (!planes || !run) {
#pragma omp atomic write
      rc = FC_ERROR_NOMEM;
    }
#pragma omp for schedule(static)
    for (size_t c = 0; c < p->planes; c++) {
      if (planes && run) pool_plane(p, vk, &s, is_max, x + c * in_plane, planes, run, y + c * out_plane);
    }
    fc_fp_exit(fp_mode);
  }
  pool_setup_free(&s);
  return rc;
}

/* 2x2 windows, stride 2, every window inside the input (LeNet, VGG): rows read in place by
 * one kernel call per output row, threads splitting all planes' rows. Measured 2-4x faster
 * than the phase-plane path, whose layout copy dominates so little arithmetic. */
static int max_pool2x2(const fc_pool2d_params* p) {
  return p->kernel_h == 2 && p->kernel_w == 2 && p->stride_h == 2 && p->stride_w == 2 &&
         p->dilation_h == 1 && p->dilation_w == 1 && p->pad_top == 0 && p->pad_left == 0 &&
         2 * p->out_h <= p->in_h && 2 * p->out_w <= p->in_w;
}

typedef struct pool_rows_job {
  const fc_pool2d_params* p;
  fc_maxpool2x2_fn kernel;
  const float* x;
  float* y;
} pool_rows_job;

static void max_pool2x2_row(void* ctx, size_t row) {
  const pool_rows_job* j = (const pool_rows_job*)ctx;
  const fc_pool2d_params* p = j->p;
  const size_t c = row / p->out_h, oh = row % p->out_h;
  const float* r0 = j->x + c * p->in_h * p->in_w + 2 * oh * p->in_w;
  j->kernel(p->out_w, r0, r0 + p->in_w, j->y + row * p->out_w);
}

static void max_pool2x2_rows(const fc_pool2d_params* p, const float* x, float* y) {
  const size_t rows = p->planes * p->out_h;
  pool_rows_job job = {p, fc_vector_config_get()->maxpool2x2, x, y};
  fc_parallel_for(pool_threads(p, 4.0), rows, max_pool2x2_row, &job);
}

/* 3x3 windows at stride 1 or 2 on both axes (GoogLeNet, ResNet, AlexNet), at most one column
 * or row of padding before the input, any after it (ceil mode), and every window holding at least
 * one input row: rows read in place by one kernel call per FC_MAXPOOL_ROWS output rows. */
static int max_pool3x3(const fc_pool2d_params* p) {
  const size_t s = p->stride_h;
  return p->kernel_h == 3 && p->kernel_w == 3 && (s == 1 || s == 2) && p->stride_w == s &&
         p->dilation_h == 1 && p->dilation_w == 1 && p->pad_top <= 1 && p->pad_left <= 1 &&
         p->out_h > 0 && (p->out_h - 1) * s < p->in_h + p->pad_top;
}

/* The input rows of the output rows oh, oh + 1 (the band starting at oh) of a plane, row
 * ih = s * oh + j - pad_top for j < s + 3 (the kernel's x[j]), and their output rows. A row in
 * the padding is replaced by the nearest input row, which lies in the same window (every
 * window holds an input row and reaches at most one row before the input), so the max is the
 * same. Without a second output row, the second row's kernel inputs repeat the first's and it is
 * written to the first output row, with the same values. */
#define BAND_ROWS_MAX (2 * (FC_MAXPOOL_ROWS - 1) + 3) /* input rows of a band at stride 2 */
static void band_rows(const fc_pool2d_params* p, const float* plane, size_t oh, float* y_plane,
                      const float* x[BAND_ROWS_MAX], float* y[FC_MAXPOOL_ROWS]) {
  const size_t s = p->stride_h, rows = s + 3;
  const int second = oh + 1 < p->out_h;
  for (size_t j = 0; j < rows; j++) {
    ptrdiff_t ih = (ptrdiff_t)(s * oh + j) - (ptrdiff_t)p->pad_top;
    ih = ih < 0 ? 0 : ih >= (ptrdiff_t)p->in_h ? (ptrdiff_t)p->in_h - 1 : ih;
    x[j] = second || j < 3 ? plane + (size_t)ih * p->in_w : x[j - 3];
  }
  y[0] = y_plane + oh * p->out_w;
  y[1] = second ? y[0] + p->out_w : y[0];
}

static void max_pool3x3_rows(const fc_pool2d_params* p, const float* x, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const fc_maxpool3x3_fn kernel = p->stride_w == 1 ? vk->maxpool3x3s1 : vk->maxpool3x3s2;
  const size_t bands = (p->out_h + FC_MAXPOOL_ROWS - 1) / FC_MAXPOOL_ROWS;
  const size_t tasks = p->planes * bands, in_plane = p->in_h * p->in_w;
  const size_t out_plane = p->out_h * p->out_w;
  const int threads = pool_threads(p, 9.0);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t t = 0; t < tasks; t++) {
    const size_t c = t / bands, oh = (t % bands) * FC_MAXPOOL_ROWS;
    const float* rows[BAND_ROWS_MAX];
    float* out[FC_MAXPOOL_ROWS];
    band_rows(p, x + c * in_plane, oh, y + c * out_plane, rows, out);
    kernel(p->out_w, rows, p->pad_left, p->in_w, out);
  }
}

/* Stride 1, one row and column of padding on every side (GoogLeNet's inception branches), on
 * planes small enough to take as flat runs: their rows leave most lanes of a vector empty. */
static int max_pool3x3_flat(const fc_pool2d_params* p) {
  return max_pool3x3(p) && p->stride_h == 1 && p->pad_top == 1 && p->pad_bottom == 1 &&
         p->pad_left == 1 && p->pad_right == 1 && p->in_h * p->in_w <= FC_MAXPOOL_FLAT_MAX;
}

/* Each thread's contiguous share of the planes in one kernel call (which makes its lane masks
 * once). */
static void max_pool3x3_flat_run(const fc_pool2d_params* p, const float* x, float* y) {
  const fc_maxpool3x3_flat_fn kernel = fc_vector_config_get()->maxpool3x3s1_flat;
  const size_t plane = p->in_h * p->in_w;
#pragma omp parallel num_threads(pool_threads(p, 9.0))
  {
    const size_t id = (size_t)fc_thread_id(), team = (size_t)fc_thread_count();
    size_t first, end;
    fc_share(p->planes, id, team, &first, &end);
    kernel(end - first, p->in_h, p->in_w, x + first * plane, y + first * plane);
  }
}

const char* fc_pool2d_kernel(const fc_pool2d_params* p, int is_max) {
  if (!is_max) return "wmacc";
  if (max_pool2x2(p)) return "maxpool2x2";
  if (max_pool3x3_flat(p)) return "maxpool3x3s1_flat";
  if (max_pool3x3(p)) return p->stride_w == 1 ? "maxpool3x3s1" : "maxpool3x3s2";
  return "wmax";
}

int fc_max_pool2d_f32(const fc_pool2d_params* p, const float* x, float* y) {
  if (max_pool2x2(p)) {
    max_pool2x2_rows(p, x, y);
    return 0;
  }
  if (max_pool3x3_flat(p)) {
    max_pool3x3_flat_run(p, x, y);
    return 0;
  }
  if (max_pool3x3(p)) {
    max_pool3x3_rows(p, x, y);
    return 0;
  }
  return pool2d(p, 1, x, y);
}

int fc_avg_pool2d_f32(const fc_pool2d_params* p, const float* x, float* y) {
  return pool2d(p, 0, x, y);
}

/* The mean of a plane, summed in double (which keeps large planes, 224 x 224, exact to float
 * precision) in eight independent sums: one chain of dependent adds was latency-bound, 42 us for
 * MobileNetV2's 1280 planes of 7x7 on one thread. */
static float plane_mean(const float* x, size_t n) {
  double s[8] = {0.0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t j = 0; j < 8; j++) s[j] += x[i + j];
  }
  for (; i < n; i++) s[i % 8] += x[i];
  const double total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  return (float)(total / (double)n);
}

void fc_global_pool_f32(size_t planes, size_t plane_size, int is_max, const float* x, float* y) {
  const double floats = (double)planes * plane_size;
  const int threads = fc_threads_for_traffic(floats, floats);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t c = 0; c < planes; c++) {
    const float* xc = x + c * plane_size;
    if (is_max) {
      float m = -INFINITY;
      for (size_t i = 0; i < plane_size; i++) m = (xc[i] > m || xc[i] != xc[i]) ? xc[i] : m;
      y[c] = m;
    } else {
      y[c] = plane_mean(xc, plane_size);
    }
  }
}
