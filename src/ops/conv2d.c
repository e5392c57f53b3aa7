/* 2-D convolution, NCHW activations and OIHW weights.
 *
 * Four algorithms here (Winograd F(2x2) and F(4x4) are in winograd.c), all reading the same
 * arguments:
 *  - im2col + GEMM: per image and group, Y (O x OH*OW) = W (O x C*KH*KW) * cols, where the
 *    columns are written straight into the GEMM's packed B panels, one K x N block at a time,
 *    so no whole-image column buffer ever exists;
 *  - implicit GEMM: the input laid out once as phase planes, which the GEMM reads in place as its
 *    B operand (nothing packed per call but the weights, once);
 *  - GEMM: for a 1x1 kernel with no padding the input already is the B matrix (at stride 1),
 *    or a subsampled copy of it is (at a stride);
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
 * thread (AVX-512): 16 and 32 channels 70 -> 93 GFLOP/s. */
#define FC_IN_PLACE_MAX_PANELS 4

/* Whether a 1x1 layer of og output channels and npix pixels reads its input in place: at most 4
 * panels, or on AVX-512 (NR = 32) up to 128 channels when the output fits L2 (1 MiB). Packing
 * costs more than it saves there: measured on one thread, CPU time, layers of one shape with
 * distinct weights called in turn, 64 channels 4-10 % faster in place (ResNet-50 256 -> 64 on
 * 56x56 1.07 -> 0.98 ms), 96-128 channels 2-6 % (512 -> 128 on 28x28 0.99 -> 0.93), 192 mixed
 * (+-3 %), 256 slower (64 -> 256 on 56x56 8 %). The driver runs B read in place down the rows of
 * C, which streams badly once C is out of cache: MobileNetV2's 16 -> 96 on 112x112 (4.8 MB of
 * output) took 0.45 -> 0.68 ms in the network. AVX2 ran 64-96 channels up to 20 % slower in place
 * (512 -> 96 on 28x28) and keeps the four panels (for a chain's bands, below). */
static int reads_in_place(const fc_gemm_config* cfg, size_t og, size_t npix) {
  if (og <= FC_IN_PLACE_MAX_PANELS * cfg->mr) return 1;
  return cfg->nr >= 32 && og <= 128 && og * npix * sizeof(float) <= ((size_t)1 << 20);
}

/* The same for a whole image's 1x1 layer. AVX2 packs it whatever og: packed row by row (see
 * gemm.c), B measured faster than read in place even at 16-24 channels (one thread, caches
 * flushed, Zen 3, ab_builds per turn: 480 -> 16 on 14x14 x0.76, 96 and 144 -> 24 on 56x56 x0.89 /
 * x0.96). A depth-first chain's band rows, in L2, keep the rule above (packing those too measured
 * MobileNetV2 x1.03 per turn, quartiles 0.99-1.04). */
static int reads_image_in_place(size_t og, size_t npix) {
  const fc_gemm_config* cfg = fc_gemm_config_get();
  return cfg->nr >= 32 && reads_in_place(cfg, og, npix);
}

int fc_gemm_reads_in_place(size_t og, size_t npix) {
  return reads_in_place(fc_gemm_config_get(), og, npix);
}

/* The phase planes of an implicit GEMM (src/ops/window.c) and the GEMM columns it computes: the
 * run less its last row's dropped columns. */
static size_t implicit_layout(const fc_conv2d_params* p, fc_phase_layout* l) {
  fc_phase_layout_init(l, p->in_h, p->in_w, p->out_h, p->out_w, p->kernel_h, p->kernel_w,
                       p->stride_h, p->stride_w, p->dilation_h, p->dilation_w, p->pad_top,
                       p->pad_left);
  return l->run - (l->cols - p->out_w);
}

/* The implicit GEMM's row offsets: row k = (c, kh, kw) of B is channel c's planes (`chan` floats
 * apart) at tap (kh, kw)'s offset. */
static void implicit_offsets(const fc_phase_layout* l, size_t cg, size_t taps, size_t chan,
                             ptrdiff_t* offsets) {
  fc_phase_offsets(l, offsets);
  for (size_t c = 1; c < cg; c++) {
    for (size_t t = 0; t < taps; t++) offsets[c * taps + t] = offsets[t] + (ptrdiff_t)(c * chan);
  }
}

static int is_strided(const fc_conv2d_params* p) { return p->stride_h != 1 || p->stride_w != 1; }

/* Whether a layer pads better transposed, pixels as the MR-row dimension (conv_pixel_rows,
 * conv_implicit_rows): when the tiles over the pixels as columns do 10 % more work than over
 * the pixels as rows (the transposes' cost, measured). Edge tiles cost whole vectors, NR / 2
 * columns. On AVX-512 this takes 1x1 layers on 7x7 images (49 pixels: 64 columns against 56
 * rows; the 7x7 1x1 layers of ResNet-50, GoogLeNet and MobileNetV2 measured 4-14 % faster,
 * typically 78 -> 88 GFLOP/s), not 14x14 (208 columns against 200 rows) or 28x28, which
 * measured 1-15 % slower transposed. An implicit GEMM computes its run as columns, dropped
 * columns included, and gathers only the pixels as rows: a 3x3 stride-2 layer with a 14x14
 * output is 209 columns (224 of work) or 200 rows, with a 7x7 one 55 (64) or 56. Its rows are
 * gathered per call, which costs per output channel more than the padding saves below
 * FC_IMPLICIT_ROWS_MIN_O channels (one thread, caches flushed, AVX-512 / AVX2: GoogLeNet's 5x5
 * layers on 14x14, 16 -> 48 channels 10-17 % slower transposed, 24 -> 64 7 % / 1 %, 32 -> 128
 * 10 % / 2 % faster; ResNet's 3x3 stride-2 layers of 256 and 512 channels 5-12 % faster). Layers
 * with few output channels keep the columns (a 1x1 one reads its input in place). On AVX2
 * (NR = 16) 1x1 layers never pad better enough: packing 6-row A panels of pixels and
 * transposing the tiles cost more than the few rows saved (MobileNetV2's 144 and 192 -> 32 on
 * 28x28, the layers that passed the test there: 0.17 -> 0.12 and 0.33 -> 0.22 ms as columns,
 * one thread, Zen 3); its implicit GEMMs keep the rule (docs/kernels.md). */
#define FC_IMPLICIT_ROWS_MIN_O 128

static int pads_better_as_rows(const fc_conv2d_params* p, int algorithm) {
  const fc_gemm_config* cfg = fc_gemm_config_get();
  const size_t og = p->out_channels / p->groups, vec = cfg->nr / 2;
  fc_phase_layout l;
  size_t ncols; /* as columns; as rows, the pixels alone (no dropped columns) */
  if (algorithm == FC_CONV_GEMM) ncols = p->out_h * p->out_w;
  else if (algorithm == FC_CONV_IMPLICIT) ncols = implicit_layout(p, &l);
  else return 0;
  if (og <= FC_IN_PLACE_MAX_PANELS * cfg->mr) return 0;
  if (algorithm == FC_CONV_GEMM && cfg->nr < 32) return 0;
  if (algorithm == FC_CONV_IMPLICIT && og < FC_IMPLICIT_ROWS_MIN_O) return 0;
  const size_t npix = p->out_h * p->out_w;
  const double cols_work = (double)fc_round_up(og, cfg->mr) * fc_round_up(ncols, vec);
  const double rows_work = (double)fc_round_up(npix, cfg->mr) * fc_round_up(og, vec);
  return rows_work * 1.1 < cols_work;
}

