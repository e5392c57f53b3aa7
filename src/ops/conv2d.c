/* 2-D convolution, NCHW activations and OIHW weights.
 *
 * Four algorithms here (Winograd F(2x2) and F(4x4) are in winograd.c), all reading the same
 * arguments:
 *  - im2col + GEMM: per image and group, Y (O x OH*OW) = W (O x C*KH*KW) * cols, where the
 *    columns are written straight into the GEMM's packed B panels, one K x N block at a time,
 *    so no whole-image column buffer ever exists;
 *  - implicit GEMM: the input laid out once as phase planes, which the GEMM reads in place as its
 *    B operand (nothing packed per call but the weights, once);
 *  - GEMM: for a 1x1 kernel with stride 1 and no padding the input already is the B matrix;
 *  - direct: each output plane is one run of the wmacc window kernel over phase planes of its
 *    input channels; best when a group has few output channels (depthwise), where a GEMM tile
 *    would be mostly empty. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastconv.h"
#include "fc_internal.h"
#include "fc_kernels.h"

typedef struct im2col_src {
  const float* x; /* the first input channel of the group, in one image */
  const fc_conv2d_params* p;
} im2col_src;

/* Writes rows k0..k0+kc of the column matrix, columns n0..n0+nr_used, into a k-major NR panel. */
static void pack_b_im2col(const void* ctx, size_t k0, size_t kc, size_t n0, size_t nr_used,
                          size_t nr, float* dst) {
  const im2col_src* s = (const im2col_src*)ctx;
  const fc_conv2d_params* p = s->p;
  const size_t khw = p->kernel_h * p->kernel_w, ow_n = p->out_w;
  for (size_t kk = 0; kk < kc; kk++) {
    const size_t k = k0 + kk, ch = k / khw, kh = (k % khw) / p->kernel_w, kw = k % p->kernel_w;
    const float* xc = s->x + ch * p->in_h * p->in_w;
    const ptrdiff_t woff = (ptrdiff_t)(kw * p->dilation_w) - (ptrdiff_t)p->pad_left;
    float* d = dst + kk * nr;
    size_t j = 0;
    while (j < nr_used) { /* one output row segment at a time */
      const size_t n = n0 + j, oh = n / ow_n, ow0 = n % ow_n;
      const size_t seg = fc_min(ow_n - ow0, nr_used - j);
      const ptrdiff_t ih = (ptrdiff_t)(oh * p->stride_h + kh * p->dilation_h) - (ptrdiff_t)p->pad_top;
      if (ih < 0 || ih >= (ptrdiff_t)p->in_h) {
        memset(d + j, 0, seg * sizeof(float));
      } else {
        size_t lo, hi;
        fc_valid_range(ow0 + seg, p->stride_w, woff, p->in_w, &lo, &hi);
        if (lo < ow0) lo = ow0;
        if (hi < lo) hi = lo;
        const float* xr = xc + (size_t)ih * p->in_w;
        for (size_t ow = ow0; ow < lo; ow++) d[j + ow - ow0] = 0.0f;
        if (p->stride_w == 1) {
          memcpy(d + j + lo - ow0, xr + (ptrdiff_t)lo + woff, (hi - lo) * sizeof(float));
        } else {
          for (size_t ow = lo; ow < hi; ow++) d[j + ow - ow0] = xr[(ptrdiff_t)(ow * p->stride_w) + woff];
        }
        for (size_t ow = hi; ow < ow0 + seg; ow++) d[j + ow - ow0] = 0.0f;
      }
      j += seg;
    }
    for (; j < nr; j++) d[j] = 0.0f;
  }
}

/* Outputs per tile side of a Winograd algorithm: F(2x2, 3x3) or F(4x4, 3x3). */
static size_t winograd_tile(int algorithm) { return algorithm == FC_CONV_WINOGRAD4 ? 4 : 2; }

static size_t gemm_kdim(const fc_conv2d_params* p) {
  return p->in_channels / p->groups * p->kernel_h * p->kernel_w;
}

