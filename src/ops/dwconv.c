/* Depthwise 3x3 convolution, stride 1 or 2, without phase planes: the direct algorithm's path
 * when every group has one input channel (MobileNet's depthwise layers).
 *
 * Each output plane is computed in bands of FC_DW_ROWS rows, one dwconv kernel call per band.
 * The kernels read the input rows in place and mask the loads that reach into the left and
 * right padding; rows above and below the input point at a row of zeros. Nothing is copied, and
 * the kernels store straight into the output with bias and clamp applied. Planes are independent
 * tasks, so threads split channels even at batch 1, and every output is summed in the same order
 * whatever the thread count. */
#include <math.h>
#include <string.h>

#include "fc_internal.h"
#include "fc_kernels.h"

/* The flat kernel is taken on planes up to this wide: measured (one thread) faster than row
 * vectors on 7x7 and 14x14 planes. */
#define FC_DW_FLAT_MAX_W 14
/* The channel-blocked kernel takes outputs up to this wide and tall (measured faster than the
 * row and flat kernels on 7x7 and 14x14 outputs, slower on 28x28), given channels enough to fill
 * AVX-512's 16 lanes; it runs before the flat kernel, which keeps the taller narrow planes. */
#define FC_DW_CBLOCK_MAX_W 14
#define FC_DW_CBLOCK_MIN_CHANNELS 16

int fc_dwconv3x3_applies(const fc_conv2d_params* p) {
  return p->in_channels == p->groups && p->kernel_h == 3 && p->kernel_w == 3 &&
         p->stride_h == p->stride_w && (p->stride_h == 1 || p->stride_h == 2) &&
         p->dilation_h == 1 && p->dilation_w == 1;
}

/* A thread's buffers: a row of zeros (input rows outside the plane) and a row that takes the
 * kernel's output rows below the plane. */
typedef struct dw_scratch {
  const float* zeros;
  float* spill;
} dw_scratch;

/* Residual and tanh/sigmoid of a finished plane (the kernels clamp only without a residual). */
static void dw_finish(const fc_conv2d_params* p, const fc_vector_config* vk,
                      const float* residual, float* y) {
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  if (!residual && p->activation < FC_ACT_TANH) return;
  for (size_t oh = 0; oh < p->out_h; oh++) {
    float* row = y + oh * p->out_w;
    if (residual) vk->vadd(p->out_w, row, residual + oh * p->out_w, row, lo, hi);
    fc_activation_row(p->out_w, p->activation, row);
  }
}

/* The row kernels prefetch the input rows of their next band when the batch's input is this
 * large, and its output rows when the output is this large. A prefetch takes a load slot even
 * when its line is already in cache, and L2 (1 MiB) still holds much of what the layer before
 * wrote: prefetching the input slowed MobileNetV2's 1.8 MB layers by 3-10 %. Measured in the
 * network (one thread, docs/kernels.md): its 96-channel stride-2 layer (4.8 MB input) 0.192 ->
 * 0.172 ms, the layer after the stem (its output buffer last written in the previous image)
 * 0.19 -> 0.164 ms. */
#define FC_DW_PREFETCH_INPUT_BYTES (2 << 20)
#define FC_DW_PREFETCH_OUTPUT_BYTES (1 << 20)

/* The rows to prefetch while band oh0 computes: the input rows the next band reads that this one
 * does not and its output rows; after the plane's last band, the first band's input rows of the
 * plane that comes next (`next_plane`, NULL for none). Only for large tensors (above). */
static fc_dw_ahead dw_ahead(const fc_conv2d_params* p, const float* x, const float* next_plane,
                            float* y, size_t oh0, size_t in_rows) {
  const size_t stride = p->stride_h, first = oh0 * stride + in_rows, next = oh0 + FC_DW_ROWS;
  const size_t in_bytes = p->batch * p->in_channels * p->in_h * p->in_w * sizeof(float);
  const size_t out_bytes = p->batch * p->out_channels * p->out_h * p->out_w * sizeof(float);
  fc_dw_ahead a = {NULL, 0, NULL, 0};
  if (out_bytes >= FC_DW_PREFETCH_OUTPUT_BYTES && next < p->out_h) {
    a.y = y + next * p->out_w;
    a.y_rows = fc_min(FC_DW_ROWS, p->out_h - next);
  }
  if (in_bytes < FC_DW_PREFETCH_INPUT_BYTES) return a;
  if (first < p->pad_top + p->in_h) {
    const size_t ih = first > p->pad_top ? first - p->pad_top : 0;
    a.x = x + ih * p->in_w;
    a.x_rows = fc_min(FC_DW_ROWS * stride, p->in_h - ih);
  } else if (next_plane && in_rows > p->pad_top) {
    a.x = next_plane;
    a.x_rows = fc_min(in_rows - p->pad_top, p->in_h);
  }
  return a;
}