/* Whether a 1x1 layer runs transposed with its input read in place (conv_pixels_in_place): on
 * AVX-512, stride 1, more than 256 input channels per group, images that pad no better as rows
 * (those keep conv_pixel_rows: on a 7x7 image the A panels are neither cache-line aligned nor
 * compact, and packing them measured the same or up to 5 % faster). The tiles are transposed into
 * the output planes once per K block, which a deep K amortises: measured on one thread (CPU
 * time, caches flushed between calls), 480 to 1024 input channels on 14x14 and 28x28 3-6 %
 * faster than packing (ResNet-50's 1024 -> 512 on 14x14 2.01 -> 1.94 ms), 64 to 256 the same or
 * up to 15 % slower. Layers of up to 32 output channels keep B in place (480 -> 16 on 14x14 was
 * 10 % slower this way: one vector of weights per 8 broadcasts). */
static int reads_pixels_in_place(const fc_conv2d_params* p, int algorithm) {
  const fc_gemm_config* cfg = fc_gemm_config_get();
  return cfg->pixels && algorithm == FC_CONV_GEMM && !is_strided(p) &&
         p->in_channels / p->groups > 256 &&
         p->out_channels / p->groups > FC_IN_PLACE_MAX_PANELS * cfg->mr &&
         !pads_better_as_rows(p, algorithm);
}

/* Whether a layer runs transposed: where that pads better, or reading the input in place. */
static int runs_transposed(const fc_conv2d_params* p, int algorithm) {
  return pads_better_as_rows(p, algorithm) || reads_pixels_in_place(p, algorithm);
}

int fc_conv2d_packs_gemm_a(const fc_conv2d_params* p) {
  return !runs_transposed(p, FC_CONV_GEMM);
}

size_t fc_conv2d_packed_size(const fc_conv2d_params* p, int algorithm) {
  const size_t og = p->out_channels / p->groups;
  if (algorithm == FC_CONV_DIRECT) return p->out_channels * gemm_kdim(p);
  if (algorithm == FC_CONV_WINOGRAD || algorithm == FC_CONV_WINOGRAD4) {
    return fc_winograd_packed_size(p, winograd_tile(algorithm));
  }
  if (runs_transposed(p, algorithm)) return p->groups * fc_dense_packed_size(gemm_kdim(p), og);
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
  if (runs_transposed(p, algorithm)) {
    /* W_g^T as B panels: the layout of a dense layer's weights (out x in). */
    const size_t wpanel = fc_dense_packed_size(kdim, og);
    /* Both 1x1 paths run through fc_gemm_pixels where the ISA has the pixels kernel. */
    const int pixels = algorithm == FC_CONV_GEMM && fc_gemm_config_get()->pixels;
    for (size_t g = 0; g < p->groups; g++) {
      if (pixels) fc_pixels_pack_weights(kdim, og, w + g * og * kdim, packed + g * wpanel);
      else fc_dense_pack_weights(kdim, og, w + g * og * kdim, packed + g * wpanel);
    }
    return 0;
  }
  const size_t mr = fc_gemm_config_get()->mr, apanel = fc_packed_a_size(og, kdim, mr);
  for (size_t g = 0; g < p->groups; g++) {
    fc_pack_a(og, kdim, w + g * og * kdim, (ptrdiff_t)kdim, 1, mr, packed + g * apanel);
  }
  return 0;
}

/* Every stride-th pixel of one image's channels into contiguous out_h x out_w planes: a strided
 * 1x1 layer's B matrix, a copy of a quarter of its input at stride 2 (cheap next to the GEMM). */
typedef struct subsample_job {
  const fc_conv2d_params* p;
  const fc_vector_config* vk;
  const float* x;
  float* dst;
} subsample_job;

static void subsample_channel(void* ctx, size_t c) {
  const subsample_job* j = (const subsample_job*)ctx;
  const fc_conv2d_params* p = j->p;
  const size_t in_plane = p->in_h * p->in_w, npix = p->out_h * p->out_w;
  for (size_t oh = 0; oh < p->out_h; oh++) {
    j->vk->vcopy(p->out_w, j->x + c * in_plane + oh * p->stride_h * p->in_w, p->stride_w,
                 j->dst + c * npix + oh * p->out_w);
  }
}

static void subsample(const fc_conv2d_params* p, const float* x, float* dst, int threads) {
  subsample_job job = {p, fc_vector_config_get(), x, dst};
  fc_parallel_for(threads, p->in_channels, subsample_channel, &job);
}

/* Per image and group: Y_g (O/g x OH*OW) = act(W_g * B_g + bias [+ residual]). */
static int conv_gemm(const fc_conv2d_params* p, int algorithm, const float* packed,
                     const float* bias, const float* residual, const float* x, float* y) {
  const size_t groups = p->groups, og = p->out_channels / groups, cg = p->in_channels / groups;
  const size_t kdim = gemm_kdim(p), npix = p->out_h * p->out_w, in_plane = p->in_h * p->in_w;
  const size_t apanel = fc_packed_a_size(og, kdim, fc_gemm_config_get()->mr);
  const int threads = fc_threads_for(2.0 * og * kdim * npix);
  /* A strided 1x1 layer reads its B matrix from a subsampled copy of each image. */
  const int strided = algorithm == FC_CONV_GEMM && is_strided(p);
  const size_t b_plane = strided ? npix : in_plane;
  float* sub = NULL;
  if (strided) {
    sub = (float*)fc_workspace(FC_WS_LAYOUT, p->in_channels * npix * sizeof(float));
    if (!sub) return FC_ERROR_NOMEM;
  }
  /* A model plan may write the output over the input (the input being the fused residual); B
   * is then packed, each block before any tile of it is stored. */
  const uintptr_t x0 = (uintptr_t)x, y0 = (uintptr_t)y;
  const int aliased = !strided && x0 < y0 + p->batch * p->out_channels * npix * sizeof(float) &&
                      y0 < x0 + p->batch * p->in_channels * in_plane * sizeof(float);
  const int in_place = algorithm == FC_CONV_GEMM && !aliased && reads_image_in_place(og, npix);
  ptrdiff_t* offsets = NULL; /* B row k is input channel k */
  if (in_place) {
    offsets = (ptrdiff_t*)fc_workspace(FC_WS_TABLE, kdim * sizeof(ptrdiff_t));
    if (!offsets) return FC_ERROR_NOMEM;
    for (size_t k = 0; k < kdim; k++) offsets[k] = (ptrdiff_t)(k * b_plane);
  }
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n++) {
    const float* xn = x + n * p->in_channels * in_plane;
    if (strided) {
      subsample(p, xn, sub, threads);
      xn = sub;
    }
    for (size_t g = 0; g < groups && rc == 0; g++) {
      const size_t out_offset = (n * p->out_channels + g * og) * npix;
      const float* xg = xn + g * cg * b_plane;
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
        operand = fc_matrix_operand(&matrix);
      }
      rc = fc_gemm_packed(og, npix, kdim, packed + g * apanel, &operand, bg, NULL,
                          residual != NULL, p->activation, y + out_offset, npix, threads);
    }
  }
  return rc;
}