/* A 1x1 layer with at most this many MR-row panels of output channels reads its input in place
 * instead of packing it: each packed B panel would serve only a few tiles. Measured on one
 * thread (AVX-512): 16 and 32 channels 70 -> 93 GFLOP/s; 64 channels slower in place. */
#define FC_IN_PLACE_MAX_PANELS 4

/* Whether a 1x1 layer runs transposed, pixels as the MR-row dimension (conv_pixel_rows): when
 * the tiles over the pixels as columns do 10 % more work than over the pixels as rows (the
 * transposes' cost, measured). Edge tiles cost whole vectors, NR / 2 columns. On AVX-512 this
 * takes 7x7 images (49 pixels: 64 columns against 56 rows; the 7x7 1x1 layers of ResNet-50,
 * GoogLeNet and MobileNetV2 measured 4-14 % faster, typically 78 -> 88 GFLOP/s), not 14x14 (208
 * columns against 200 rows) or 28x28, which measured 1-15 % slower transposed. */
static int gemm_pixel_rows(const fc_conv2d_params* p, int algorithm) {
  const fc_gemm_config* cfg = fc_gemm_config_get();
  const size_t og = p->out_channels / p->groups, npix = p->out_h * p->out_w, vec = cfg->nr / 2;
  if (algorithm != FC_CONV_GEMM || og <= FC_IN_PLACE_MAX_PANELS * cfg->mr) return 0;
  const double cols_work = (double)fc_round_up(og, cfg->mr) * fc_round_up(npix, vec);
  const double rows_work = (double)fc_round_up(npix, cfg->mr) * fc_round_up(og, vec);
  return rows_work * 1.1 < cols_work;
}

size_t fc_conv2d_packed_size(const fc_conv2d_params* p, int algorithm) {
  const size_t og = p->out_channels / p->groups;
  if (algorithm == FC_CONV_DIRECT) return p->out_channels * gemm_kdim(p);
  if (algorithm == FC_CONV_WINOGRAD || algorithm == FC_CONV_WINOGRAD4) {
    return fc_winograd_packed_size(p, winograd_tile(algorithm));
  }
  if (gemm_pixel_rows(p, algorithm)) return p->groups * fc_dense_packed_size(gemm_kdim(p), og);
  return p->groups * fc_packed_a_size(og, gemm_kdim(p), fc_gemm_config_get()->mr);
}

int fc_conv2d_packed_tile(int algorithm) {
  return algorithm == FC_CONV_DIRECT ? 0 : (int)fc_gemm_config_get()->mr;
}

int fc_conv2d_pack_weights(const fc_conv2d_params* p, int algorithm, const float* w,
                           float* packed) {
  const size_t og = p->out_channels / p->groups, kdim = gemm_kdim(p);
  if (algorithm == FC_CONV_DIRECT) {
    memcpy(packed, w, p->out_channels * kdim * sizeof(float));
    return 0;
  }
  if (algorithm == FC_CONV_WINOGRAD || algorithm == FC_CONV_WINOGRAD4) {
    return fc_winograd_pack_weights(p, winograd_tile(algorithm), w, packed);
  }
  if (gemm_pixel_rows(p, algorithm)) {
    /* W_g^T as B panels: the layout of a dense layer's weights (out x in). */
    const size_t wpanel = fc_dense_packed_size(kdim, og);
    for (size_t g = 0; g < p->groups; g++) {
      fc_dense_pack_weights(kdim, og, w + g * og * kdim, packed + g * wpanel);
    }
    return 0;
  }
  const size_t mr = fc_gemm_config_get()->mr, apanel = fc_packed_a_size(og, kdim, mr);
  for (size_t g = 0; g < p->groups; g++) {
    fc_pack_a(og, kdim, w + g * og * kdim, (ptrdiff_t)kdim, 1, mr, packed + g * apanel);
  }
  return 0;
}