static void dw_plane(const fc_conv2d_params* p, const fc_vector_config* vk, const float* x,
                     const float* next_plane, const float* w, float bias, const float* residual,
                     float* y, const dw_scratch* s) {
  const size_t stride = p->stride_h, in_rows = (FC_DW_ROWS - 1) * stride + 3;
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  /* With a residual, the clamp waits until it is added. */
  const fc_window_epilogue ep = {0, bias, residual ? -INFINITY : lo, residual ? INFINITY : hi};
  const fc_dwconv_fn kernel = stride == 1 ? vk->dwconv3x3s1 : vk->dwconv3x3s2;
  for (size_t oh0 = 0; oh0 < p->out_h; oh0 += FC_DW_ROWS) {
    const float* rows[2 * FC_DW_ROWS + 1];
    float* out[FC_DW_ROWS];
    for (size_t j = 0; j < in_rows; j++) {
      const ptrdiff_t ih = (ptrdiff_t)(oh0 * stride + j) - (ptrdiff_t)p->pad_top;
      rows[j] = ih >= 0 && ih < (ptrdiff_t)p->in_h ? x + ih * p->in_w : s->zeros;
    }
    for (size_t r = 0; r < FC_DW_ROWS; r++) {
      out[r] = oh0 + r < p->out_h ? y + (oh0 + r) * p->out_w : s->spill;
    }
    const fc_dw_ahead ahead = dw_ahead(p, x, next_plane, y, oh0, in_rows);
    kernel(p->out_w, rows, p->pad_left, p->in_w, w, &ep, out,
           ahead.x || ahead.y ? &ahead : NULL);
  }
  dw_finish(p, vk, residual, y);
}

/* Whether the planes run as flat runs (fc_dwconv_flat_fn): stride 1, one output channel per
 * input channel, output rows as wide as the input rows, and planes small enough that row vectors
 * would be mostly empty. */
static int dw_flat_applies(const fc_conv2d_params* p) {
  return p->stride_h == 1 && p->out_channels == p->in_channels && p->out_w == p->in_w &&
         p->out_w <= FC_DW_FLAT_MAX_W && p->out_h * p->out_w <= FC_DW_FLAT_MAX;
}

/* Whether the planes run channel-blocked (fc_dwconv_cblock_fn): one output channel per input
 * channel, and the sizes above (on small planes the row and flat kernels' masks and partly
 * empty vectors cost more than its transposes; on 28 x 28 outputs they cost less). */
static int dw_cblock_applies(const fc_conv2d_params* p) {
  return p->out_channels == p->in_channels && p->in_channels >= FC_DW_CBLOCK_MIN_CHANNELS &&
         p->out_w <= FC_DW_CBLOCK_MAX_W && p->out_h <= FC_DW_CBLOCK_MAX_W;
}

const char* fc_dwconv3x3_kernel(const fc_conv2d_params* p) {
  if (dw_cblock_applies(p)) return "dwconv3x3_cblock";
  if (dw_flat_applies(p)) return "dwconv3x3s1_flat";
  return p->stride_h == 1 ? "dwconv3x3s1" : "dwconv3x3s2";
}

/* Threads for a depthwise layer, whose input, output and residual floats weigh more than its
 * arithmetic (fc_threads_for_traffic): MobileNetV2's 960-channel 7x7 layers (0.85 Mflop) ran on
 * one thread, 0.04 ms each at batch 1 on two threads; split, its depthwise layers took x0.92
 * (Zen 3, session 15). */
static int dw_threads(size_t planes, size_t in_plane, size_t out_plane, const float* residual) {
  const double flops = 2.0 * 9 * planes * out_plane;
  const double floats = (double)planes * (in_plane + (residual ? 2 : 1) * out_plane);
  return fc_threads_for_traffic(flops, floats);
}