/* Y_g^T (pixels x O/g) in yt, pixel (oh, ow) at row oh * cols + ow, into the NCHW planes at y,
 * adding the residual (then the activation) if there is one; without it the GEMM already applied
 * the activation. The residual may be y itself: each element is read before it is written. */
typedef struct transposed_job {
  const fc_conv2d_params* p;
  size_t og, cols;
  const float* yt;
  const float* residual;
  float* y;
} transposed_job;

/* 16 channels at a time: each pixel's 16 values are one cache line of yt, and the 16 output
 * rows are written in order (reading yt column by column thrashed L1 when og * 4 bytes is a
 * multiple of 4 KiB). */
static void store_channels16(void* ctx, size_t block) {
  const transposed_job* j = (const transposed_job*)ctx;
  const fc_conv2d_params* p = j->p;
  const size_t npix = p->out_h * p->out_w, o0 = block * 16, o1 = fc_min(j->og, o0 + 16);
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  for (size_t i = 0; i < npix; i++) {
    const float* src = j->yt + (i / p->out_w * j->cols + i % p->out_w) * j->og;
    for (size_t o = o0; o < o1; o++) {
      float v = src[o];
      if (j->residual) {
        v += j->residual[o * npix + i];
        if (v < lo) v = lo; /* comparisons keep NaN */
        if (v > hi) v = hi;
      }
      j->y[o * npix + i] = v;
    }
  }
  for (size_t o = o0; o < o1 && j->residual; o++) {
    fc_activation_row(npix, p->activation, j->y + o * npix);
  }
}

static void store_transposed(const fc_conv2d_params* p, size_t og, const float* yt, size_t cols,
                             const float* residual, float* y, int threads) {
  transposed_job job = {p, og, cols, yt, residual, y};
  fc_parallel_for(threads, (og + 15) / 16, store_channels16, &job);
}

/* Images per transposed GEMM: the pixels of several images are its rows (no padding of each
 * image's rows to MR, and each B panel of weights is read once for all of them), up to this
 * many rows, and up to 1 MiB of results to transpose (batch 8, one thread: 512 -> 2048 on 7x7
 * measured 9.8 ms one image per GEMM, 9.8 with 10, 9.3 with 2). */
#define FC_PIXEL_ROWS_MAX 512
#define FC_PIXEL_ROWS_OUTPUT (1u << 18) /* floats */

/* A of an implicit GEMM transposed is gathered from the phase planes, up to 9x the input (K = 9C
 * for 3x3): packed whole it outgrew L2 (1.8 MB for ResNet-50's layer3.0.conv2), and writing it
 * cost 10 % of the layer. It is packed and multiplied instead a chunk of K at a time, each chunk
 * (whole K blocks) at most this many bytes of A, so that it stays in L2 for its GEMM. */
#define FC_ROWS_CHUNK_BYTES (512u << 10)

/* The buffers of a transposed GEMM over the pixels of `images` images at a time. */
typedef struct rows_work {
  size_t images;      /* per GEMM */
  size_t image_rows;  /* GEMM rows per image */
  size_t chunk;       /* columns of A (K) packed at a time */
  ptrdiff_t* rows;    /* A[m][k] = source[rows[m] + cols[k]] */
  ptrdiff_t* cols;
  float* xt;          /* A, packed, `chunk` columns of it */
  float* yt;          /* images * image_rows x og */
} rows_work;

/* With `chunked`, A is packed a chunk of K at a time (FC_ROWS_CHUNK_BYTES), else whole. */
static int rows_work_init(const fc_conv2d_params* p, size_t image_rows, size_t kdim, int chunked,
                          rows_work* w) {
  const size_t og = p->out_channels / p->groups, mr = fc_gemm_config_get()->mr;
  w->image_rows = image_rows;
  const size_t max_rows = fc_min(FC_PIXEL_ROWS_MAX, FC_PIXEL_ROWS_OUTPUT / og);
  w->images = fc_min(p->batch, image_rows < max_rows ? max_rows / image_rows : 1);
  const size_t m = w->images * image_rows;
  const size_t blocks = FC_ROWS_CHUNK_BYTES / (fc_round_up(m, mr) * FC_KC * sizeof(float));
  w->chunk = chunked ? fc_min(kdim, FC_KC * (blocks ? blocks : 1)) : kdim;
  w->rows = (ptrdiff_t*)fc_workspace(FC_WS_TABLE, (m + kdim) * sizeof(ptrdiff_t));
  w->xt = (float*)fc_workspace(FC_WS_INPUT, fc_packed_a_size(m, w->chunk, mr) * sizeof(float));
  w->yt = (float*)fc_workspace(FC_WS_OUTPUT, m * og * sizeof(float));
  if (!w->rows || !w->xt || !w->yt) return FC_ERROR_NOMEM;
  w->cols = w->rows + m;
  return 0;
}

/* Images n0 .. n0 + count - 1, group g, whose pixels are the rows of A, gathered from `base`
 * through w's tables (pixel (oh, ow) at row oh * out_w + ow of its image's rows): the GEMM with
 * the weights packed as B panels, chunk by chunk of K (each chunk adds to the sums of the
 * previous ones; the bias and activation come with the last, so every output sums in the same
 * order as in one GEMM), then the transposed stores. */
static int rows_gemm_store(const fc_conv2d_params* p, const rows_work* w, size_t kdim,
                           const float* base, size_t n0, size_t count, size_t g,
                           const float* packed, const float* bias, const float* residual,
                           float* y) {
  const size_t og = p->out_channels / p->groups, npix = p->out_h * p->out_w;
  const size_t m = count * w->image_rows, mr = fc_gemm_config_get()->mr;
  const size_t npad = fc_round_up(og, fc_gemm_config_get()->nr);
  const float* weights = packed + g * fc_dense_packed_size(kdim, og);
  const int threads = fc_threads_for(2.0 * og * kdim * m);
  int rc = 0;
  for (size_t k0 = 0; k0 < kdim && rc == 0; k0 += w->chunk) {
    const size_t kc = fc_min(w->chunk, kdim - k0);
    const int last = k0 + kc == kdim;
    fc_pack_a_rows(m, kc, base, w->rows, w->cols + k0, mr, w->xt);
    const fc_b_operand operand = {NULL, NULL, weights + k0 * npad, NULL, NULL};
    rc = fc_gemm_packed(m, og, kc, w->xt, &operand, NULL, last && bias ? bias + g * og : NULL,
                        k0 > 0, last && !residual ? p->activation : FC_ACT_NONE, w->yt, og,
                        threads);
  }
  for (size_t i = 0; i < count && rc == 0; i++) {
    const size_t out_offset = ((n0 + i) * p->out_channels + g * og) * npix;
    store_transposed(p, og, w->yt + i * w->image_rows * og, p->out_w,
                     residual ? residual + out_offset : NULL, y + out_offset, threads);
  }
  return rc;
}

/* Image n, group g, alone in xt (its pixels packed by fc_pixels_pack_rows: a 7x7 image as 7
 * panels of 7), through the pixels kernel: the tiles are stored transposed straight into the
 * output planes, with no result buffer and no transposing pass (which took 9 % of ResNet-50's
 * 512 -> 2048 on 7x7 with its residual). A residual is copied into the output first and
 * accumulated, as on the columns path. */