/* Per image and group: Y_g (O/g x OH*OW) = act(W_g * B_g + bias [+ residual]). */
static int conv_gemm(const fc_conv2d_params* p, int algorithm, const float* packed,
                     const float* bias, const float* residual, const float* x, float* y) {
  const size_t groups = p->groups, og = p->out_channels / groups, cg = p->in_channels / groups;
  const size_t kdim = gemm_kdim(p), npix = p->out_h * p->out_w, in_plane = p->in_h * p->in_w;
  const size_t apanel = fc_packed_a_size(og, kdim, fc_gemm_config_get()->mr);
  const int threads = fc_threads_for(2.0 * og * kdim * npix);
  /* A model plan may write the output over the input (the input being the fused residual); B
   * is then packed, each block before any tile of it is stored. */
  const uintptr_t x0 = (uintptr_t)x, y0 = (uintptr_t)y;
  const int aliased = x0 < y0 + p->batch * p->out_channels * npix * sizeof(float) &&
                      y0 < x0 + p->batch * p->in_channels * in_plane * sizeof(float);
  const int in_place = algorithm == FC_CONV_GEMM && !aliased &&
                       og <= FC_IN_PLACE_MAX_PANELS * fc_gemm_config_get()->mr;
  ptrdiff_t* offsets = NULL; /* B row k is input channel k */
  if (in_place) {
    offsets = (ptrdiff_t*)fc_workspace(FC_WS_TABLE, kdim * sizeof(ptrdiff_t));
    if (!offsets) return FC_ERROR_NOMEM;
    for (size_t k = 0; k < kdim; k++) offsets[k] = (ptrdiff_t)(k * in_plane);
  }
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n++) {
    for (size_t g = 0; g < groups && rc == 0; g++) {
      const size_t out_offset = (n * p->out_channels + g * og) * npix;
      const float* xg = x + (n * p->in_channels + g * cg) * in_plane;
      const float* bg = bias ? bias + g * og : NULL;
      if (residual && residual != y) {
        memcpy(y + out_offset, residual + out_offset, og * npix * sizeof(float));
      }
      const im2col_src cols = {xg, p};
      const fc_matrix_src matrix = {xg, npix};
      fc_b_operand operand = {pack_b_im2col, &cols, NULL, NULL, NULL};
      if (in_place) {
        operand = (fc_b_operand){NULL, NULL, NULL, xg, offsets};
      } else if (algorithm == FC_CONV_GEMM) {
        operand = (fc_b_operand){fc_pack_b_matrix, &matrix, NULL, NULL, NULL};
      }
      rc = fc_gemm_packed(og, npix, kdim, packed + g * apanel, &operand, bg, NULL,
                          residual != NULL, p->activation, y + out_offset, npix, threads);
    }
  }
  return rc;
}

/* Y_g^T (pixels x O/g) in yt into the NCHW planes at y, adding the residual (then the
 * activation) if there is one; without it the GEMM already applied the activation. The residual
 * may be y itself: each element is read before it is written. */
static void store_transposed(const fc_conv2d_params* p, size_t og, const float* yt,
                             const float* residual, float* y, int threads) {
  const size_t npix = p->out_h * p->out_w;
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  /* 16 channels at a time: each pixel's 16 values are one cache line of yt, and the 16 output
   * rows are written in order (reading yt column by column thrashed L1 when og * 4 bytes is a
   * multiple of 4 KiB). */
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t o0 = 0; o0 < og; o0 += 16) {
    const size_t o1 = fc_min(og, o0 + 16);
    for (size_t i = 0; i < npix; i++) {
      for (size_t o = o0; o < o1; o++) {
        float v = yt[i * og + o];
        if (residual) {
          v += residual[o * npix + i];
          if (v < lo) v = lo; /* comparisons keep NaN */
          if (v > hi) v = hi;
        }
        y[o * npix + i] = v;
      }
    }
    for (size_t o = o0; o < o1 && residual; o++) {
      fc_activation_row(npix, p->activation, y + o * npix);
    }
  }
}

/* A 1x1 layer on a small image, transposed: Y_g^T (pixels x O/g) = X_g^T (pixels x C/g) * W_g^T.
 * The pixels are the GEMM rows (a 7x7 image is 56 rows of work instead of 64 columns), the
 * weights were packed once as B panels, X^T is packed per call; the result is transposed into
 * place. */