/* The flat kernel over each thread's share of the batch's planes, one call per image in it. */
static void dw_flat_run(const fc_conv2d_params* p, const float* w, const float* bias,
                        const float* residual, const float* x, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t channels = p->out_channels, planes = p->batch * channels;
  const size_t in_plane = p->in_h * p->in_w, out_plane = p->out_h * p->out_w;
  const fc_dw_flat_geometry g = {p->in_h, p->out_h, p->out_w, p->pad_top, p->pad_left};
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  const fc_window_epilogue ep = {0, 0.0f, residual ? -INFINITY : lo, residual ? INFINITY : hi};
#pragma omp parallel num_threads(dw_threads(planes, in_plane, out_plane, residual))
  {
    const unsigned fp_mode = fc_fp_enter();
    const size_t id = (size_t)fc_thread_id(), team = (size_t)fc_thread_count();
    size_t first, end;
    fc_share(planes, id, team, &first, &end);
    for (size_t q = first; q < end;) {
      const size_t c = q % channels, count = fc_min(end - q, channels - c);
      vk->dwconv3x3s1_flat(count, &g, x + q * in_plane, w + c * 9, bias ? bias + c : NULL, &ep,
                           y + q * out_plane);
      for (size_t i = q; i < q + count; i++) {
        dw_finish(p, vk, residual ? residual + i * out_plane : NULL, y + i * out_plane);
      }
      q += count;
    }
    fc_fp_exit(fp_mode);
  }
}

/* The channel-blocked kernel over each thread's share of the batch's planes, one call per image
 * in it. */
static int dw_cblock_run(const fc_conv2d_params* p, const float* w, const float* bias,
                         const float* residual, const float* x, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t channels = p->out_channels, planes = p->batch * channels;
  const size_t in_plane = p->in_h * p->in_w, out_plane = p->out_h * p->out_w;
  const fc_dw_cblock_geometry g = {p->in_h,     p->in_w,  p->out_h,   p->out_w,
                                   p->stride_h, p->pad_top, p->pad_left};
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  const fc_window_epilogue ep = {0, 0.0f, residual ? -INFINITY : lo, residual ? INFINITY : hi};
  int rc = 0;
#pragma omp parallel num_threads(dw_threads(planes, in_plane, out_plane, residual))
  {
    const unsigned fp_mode = fc_fp_enter();
    const size_t id = (size_t)fc_thread_id(), team = (size_t)fc_thread_count();
    size_t first, end;
    fc_share(planes, id, team, &first, &end);
    float* buffer = (float*)fc_workspace(FC_WS_INPUT, FC_DW_CBLOCK_FLOATS(&g) * sizeof(float));
    if (!buffer) {
#pragma omp atomic write
      rc = FC_ERROR_NOMEM;
    }
    for (size_t q = first; buffer && q < end;) {
      const size_t c = q % channels, count = fc_min(end - q, channels - c);
      vk->dwconv3x3_cblock(count, &g, x + q * in_plane, w + c * 9, bias ? bias + c : NULL, &ep,
                           buffer, y + q * out_plane);
      for (size_t i = q; i < q + count; i++) {
        dw_finish(p, vk, residual ? residual + i * out_plane : NULL, y + i * out_plane);
      }
      q += count;
    }
    fc_fp_exit(fp_mode);
  }
  return rc;
}

int fc_dwconv3x3_run(const fc_conv2d_params* p, const float* w, const float* bias,
                     const float* residual, const float* x, float* y) {
  if (dw_cblock_applies(p)) return dw_cblock_run(p, w, bias, residual, x, y);
  if (dw_flat_applies(p)) {
    dw_flat_run(p, w, bias, residual, x, y);
    return 0;
  }
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t og = p->out_channels / p->groups, planes = p->batch * p->out_channels;
  const size_t in_plane = p->in_h * p->in_w, out_plane = p->out_h * p->out_w;
  int rc = 0;
#pragma omp parallel num_threads(dw_threads(planes, in_plane, out_plane, residual))
  {
    const unsigned fp_mode = fc_fp_enter();
    float* buffer = (float*)fc_workspace(FC_WS_INPUT, (p->in_w + p->out_w) * sizeof(float));
    dw_scratch s = {buffer, buffer ? buffer + p->in_w : NULL};
    if (buffer) {
      memset(buffer, 0, p->in_w * sizeof(float));
    } else {
#pragma omp atomic write
      rc = FC_ERROR_NOMEM;
    }
#pragma omp for schedule(static)
    for (size_t plane = 0; plane < planes; plane++) {
      const size_t oc = plane % p->out_channels, n = plane / p->out_channels;
      const float* xc = x + (n * p->in_channels + oc / og) * in_plane;
      /* With one output channel per input channel, the next plane's input follows. */
      const float* next = og == 1 && plane + 1 < planes ? xc + in_plane : NULL;
      if (buffer) {
        dw_plane(p, vk, xc, next, w + oc * 9, bias ? bias[oc] : 0.0f,
                 residual ? residual + plane * out_plane : NULL, y + plane * out_plane, &s);
      }
    }
    fc_fp_exit(fp_mode);
  }
  return rc;
}