static int rows_pixels_store(const fc_conv2d_params* p, const rows_work* w, size_t kdim, size_t n,
                             size_t g, const float* packed, const float* bias,
                             const float* residual, float* y) {
  const size_t og = p->out_channels / p->groups, npix = p->out_h * p->out_w;
  const size_t out_offset = (n * p->out_channels + g * og) * npix;
  if (residual && residual != y) {
    memcpy(y + out_offset, residual + out_offset, og * npix * sizeof(float));
  }
  return fc_gemm_pixels(npix, og, kdim, w->xt, 0, packed + g * fc_dense_packed_size(kdim, og),
                        bias ? bias + g * og : NULL, residual != NULL, p->activation,
                        y + out_offset, npix, fc_threads_for(2.0 * og * kdim * npix));
}

/* A 1x1 layer on a small image, transposed: Y_g^T (pixels x O/g) = X_g^T (pixels x C/g) * W_g^T.
 * The pixels are the GEMM rows (a 7x7 image is 49 rows of work, 7 tiles of 7, instead of 64
 * columns; without the pixels kernel 56 rows, and at batch > 1 the pixels of several images
 * together), the weights were packed once as B panels, X^T is gathered per call (at the layer's
 * stride) straight from the input; the result is transposed into place. */
static int conv_pixel_rows(const fc_conv2d_params* p, const float* packed, const float* bias,
                           const float* residual, const float* x, float* y) {
  const size_t cg = p->in_channels / p->groups, npix = p->out_h * p->out_w;
  const size_t in_plane = p->in_h * p->in_w;
  /* With the pixels kernel each image runs alone, storing straight into its output planes. */
  const int pixels = fc_gemm_config_get()->pixels != NULL;
  fc_conv2d_params one = *p;
  one.batch = 1;
  rows_work w;
  if (rows_work_init(pixels ? &one : p, npix, cg, 0, &w) != 0) return FC_ERROR_NOMEM;
  for (size_t i = 0, r = 0; i < w.images; i++) {
    for (size_t oh = 0; oh < p->out_h; oh++) {
      for (size_t ow = 0; ow < p->out_w; ow++) {
        w.rows[r++] = (ptrdiff_t)(i * p->in_channels * in_plane + oh * p->stride_h * p->in_w +
                                  ow * p->stride_w);
      }
    }
  }
  for (size_t c = 0; c < cg; c++) w.cols[c] = (ptrdiff_t)(c * in_plane);
  int rc = 0;
  for (size_t n0 = 0; n0 < p->batch && rc == 0; n0 += w.images) {
    const size_t count = fc_min(w.images, p->batch - n0);
    for (size_t g = 0; g < p->groups && rc == 0; g++) {
      const float* base = x + (n0 * p->in_channels + g * cg) * in_plane;
      if (pixels) {
        fc_pixels_pack_rows(npix, cg, base, w.rows, w.cols, w.xt);
        rc = rows_pixels_store(p, &w, cg, n0, g, packed, bias, residual, y);
      } else {
        rc = rows_gemm_store(p, &w, cg, base, n0, count, g, packed, bias, residual, y);
      }
    }
  }
  return rc;
}

/* Whether the output overlaps the input (a model plan writing over its input, the input being
 * the fused residual). */
static int overwrites_input(const fc_conv2d_params* p, const float* x, const float* y) {
  const uintptr_t x0 = (uintptr_t)x, y0 = (uintptr_t)y;
  const size_t out = p->batch * p->out_channels * p->out_h * p->out_w * sizeof(float);
  const size_t in = p->batch * p->in_channels * p->in_h * p->in_w * sizeof(float);
  return x0 < y0 + out && y0 < x0 + in;
}

/* A 1x1 stride-1 layer transposed with its input read in place (fc_gemm_pixels): per image and
 * group Y_g^T = X_g^T * W_g^T, where 8 pixels of an input channel are 8 contiguous floats, so X
 * needs no packing; the weights were packed once as B panels and the kernel stores its tiles
 * transposed straight into the output planes. A residual is copied into the output first and
 * accumulated. An output written over the input would be read back as input: the input is then
 * copied first. */
static int conv_pixels_in_place(const fc_conv2d_params* p, const float* packed,
                                const float* bias, const float* residual, const float* x,
                                float* y) {
  const size_t og = p->out_channels / p->groups, cg = p->in_channels / p->groups;
  const size_t npix = p->out_h * p->out_w, wpanel = fc_dense_packed_size(cg, og);
  const int threads = fc_threads_for(2.0 * og * cg * npix);
  if (overwrites_input(p, x, y)) {
    const size_t size = p->batch * p->in_channels * npix * sizeof(float);
    float* copy = (float*)fc_workspace(FC_WS_LAYOUT, size);
    if (!copy) return FC_ERROR_NOMEM;
    memcpy(copy, x, size);
    x = copy;
  }
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n++) {
    for (size_t g = 0; g < p->groups && rc == 0; g++) {
      const size_t out_offset = (n * p->out_channels + g * og) * npix;
      if (residual && residual != y) {
        memcpy(y + out_offset, residual + out_offset, og * npix * sizeof(float));
      }
      rc = fc_gemm_pixels(npix, og, cg, x + (n * p->in_channels + g * cg) * npix, npix,
                          packed + g * wpanel, bias ? bias + g * og : NULL, residual != NULL,
                          p->activation, y + out_offset, npix, threads);
    }
  }
  return rc;
}

/* Input channels of consecutive images laid out as phase planes: item i is channel i % cg of
 * image i / cg, read from x (the group's first channel in the first image), written at
 * planes + i * chan. */
typedef struct fill_job {
  const fc_phase_layout* layout;
  const float* x;
  size_t cg, image, in_plane; /* channels per image; floats per image and per channel */
  float* planes;
  size_t chan;
} fill_job;

static void fill_channel(void* ctx, size_t i) {
  const fill_job* j = (const fill_job*)ctx;
  fc_phase_fill(j->layout, j->x + i / j->cg * j->image + i % j->cg * j->in_plane, 0.0f,
                j->planes + i * j->chan);
}

/* The implicit GEMM transposed (pads_better_as_rows): the GEMM rows are the output pixels of
 * several images (no dropped run columns), gathered from their phase planes into packed A
 * panels a chunk of K at a time; the weights were packed once as B panels. */
static int conv_implicit_rows(const fc_conv2d_params* p, const float* packed, const float* bias,
                              const float* residual, const float* x, float* y) {
  const size_t og = p->out_channels / p->groups, cg = p->in_channels / p->groups;
  const size_t kdim = gemm_kdim(p), in_plane = p->in_h * p->in_w, taps = p->kernel_h * p->kernel_w;
  fc_phase_layout l;
  implicit_layout(p, &l);
  const size_t image_rows = p->out_h * p->out_w, chan = fc_phase_planes_size(&l);
  rows_work w;
  if (rows_work_init(p, image_rows, kdim, 1, &w) != 0) return FC_ERROR_NOMEM;
  float* planes = (float*)fc_workspace(FC_WS_LAYOUT, w.images * cg * chan * sizeof(float));
  if (!planes) return FC_ERROR_NOMEM;
  for (size_t i = 0, r = 0; i < w.images; i++) {
    for (size_t oh = 0; oh < p->out_h; oh++) {
      for (size_t ow = 0; ow < p->out_w; ow++) {
        w.rows[r++] = (ptrdiff_t)(i * cg * chan + oh * l.cols + ow);
      }
    }
  }
  implicit_offsets(&l, cg, taps, chan, w.cols);
  int rc = 0;
  for (size_t n0 = 0; n0 < p->batch && rc == 0; n0 += w.images) {
    const size_t count = fc_min(w.images, p->batch - n0);
    const int threads = fc_threads_for(2.0 * og * kdim * count * image_rows);
    for (size_t g = 0; g < p->groups && rc == 0; g++) {
      fill_job fill = {&l, x + (n0 * p->in_channels + g * cg) * in_plane, cg,
                       p->in_channels * in_plane, in_plane, planes, chan};
      fc_parallel_for(threads, count * cg, fill_channel, &fill);
      rc = rows_gemm_store(p, &w, kdim, planes, n0, count, g, packed, bias, residual, y);
    }
  }
  return rc;
}