static int conv_pixel_rows(const fc_conv2d_params* p, const float* packed, const float* bias,
                           const float* residual, const float* x, float* y) {
  const size_t groups = p->groups, og = p->out_channels / groups, cg = p->in_channels / groups;
  const size_t npix = p->out_h * p->out_w, mr = fc_gemm_config_get()->mr;
  const size_t wpanel = fc_dense_packed_size(cg, og);
  const int threads = fc_threads_for(2.0 * og * cg * npix);
  float* xt = (float*)fc_workspace(FC_WS_INPUT, fc_packed_a_size(npix, cg, mr) * sizeof(float));
  float* yt = (float*)fc_workspace(FC_WS_OUTPUT, npix * og * sizeof(float));
  if (!xt || !yt) return FC_ERROR_NOMEM;
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n++) {
    for (size_t g = 0; g < groups && rc == 0; g++) {
      const size_t out_offset = (n * p->out_channels + g * og) * npix;
      fc_pack_a(npix, cg, x + (n * p->in_channels + g * cg) * npix, 1, (ptrdiff_t)npix, mr, xt);
      const fc_b_operand operand = {NULL, NULL, packed + g * wpanel, NULL, NULL};
      rc = fc_gemm_packed(npix, og, cg, xt, &operand, NULL, bias ? bias + g * og : NULL, 0,
                          residual ? FC_ACT_NONE : p->activation, yt, og, threads);
      store_transposed(p, og, yt, residual ? residual + out_offset : NULL, y + out_offset, threads);
    }
  }
  return rc;
}

/* Implicit GEMM: per image and group, every input channel is laid out once as phase planes
 * (src/ops/window.c), and the GEMM reads its B operand in place: row k = (c, kh, kw) of B is
 * channel c's planes at tap (kh, kw)'s offset, column n is output position n of the flat run
 * (oh * cols + ow). Nothing is packed per call but A (the weights, packed once); the cost is
 * the layout copy and cols - out_w wasted columns per output row, then a copy of the valid
 * columns into y (which is where a residual is added); wide outputs skip that copy, their
 * tiles cut at each output row and stored in place (implicit_rows). */
typedef struct implicit_work {
  fc_phase_layout layout;
  size_t chan;         /* floats of phase planes per input channel */
  size_t ldc;          /* row stride of the run matrix */
  ptrdiff_t* offsets;  /* per k = (c, kh, kw) */
  float* planes;       /* cg channels */
  float* run;          /* og x ldc */
} implicit_work;

static int implicit_work_init(const fc_conv2d_params* p, int rows, implicit_work* w) {
  const size_t og = p->out_channels / p->groups, cg = p->in_channels / p->groups;
  const size_t taps = p->kernel_h * p->kernel_w;
  w->chan = fc_phase_planes_size(&w->layout);
  w->ldc = fc_round_up(w->layout.run, 16);
  w->offsets = (ptrdiff_t*)fc_workspace(FC_WS_TABLE, cg * taps * sizeof(ptrdiff_t));
  w->planes = (float*)fc_workspace(FC_WS_INPUT, cg * w->chan * sizeof(float));
  w->run = rows ? NULL : (float*)fc_workspace(FC_WS_OUTPUT, og * w->ldc * sizeof(float));
  if (!w->offsets || !w->planes || (!rows && !w->run)) return FC_ERROR_NOMEM;
  fc_phase_offsets(&w->layout, w->offsets);
  for (size_t c = 1; c < cg; c++) {
    for (size_t t = 0; t < taps; t++) w->offsets[c * taps + t] = w->offsets[t] + (ptrdiff_t)(c * w->chan);
  }
  return 0;
}

/* The valid columns of the run matrix into the og output planes at y, adding the residual (and
 * then the activation) if there is one. */
static void implicit_store(const fc_conv2d_params* p, const implicit_work* w, size_t og,
                           const float* residual, float* y, int threads) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t out_plane = p->out_h * p->out_w;
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t o = 0; o < og; o++) {
    for (size_t oh = 0; oh < p->out_h; oh++) {
      const float* src = w->run + o * w->ldc + oh * w->layout.cols;
      float* dst = y + o * out_plane + oh * p->out_w;
      if (!residual) {
        memcpy(dst, src, p->out_w * sizeof(float));
        continue;
      }
      vk->vadd(p->out_w, src, residual + o * out_plane + oh * p->out_w, dst, lo, hi);
      fc_activation_row(p->out_w, p->activation, dst);
    }
  }
}

/* Whether the implicit GEMM stores straight into the output planes, its columns cut into rows
 * of out_w (no tile crosses an output row), instead of computing the flat run of `cols`-wide
 * rows and copying the valid columns out. Measured on one thread (AVX-512 and AVX2): faster on
 * wide images (MobileNetV2's stem 5-10 %, GoogLeNet's 7x7 stem 3-17 %, VGG's 224-wide layers 5
 * and 29 %), 4-15 % slower on 56-wide and narrower ones, where the rows' edge tiles waste more
 * than the copy costs. Taken from 64 columns on, and only when the rows need no more vectors
 * than the run (edge tiles cost whole vectors of NR / 2 columns). */
#define FC_IMPLICIT_ROWS_MIN_W 64

static int implicit_rows(const fc_conv2d_params* p, const fc_phase_layout* l) {
  const size_t vec = fc_gemm_config_get()->nr / 2;
  const size_t run_cols = l->run - (l->cols - p->out_w);
  return p->out_w >= FC_IMPLICIT_ROWS_MIN_W &&
         p->out_h * (fc_round_up(p->out_w, vec) / vec) <= fc_round_up(run_cols, vec) / vec;
}

static int conv_implicit(const fc_conv2d_params* p, const float* packed, const float* bias,
                         const float* residual, const float* x, float* y) {
  const size_t groups = p->groups, og = p->out_channels / groups, cg = p->in_channels / groups;
  const size_t kdim = gemm_kdim(p), in_plane = p->in_h * p->in_w, out_plane = p->out_h * p->out_w;
  const size_t apanel = fc_packed_a_size(og, kdim, fc_gemm_config_get()->mr);
  implicit_work w;
  fc_phase_layout_init(&w.layout, p->in_h, p->in_w, p->out_h, p->out_w, p->kernel_h,
                       p->kernel_w, p->stride_h, p->stride_w, p->dilation_h, p->dilation_w,
                       p->pad_top, p->pad_left);
  const int rows = implicit_rows(p, &w.layout);
  if (implicit_work_init(p, rows, &w) != 0) return FC_ERROR_NOMEM;
  /* The run's last row needs only out_w columns. */
  const size_t n_cols = w.layout.run - (w.layout.cols - p->out_w);
  const int threads = fc_threads_for(2.0 * og * kdim * n_cols);
  fc_b_operand operand = {NULL, NULL, NULL, w.planes, w.offsets};
  if (rows) {
    operand.seg = p->out_w;
    operand.seg_b = w.layout.cols;
    operand.seg_c = p->out_w;
  }
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n++) {
    for (size_t g = 0; g < groups && rc == 0; g++) {
      const float* xg = x + (n * p->in_channels + g * cg) * in_plane;
      const size_t out_offset = (n * p->out_channels + g * og) * out_plane;
#pragma omp parallel for schedule(static) num_threads(threads)
      for (size_t c = 0; c < cg; c++) fc_phase_fill(&w.layout, xg + c * in_plane, 0.0f, w.planes + c * w.chan);
      if (rows) {
        /* After the fill: y may be the input itself (a model plan's in-place residual). */
        if (residual && residual != y) {
          memcpy(y + out_offset, residual + out_offset, og * out_plane * sizeof(float));
        }
        rc = fc_gemm_packed(og, out_plane, kdim, packed + g * apanel, &operand,
                            bias ? bias + g * og : NULL, NULL, residual != NULL, p->activation,
                            y + out_offset, out_plane, threads);
        continue;
      }
      rc = fc_gemm_packed(og, n_cols, kdim, packed + g * apanel, &operand, bias ? bias + g * og : NULL,
                          NULL, 0, residual ? FC_ACT_NONE : p->activation, w.run, w.ldc, threads);
      implicit_store(p, &w, og, residual ? residual + out_offset : NULL, y + out_offset, threads);
    }
  }
  return rc;
}