/* Implicit GEMM: per image and group, every input channel is laid out once as phase planes
 * (src/ops/window.c), and B's row k = (c, kh, kw) is channel c's planes at tap (kh, kw)'s
 * offset, column n output position n of the flat run (oh * cols + ow). The cost is the layout
 * copy and cols - out_w wasted columns per output row, then a copy of the valid columns into y
 * (which is where a residual is added); wide outputs skip that copy, their tiles cut at each
 * output row and stored in place (implicit_rows). On AVX2 the flat run's B is packed per
 * block as a matrix of offset rows: read in place, a panel's 64-byte rows straddle two cache
 * lines at any offset, 32 KiB of lines for 256 rows, all of L1; packed it is 16 KiB. Measured
 * against in place (ab_builds, caches flushed, Zen 3): ResNet-50's 3x3 stride-2 layers x0.90 /
 * 0.96 / 0.94 on one thread, x0.86-0.89 / 1.00-1.08 / 0.93-1.03 on two; the network x0.98 on one
 * thread. AVX-512 reads in place, as measured there (packing is not measured on AVX-512 yet). */
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
  implicit_offsets(&w->layout, cg, taps, w->chan, w->offsets);
  return 0;
}

/* The valid columns of the run matrix into the og output planes at y, adding the residual (and
 * then the activation) if there is one. */
typedef struct implicit_store_job {
  const fc_conv2d_params* p;
  const fc_vector_config* vk;
  const implicit_work* w;
  const float* residual;
  float* y;
} implicit_store_job;

static void implicit_store_channel(void* ctx, size_t o) {
  const implicit_store_job* j = (const implicit_store_job*)ctx;
  const fc_conv2d_params* p = j->p;
  const size_t out_plane = p->out_h * p->out_w;
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  for (size_t oh = 0; oh < p->out_h; oh++) {
    const float* src = j->w->run + o * j->w->ldc + oh * j->w->layout.cols;
    float* dst = j->y + o * out_plane + oh * p->out_w;
    if (!j->residual) {
      memcpy(dst, src, p->out_w * sizeof(float));
      continue;
    }
    j->vk->vadd(p->out_w, src, j->residual + o * out_plane + oh * p->out_w, dst, lo, hi);
    fc_activation_row(p->out_w, p->activation, dst);
  }
}

static void implicit_store(const fc_conv2d_params* p, const implicit_work* w, size_t og,
                           const float* residual, float* y, int threads) {
  implicit_store_job job = {p, fc_vector_config_get(), w, residual, y};
  fc_parallel_for(threads, og, implicit_store_channel, &job);
}

/* Whether the implicit GEMM stores straight into the output planes, its columns cut into rows
 * of out_w (no tile crosses an output row), instead of computing the flat run of `cols`-wide
 * rows and copying the valid columns out. Measured on one thread (AVX-512 and AVX2): faster on
 * wide images (MobileNetV2's stem 5-10 %, GoogLeNet's 7x7 stem 3-17 %, VGG's 224-wide layers 5
 * and 29 %), 4-15 % slower on 56-wide and narrower ones, where the rows' edge tiles waste more
 * than the copy costs. Taken only when the rows need no more vectors than the run (edge tiles
 * cost whole vectors of NR / 2 columns), and then from 64 columns on, or on narrower images when
 * the rows need no more tiles either and K is small, so that the copy is a sizable part of the
 * work: LeNet-5's conv1 (K = 25, 28-wide output: 28 tiles of 28 columns instead of 28 of 32)
 * measured 35 -> 31 us at batch 8 on one thread, GoogLeNet's 5x5 layers on 28x28 (K = 400-800,
 * the same tile counts) 2-4 % slower in rows. The K limit between is not measured finely. */
#define FC_IMPLICIT_ROWS_MIN_W 64
#define FC_IMPLICIT_ROWS_NARROW_MAX_K 64

static int implicit_rows(const fc_conv2d_params* p, size_t run_cols) {
  const size_t nr = fc_gemm_config_get()->nr, vec = nr / 2;
  if (p->out_h * (fc_round_up(p->out_w, vec) / vec) > fc_round_up(run_cols, vec) / vec) return 0;
  if (p->out_w >= FC_IMPLICIT_ROWS_MIN_W) return 1;
  return gemm_kdim(p) < FC_IMPLICIT_ROWS_NARROW_MAX_K &&
         p->out_h * (fc_round_up(p->out_w, nr) / nr) <= fc_round_up(run_cols, nr) / nr;
}