/* Direct convolution, one output plane per task: the plane starts at its bias, each input
 * channel of its group is laid out as phase planes (src/ops/window.c) and accumulated over the
 * whole plane in one wmacc run, then the run's valid columns get the residual and activation.
 * Re-laying out an input channel for every output channel of its group costs 1/taps of the
 * arithmetic; it buys one task per output plane, so threads split channels even at batch 1. */
typedef struct direct_scratch {
  float* planes;
  float* run;
} direct_scratch;

static void direct_plane(const fc_conv2d_params* p, const fc_vector_config* vk,
                         const fc_phase_layout* l, const ptrdiff_t* offsets, const float* x,
                         const float* w, const float* bias, const float* residual, float* y,
                         size_t plane, direct_scratch* s) {
  const size_t oc = plane % p->out_channels, n = plane / p->out_channels;
  const size_t og = p->out_channels / p->groups, cg = p->in_channels / p->groups, g = oc / og;
  const size_t taps = p->kernel_h * p->kernel_w, in_plane = p->in_h * p->in_w;
  const size_t out_plane = p->out_h * p->out_w;
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  for (size_t c = 0; c < cg; c++) {
    /* The last channel's run applies the clamp, unless a residual must be added first. */
    const int clamp_now = c + 1 == cg && !residual;
    const fc_window_epilogue ep = {c > 0, bias ? bias[oc] : 0.0f, clamp_now ? lo : -INFINITY,
                                   clamp_now ? hi : INFINITY};
    fc_phase_fill(l, x + (n * p->in_channels + g * cg + c) * in_plane, 0.0f, s->planes);
    vk->wmacc(l->run, s->planes, offsets, w + (oc * cg + c) * taps, taps, &ep, s->run);
  }
  for (size_t oh = 0; oh < p->out_h; oh++) {
    const float* src = s->run + oh * l->cols;
    float* dst = y + plane * out_plane + oh * p->out_w;
    if (residual) vk->vadd(p->out_w, src, residual + plane * out_plane + oh * p->out_w, dst, lo, hi);
    else memcpy(dst, src, p->out_w * sizeof(float));
    fc_activation_row(p->out_w, p->activation, dst);
  }
}

static int conv_direct(const fc_conv2d_params* p, const float* w, const float* bias,
                       const float* residual, const float* x, float* y) {
  /* The depthwise path writes y as it goes, so a residual that is y itself takes the general
   * path, which adds it from a copy. */
  if (fc_dwconv3x3_applies(p) && residual != y) return fc_dwconv3x3_run(p, w, bias, residual, x, y);
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t taps = p->kernel_h * p->kernel_w, planes = p->batch * p->out_channels;
  fc_phase_layout l;
  fc_phase_layout_init(&l, p->in_h, p->in_w, p->out_h, p->out_w, p->kernel_h, p->kernel_w,
                       p->stride_h, p->stride_w, p->dilation_h, p->dilation_w, p->pad_top,
                       p->pad_left);
  ptrdiff_t* offsets = (ptrdiff_t*)fc_alloc(taps * sizeof(ptrdiff_t));
  if (!offsets) return FC_ERROR_NOMEM;
  fc_phase_offsets(&l, offsets);
  const double flops = 2.0 * planes * p->out_h * p->out_w * (p->in_channels / p->groups) * taps;
  int rc = 0;
#pragma omp parallel num_threads(fc_threads_for(flops))
  {
    const unsigned fp_mode = fc_fp_enter();
    /* Each thread's own buffers (workspaces are per thread). */
    direct_scratch s = {(float*)fc_workspace(FC_WS_INPUT, fc_phase_planes_size(&l) * sizeof(float)),
                        (float*)fc_workspace(FC_WS_OUTPUT, fc_run_size(&l) * sizeof(float))};
    if (!s.planes || !s.run) {
#pragma omp atomic write
      rc = FC_ERROR_NOMEM;
    }
#pragma omp for schedule(static)
    for (size_t plane = 0; plane < planes; plane++) {
      if (s.planes && s.run) direct_plane(p, vk, &l, offsets, x, w, bias, residual, y, plane, &s);
    }
    fc_fp_exit(fp_mode);
  }
  fc_free(offsets);
  return rc;
}

static int run_algorithm(const fc_conv2d_params* p, int algorithm, const float* packed,
                         const float* bias, const float* residual, const float* x, float* y) {
  if (algorithm == FC_CONV_DIRECT) return conv_direct(p, packed, bias, residual, x, y);
  if (algorithm == FC_CONV_WINOGRAD || algorithm == FC_CONV_WINOGRAD4) {
    return fc_winograd_run(p, winograd_tile(algorithm), packed, bias, residual, x, y);
  }
  if (algorithm == FC_CONV_IMPLICIT) return conv_implicit(p, packed, bias, residual, x, y);
  if (gemm_pixel_rows(p, algorithm)) return conv_pixel_rows(p, packed, bias, residual, x, y);
  return conv_gemm(p, algorithm, packed, bias, residual, x, y);
}

/* The team that splits a batch's images, or 0 to split each image's work instead. Whole images
 * per thread need no fork/join per image and never split a small image's few tiles; they are
 * taken when they balance: a multiple of the team, or at least 4 images per thread. The direct
 * algorithm already splits images x channels. */
static int image_team(const fc_conv2d_params* p, int algorithm) {
  const size_t flops = 2 * p->batch * p->out_channels * p->out_h * p->out_w *
                       (p->in_channels / p->groups) * p->kernel_h * p->kernel_w;
  const size_t team = (size_t)fc_threads_for((double)flops);
  if (algorithm == FC_CONV_DIRECT || team < 2 || p->batch < team) return 0;
  return p->batch % team == 0 || p->batch >= 4 * team ? (int)team : 0;
}

/* Each thread convolves its contiguous share of the images on its own (the drivers it calls run
 * single-threaded inside the team, fc_threads_for); every image is computed as on one thread,
 * so results do not depend on the split. */
static int run_images(const fc_conv2d_params* p, int team, int algorithm, const float* packed,
                      const float* bias, const float* residual, const float* x, float* y) {
  const size_t in_size = p->in_channels * p->in_h * p->in_w;
  const size_t out_size = p->out_channels * p->out_h * p->out_w;
  int rc = 0;
#pragma omp parallel num_threads(team)
  {
    const size_t id = (size_t)fc_thread_id(), count = (size_t)fc_thread_count();
    const size_t n0 = p->batch * id / count, n1 = p->batch * (id + 1) / count;
    if (n1 > n0) {
      fc_conv2d_params part = *p;
      part.batch = n1 - n0;
      const int status = run_algorithm(&part, algorithm, packed, bias,
                                       residual ? residual + n0 * out_size : NULL,
                                       x + n0 * in_size, y + n0 * out_size);
      if (status != 0) {
#pragma omp atomic write
        rc = status;
      }
    }
  }
  return rc;
}

int fc_conv2d_nchw_f32_packed(const fc_conv2d_params* p, int algorithm, int packed_tile,
                              const float* packed, const float* bias, const float* residual,
                              const float* x, float* y) {
  if (packed_tile != fc_conv2d_packed_tile(algorithm)) return FC_ERROR_STALE;
  const int team = image_team(p, algorithm);
  if (team > 0) return run_images(p, team, algorithm, packed, bias, residual, x, y);
  return run_algorithm(p, algorithm, packed, bias, residual, x, y);
}

int fc_conv2d_nchw_f32(const fc_conv2d_params* p, int algorithm, const float* x, const float* w,
                       const float* bias, float* y) {
  if (algorithm == FC_CONV_DIRECT) return conv_direct(p, w, bias, NULL, x, y);
  float* packed = (float*)fc_alloc(fc_conv2d_packed_size(p, algorithm) * sizeof(float));
  if (!packed) return FC_ERROR_NOMEM;
  int rc = fc_conv2d_pack_weights(p, algorithm, w, packed);
  if (rc == 0) {
    rc = fc_conv2d_nchw_f32_packed(p, algorithm, fc_conv2d_packed_tile(algorithm), packed, bias,
                                   NULL, x, y);
  }
  fc_free(packed);
  return rc;
}