static int conv_implicit(const fc_conv2d_params* p, const float* packed, const float* bias,
                         const float* residual, const float* x, float* y) {
  const size_t groups = p->groups, og = p->out_channels / groups, cg = p->in_channels / groups;
  const size_t kdim = gemm_kdim(p), in_plane = p->in_h * p->in_w, out_plane = p->out_h * p->out_w;
  const size_t apanel = fc_packed_a_size(og, kdim, fc_gemm_config_get()->mr);
  implicit_work w;
  const size_t n_cols = implicit_layout(p, &w.layout); /* the last row needs only out_w */
  const int rows = implicit_rows(p, n_cols);
  if (implicit_work_init(p, rows, &w) != 0) return FC_ERROR_NOMEM;
  const int threads = fc_threads_for(2.0 * og * kdim * n_cols);
  const fc_matrix_src offset_rows = {w.planes, 0, w.offsets};
  fc_b_operand operand = {NULL, NULL, NULL, w.planes, w.offsets};
  if (!rows && fc_gemm_config_get()->nr < 32) operand = fc_matrix_operand(&offset_rows);
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
      fill_job fill = {&w.layout, xg, cg, 0, in_plane, w.planes, w.chan};
      fc_parallel_for(threads, cg, fill_channel, &fill);
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

/* A stem (stem_in_bands: an image of a few channels) runs its implicit GEMM in bands of output
 * rows, each laid out, multiplied and stored on its own, so that each thread lays out, multiplies
 * and stores its own contiguous share of the output in one parallel region; the whole-image path
 * ran three (the layout splitting 3 channels 2 : 1 over two threads, the GEMM, the copy).
 * Measured on two threads, the layer alone, wall clock, medians: 1-3 % faster on a quiet machine
 * (AlexNet's 11x11 stem 0.81 -> 0.78 ms, MobileNetV2's 0.151 -> 0.131-0.134), much less slowed
 * by a loaded one (one barrier where a preempted thread holds the other up, not two or three:
 * AlexNet 1.00 -> 0.89, MobileNetV2 0.34 -> 0.19); on one thread the same speed (CPU time).
 * A band reads its input rows alone (the rows its taps share with the next band are laid out
 * twice), as a layer of out_h = its rows whose top padding is what falls above it. In rows mode
 * (implicit_rows) the bands are about FC_STEM_BAND_PIXELS output pixels of whole rows; in run
 * mode FC_STEM_BAND_PANELS NR-column panels of the run, whose output rows (cut at either end) are
 * laid out together (512 / 8 and 4096 / 64 measured the same on one thread). Every output sums
 * its products as in one GEMM over the image (the same tiles, K blocked the same), so results
 * depend neither on the bands nor on the team. */
#define FC_STEM_MAX_C 4
#define FC_STEM_BAND_PIXELS 1024
#define FC_STEM_BAND_PANELS 16

/* Groups of one, at most FC_STEM_MAX_C input channels, no output over the input (a band's
 * stores would overwrite the rows another band still lays out), and every output row's first
 * tap row inside the input or the top padding (so a band's layout starts at a row of x). */
static int stem_in_bands(const fc_conv2d_params* p, const float* x, const float* y) {
  return p->groups == 1 && p->in_channels <= FC_STEM_MAX_C && !overwrites_input(p, x, y) &&
         (p->out_h - 1) * p->stride_h < p->pad_top + p->in_h;
}

typedef struct band_job {
  const fc_conv2d_params* p;
  const float *packed, *bias, *residual, *x;
  float* y;
  size_t cols;   /* of the whole image's phase planes */
  size_t n_cols; /* of the whole image's run */
  int rows;      /* implicit_rows */
  int rc;
  fc_steal_queue queues[FC_MAX_TEAM]; /* each member's last quarter of bands */
} band_job;

/* Output rows [oh0, oh1) of image n laid out alone as phase planes in this thread's workspace,
 * with their row offsets: l, planes and offsets are set. */
static int band_fill(const band_job* j, size_t n, size_t oh0, size_t oh1, fc_phase_layout* l,
                     float** planes, ptrdiff_t** offsets) {
  const fc_conv2d_params* p = j->p;
  const size_t cg = p->in_channels, taps = p->kernel_h * p->kernel_w;
  const ptrdiff_t top = (ptrdiff_t)(oh0 * p->stride_h) - (ptrdiff_t)p->pad_top;
  const size_t start = top > 0 ? (size_t)top : 0; /* the band's first input row */
  fc_phase_layout_init(l, p->in_h - start, p->in_w, oh1 - oh0, p->out_w, p->kernel_h,
                       p->kernel_w, p->stride_h, p->stride_w, p->dilation_h, p->dilation_w,
                       (size_t)((ptrdiff_t)start - top), p->pad_left);
  const size_t chan = fc_phase_planes_size(l);
  *planes = (float*)fc_workspace(FC_WS_INPUT, cg * chan * sizeof(float));
  *offsets = (ptrdiff_t*)fc_workspace(FC_WS_TABLE, cg * taps * sizeof(ptrdiff_t));
  if (!*planes || !*offsets) return FC_ERROR_NOMEM;
  implicit_offsets(l, cg, taps, chan, *offsets);
  const size_t in_plane = p->in_h * p->in_w;
  for (size_t c = 0; c < cg; c++) {
    fc_phase_fill(l, j->x + (n * cg + c) * in_plane + start * p->in_w, 0.0f,
                  *planes + c * chan);
  }
  return 0;
}

/* Output rows [oh0, oh1) of image n into c, channel o's rows from c + o * ldc (accumulated
 * with `accumulate`). */
static int band_rows_into(const band_job* j, size_t n, size_t oh0, size_t oh1, int accumulate,
                          float* c, size_t ldc) {
  const fc_conv2d_params* p = j->p;
  fc_phase_layout l;
  float* planes;
  ptrdiff_t* offsets;
  if (band_fill(j, n, oh0, oh1, &l, &planes, &offsets) != 0) return FC_ERROR_NOMEM;
  const fc_b_operand operand = {NULL, NULL, NULL, planes, offsets, p->out_w, l.cols, p->out_w};
  return fc_gemm_packed(p->out_channels, (oh1 - oh0) * p->out_w, gemm_kdim(p), j->packed,
                        &operand, j->bias, NULL, accumulate, p->activation, c, ldc, 1);
}

/* Rows mode: output rows [oh0, oh1) of image n, stored straight into y (a residual copied in
 * first and accumulated). */
static int band_rows(const band_job* j, size_t n, size_t oh0, size_t oh1) {
  const fc_conv2d_params* p = j->p;
  const size_t out_plane = p->out_h * p->out_w, npix = (oh1 - oh0) * p->out_w;
  const size_t first = n * p->out_channels * out_plane + oh0 * p->out_w;
  for (size_t o = 0; o < p->out_channels && j->residual && j->residual != j->y; o++) {
    memcpy(j->y + first + o * out_plane, j->residual + first + o * out_plane,
           npix * sizeof(float));
  }
  return band_rows_into(j, n, oh0, oh1, j->residual != NULL, j->y + first, out_plane);
}

int fc_conv2d_stem_rows_applies(const fc_conv2d_params* p) {
  fc_phase_layout whole;
  return p->groups == 1 && p->in_channels <= FC_STEM_MAX_C &&
         (p->out_h - 1) * p->stride_h < p->pad_top + p->in_h &&
         implicit_rows(p, implicit_layout(p, &whole));
}

int fc_conv2d_stem_rows(const fc_conv2d_params* p, const float* packed, const float* bias,
                        const float* x, size_t oh0, size_t oh1, float* y, size_t y_plane) {
  const band_job job = {p, packed, bias, NULL, x, NULL, 0, 0, 1, 0, {{0}}};
  return band_rows_into(&job, 0, oh0, oh1, 0, y, y_plane);
}

/* Run mode: columns [c0, c1) of image n's run, computed into this thread's run buffer, then
 * their valid columns stored into y, adding the residual (then the activation) if there is one. */
static int band_run(const band_job* j, size_t n, size_t c0, size_t c1) {
  const fc_conv2d_params* p = j->p;
  const size_t og = p->out_channels, out_plane = p->out_h * p->out_w;
  const size_t ldc = fc_round_up(c1 - c0, 16);
  const size_t oh0 = c0 / j->cols, oh1 = (c1 - 1) / j->cols + 1;
  fc_phase_layout l;
  float* planes;
  ptrdiff_t* offsets;
  float* run = (float*)fc_workspace(FC_WS_OUTPUT, og * ldc * sizeof(float));
  if (!run || band_fill(j, n, oh0, oh1, &l, &planes, &offsets) != 0) return FC_ERROR_NOMEM;
  const fc_b_operand operand = {NULL, NULL, NULL, planes + (c0 - oh0 * j->cols), offsets};
  const int rc = fc_gemm_packed(og, c1 - c0, gemm_kdim(p), j->packed, &operand, j->bias, NULL, 0,
                                j->residual ? FC_ACT_NONE : p->activation, run, ldc, 1);
  if (rc != 0) return rc;
  const fc_vector_config* vk = fc_vector_config_get();
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  for (size_t o = 0; o < og; o++) {
    const size_t plane = (n * og + o) * out_plane;
    for (size_t oh = oh0; oh < oh1; oh++) { /* the row's valid columns inside [c0, c1) */
      const size_t row = oh * j->cols, b = c0 > row ? c0 : row, e = fc_min(c1, row + p->out_w);
      if (b >= e) continue;
      const float* src = run + o * ldc + (b - c0);
      float* dst = j->y + plane + oh * p->out_w + (b - row);
      if (!j->residual) {
        memcpy(dst, src, (e - b) * sizeof(float));
        continue;
      }
      vk->vadd(e - b, src, j->residual + (dst - j->y), dst, lo, hi);
      fc_activation_row(e - b, p->activation, dst);
    }
  }
  return 0;
}

/* Member `id` of `count`: its contiguous share of every image's units (output rows in rows
 * mode, else run panels) cut into bands of equal size, `bands` per image, and item i = (image,
 * band) of them, image-major. */
typedef struct band_share_of {
  size_t u0, u1, bands, items;
} band_share_of;

static band_share_of share_of(const band_job* j, size_t id, size_t count) {
  const fc_conv2d_params* p = j->p;
  const size_t nr = fc_gemm_config_get()->nr;
  const size_t units = j->rows ? p->out_h : (j->n_cols + nr - 1) / nr;
  const size_t band_rows_n = FC_STEM_BAND_PIXELS / p->out_w;
  const size_t step = !j->rows ? FC_STEM_BAND_PANELS : band_rows_n ? band_rows_n : 1;
  band_share_of s;
  fc_share(units, id, count, &s.u0, &s.u1);
  s.bands = (s.u1 - s.u0 + step - 1) / step; /* of equal size: no short last band */
  s.items = p->batch * s.bands;
  return s;
}

static int band_item(const band_job* j, const band_share_of* s, size_t item) {
  const size_t n = item / s->bands, b = item % s->bands, nr = fc_gemm_config_get()->nr;
  size_t u, v;
  fc_share(s->u1 - s->u0, b, s->bands, &u, &v);
  u += s->u0, v += s->u0;
  return j->rows ? band_rows(j, n, u, v) : band_run(j, n, u * nr, fc_min(v * nr, j->n_cols));
}

/* One thread's share of every image, band by band; the last quarter of its bands is a queue the
 * other threads steal from once their own are done (fc_steal_queue). */
static void band_share(void* ctx, size_t id, size_t count) {
  band_job* j = (band_job*)ctx;
  const band_share_of mine = share_of(j, id, count);
  const int steals = count > 1 && count <= FC_MAX_TEAM;
  const size_t tail = steals ? mine.items / 4 : 0, own = mine.items - tail;
  if (steals) fc_steal_open(&j->queues[id], tail);
  int rc = 0;
  for (size_t i = 0; i < own && rc == 0; i++) rc = band_item(j, &mine, i);
  ptrdiff_t u;
  while (steals && rc == 0 && (u = fc_steal_take(&j->queues[id], 0)) >= 0) {
    rc = band_item(j, &mine, own + (size_t)u);
  }
  for (size_t other = 1; steals && other < count && rc == 0; other++) {
    const size_t victim = (id + other) % count;
    const band_share_of theirs = share_of(j, victim, count);
    while (rc == 0 && (u = fc_steal_take(&j->queues[victim], 1)) >= 0) {
      rc = band_item(j, &theirs, theirs.items - theirs.items / 4 + (size_t)u);
    }
  }
  if (rc != 0) {
#pragma omp atomic write
    j->rc = rc;
  }
}

static int conv_implicit_bands(const fc_conv2d_params* p, const float* packed, const float* bias,
                               const float* residual, const float* x, float* y) {
  fc_phase_layout whole;
  const size_t n_cols = implicit_layout(p, &whole);
  band_job job = {p, packed, bias, residual, x, y, whole.cols, n_cols, implicit_rows(p, n_cols), 0,
                  {{0}}};
  fc_run_team(fc_threads_for(2.0 * p->out_channels * gemm_kdim(p) * n_cols), band_share, &job);
  return job.rc;
}

/* Direct convolution, one output plane per task: the plane starts at its bias, each input
 * channel of its group is laid out as phase planes (src/ops/window.c) and accumulated over the
 * whole plane in one wmacc run, then the run's valid columns get the residual and activation.
 * Re-laying out an input channel for every output channel of its group costs 1/taps of the
 * arithmetic; it buys one task per output plane, so threads split channels even at batch 1. */
typedef struct direct_scratch {
  float* planes;
  float* run;
  const float* filled; /* the input channel the planes hold, if any */
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
    /* Consecutive output channels of a one-channel group read the same planes: fill once. */
    const float* channel = x + (n * p->in_channels + g * cg + c) * in_plane;
    if (channel != s->filled) fc_phase_fill(l, channel, 0.0f, s->planes);
    s->filled = cg == 1 ? channel : NULL;
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

const char* fc_conv2d_direct_kernel(const fc_conv2d_params* p, int residual_is_output) {
  return fc_dwconv3x3_applies(p) && !residual_is_output ? fc_dwconv3x3_kernel(p) : "wmacc";
}

typedef struct direct_job {
  const fc_conv2d_params* p;
  const fc_phase_layout* layout;
  const ptrdiff_t* offsets;
  const float *x, *w, *bias, *residual;
  float* y;
  int rc;
} direct_job;

/* One thread's share of the output planes, with its own buffers (workspaces are per thread). */
static void direct_share(void* ctx, size_t id, size_t count) {
  direct_job* j = (direct_job*)ctx;
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t planes_bytes = fc_phase_planes_size(j->layout) * sizeof(float);
  direct_scratch s = {(float*)fc_workspace(FC_WS_INPUT, planes_bytes),
                      (float*)fc_workspace(FC_WS_OUTPUT, fc_run_size(j->layout) * sizeof(float)),
                      NULL};
  if (!s.planes || !s.run) {
#pragma omp atomic write
    j->rc = FC_ERROR_NOMEM;
    return;
  }
  size_t begin, end;
  fc_share(j->p->batch * j->p->out_channels, id, count, &begin, &end);
  const unsigned fp_mode = fc_fp_enter();
  for (size_t plane = begin; plane < end; plane++) {
    direct_plane(j->p, vk, j->layout, j->offsets, j->x, j->w, j->bias, j->residual, j->y, plane,
                 &s);
  }
  fc_fp_exit(fp_mode);
}

static int conv_direct(const fc_conv2d_params* p, const float* w, const float* bias,
                       const float* residual, const float* x, float* y) {
  /* The depthwise path writes y as it goes, so a residual that is y itself takes the general
   * path, which adds it from a copy. */
  if (fc_dwconv3x3_applies(p) && residual != y) return fc_dwconv3x3_run(p, w, bias, residual, x, y);
  const size_t taps = p->kernel_h * p->kernel_w, planes = p->batch * p->out_channels;
  fc_phase_layout l;
  fc_phase_layout_init(&l, p->in_h, p->in_w, p->out_h, p->out_w, p->kernel_h, p->kernel_w,
                       p->stride_h, p->stride_w, p->dilation_h, p->dilation_w, p->pad_top,
                       p->pad_left);
  ptrdiff_t* offsets = (ptrdiff_t*)fc_workspace(FC_WS_TABLE, taps * sizeof(ptrdiff_t));
  if (!offsets) return FC_ERROR_NOMEM;
  fc_phase_offsets(&l, offsets);
  const double flops = 2.0 * planes * p->out_h * p->out_w * (p->in_channels / p->groups) * taps;
  direct_job job = {p, &l, offsets, x, w, bias, residual, y, 0};
  fc_run_team(fc_threads_for(flops), direct_share, &job);
  return job.rc;
}

static int run_algorithm(const fc_conv2d_params* p, int algorithm, const float* packed,
                         const float* bias, const float* residual, const float* x, float* y) {
  if (algorithm == FC_CONV_DIRECT) return conv_direct(p, packed, bias, residual, x, y);
  if (algorithm == FC_CONV_WINOGRAD || algorithm == FC_CONV_WINOGRAD4) {
    return fc_winograd_run(p, winograd_tile(algorithm), packed, bias, residual, x, y);
  }
  if (runs_transposed(p, algorithm)) {
    if (algorithm == FC_CONV_IMPLICIT) return conv_implicit_rows(p, packed, bias, residual, x, y);
    if (reads_pixels_in_place(p, algorithm)) {
      return conv_pixels_in_place(p, packed, bias, residual, x, y);
    }
    return conv_pixel_rows(p, packed, bias, residual, x, y);
  }
  if (algorithm == FC_CONV_IMPLICIT && stem_in_bands(p, x, y)) {
    return conv_implicit_bands(p, packed, bias, residual, x, y);
  }
  if (algorithm == FC_CONV_IMPLICIT) return conv_implicit(p, packed, bias, residual, x, y);
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

/* Runs images [n0, n0 + count) of a batch on the calling thread (or its inner team). */
typedef int (*images_fn)(const void* ctx, size_t n0, size_t count);

/* Each thread convolves its contiguous share of the images on its own (the drivers it calls run
 * single-threaded inside the team, fc_threads_for); every image is computed as on one thread,
 * so results do not depend on the split. */
static int run_images(size_t batch, int team, images_fn run, const void* ctx) {
  int rc = 0;
#pragma omp parallel num_threads(team)
  {
    const size_t id = (size_t)fc_thread_id(), count = (size_t)fc_thread_count();
    size_t n0, n1;
    fc_share(batch, id, count, &n0, &n1);
    if (n1 > n0) {
      const int status = run(ctx, n0, n1 - n0);
      if (status != 0) {
#pragma omp atomic write
        rc = status;
      }
    }
  }
  return rc;
}

typedef struct conv_call {
  const fc_conv2d_params* p;
  int algorithm;
  const float *packed, *bias, *residual, *x;
  float* y;
} conv_call;

static int conv_images(const void* ctx, size_t n0, size_t count) {
  const conv_call* c = (const conv_call*)ctx;
  const size_t in_size = c->p->in_channels * c->p->in_h * c->p->in_w;
  const size_t out_size = c->p->out_channels * c->p->out_h * c->p->out_w;
  fc_conv2d_params part = *c->p;
  part.batch = count;
  return run_algorithm(&part, c->algorithm, c->packed, c->bias,
                       c->residual ? c->residual + n0 * out_size : NULL, c->x + n0 * in_size,
                       c->y + n0 * out_size);
}

int fc_conv2d_nchw_f32_packed(const fc_conv2d_params* p, int algorithm, int packed_tile,
                              const float* packed, const float* bias, const float* residual,
                              const float* x, float* y) {
  if (packed_tile != fc_conv2d_packed_tile(algorithm)) return FC_ERROR_STALE;
  const int team = image_team(p, algorithm);
  if (team > 0) {
    const conv_call call = {p, algorithm, packed, bias, residual, x, y};
    return run_images(p->batch, team, conv_images, &call);
  }
  return run_algorithm(p, algorithm, packed, bias, residual, x, y);
}

/* Two 1x1 layers summed (fastconv.h): the combined layer, K = both inputs' channels. */
static fc_conv2d_params sum_params(const fc_conv2d_params* a, const fc_conv2d_params* b) {
  fc_conv2d_params sum = *a;
  sum.in_channels = a->in_channels + b->in_channels;
  return sum;
}

int fc_conv2d_sum_applies(const fc_conv2d_params* a, const fc_conv2d_params* b) {
  const fc_conv2d_params sum = sum_params(a, b);
  return !runs_transposed(a, FC_CONV_GEMM) && !runs_transposed(b, FC_CONV_GEMM) &&
         !runs_transposed(&sum, FC_CONV_GEMM) &&
         !reads_image_in_place(a->out_channels, a->out_h * a->out_w);
}

size_t fc_conv2d_sum_packed_size(size_t out_channels, size_t in_channels) {
  return fc_packed_a_size(out_channels, in_channels, fc_gemm_config_get()->mr);
}

void fc_conv2d_sum_pack_weights(size_t out_channels, size_t in_channels, const float* w,
                                float* packed) {
  fc_pack_a(out_channels, in_channels, w, (ptrdiff_t)in_channels, 1, fc_gemm_config_get()->mr,
            packed);
}

typedef struct sum_call {
  const fc_conv2d_params *a, *b;
  const float *packed, *bias, *xa, *xb;
  float* y;
} sum_call;

/* Per image: B is xa's channels over xb's (subsampled at a stride), packed block by block like
 * any matrix operand (fc_matrix_src's second base), so nothing is concatenated in memory. */
static int sum_images(const void* ctx, size_t n0, size_t count) {
  const sum_call* c = (const sum_call*)ctx;
  const fc_conv2d_params *a = c->a, *b = c->b;
  const size_t o = a->out_channels, k = a->in_channels + b->in_channels;
  const size_t npix = a->out_h * a->out_w, b_image = b->in_channels * b->in_h * b->in_w;
  const int threads = fc_threads_for(2.0 * o * k * npix);
  float* sub = NULL;
  if (is_strided(b)) {
    sub = (float*)fc_workspace(FC_WS_LAYOUT, b->in_channels * npix * sizeof(float));
    if (!sub) return FC_ERROR_NOMEM;
  }
  int rc = 0;
  for (size_t n = n0; n < n0 + count && rc == 0; n++) {
    const float* xb = c->xb + n * b_image;
    if (sub) {
      subsample(b, xb, sub, threads);
      xb = sub;
    }
    const fc_matrix_src matrix = {c->xa + n * a->in_channels * npix, npix, NULL, xb,
                                  a->in_channels};
    const fc_b_operand operand = fc_matrix_operand(&matrix);
    rc = fc_gemm_packed(o, npix, k, c->packed, &operand, c->bias, NULL, 0, a->activation,
                        c->y + n * o * npix, npix, threads);
  }
  return rc;
}

int fc_conv2d_sum_packed(const fc_conv2d_params* a, const fc_conv2d_params* b, int packed_tile,
                         const float* packed, const float* bias, const float* xa,
                         const float* xb, float* y) {
  if (packed_tile != fc_conv2d_packed_tile(FC_CONV_GEMM)) return FC_ERROR_STALE;
  const fc_conv2d_params sum = sum_params(a, b);
  const sum_call call = {a, b, packed, bias, xa, xb, y};
  const int team = image_team(&sum, FC_CONV_GEMM);
  return team > 0 ? run_images(a->batch, team, sum_images, &call)
                  : sum_images(&call, 0, a->batch);
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
