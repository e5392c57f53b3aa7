/* Winograd F(m x m, 3x3) convolution (Lavin and Gray, 2015), m = 2 or 4, for 3x3 kernels with
 * stride 1, dilation 1 and one group, NCHW; other kernels and strides as groups of 3x3
 * sub-kernels (sub_kernels below).
 *
 * Each m x m output tile is computed from an (m+2)x(m+2) input tile with (m+2)^2
 * multiplications per input channel instead of 9 m^2: Y = A^T [ (G g G^T) . (B^T d B) ] A.
 * The weights are transformed and packed once ((m+2)^2 matrices U_xi, O x C); per image, the
 * input is laid out as m x m phase planes (src/ops/window.c) so that the input transform (a
 * vector kernel, f32-winograd.c) reads runs of tiles with contiguous loads; tiles are processed
 * in chunks: the input transform writes the matrices V_xi (C x tiles), one GEMM per product
 * gives M_xi = U_xi V_xi (O x tiles; on AVX-512 with many channels computed transposed, see
 * rows_in_place), and the output transform adds bias and residual, applies
 * the activation and stores the tiles. Small images (7x7: 16 tiles of F(2x2)) go several to a
 * chunk, side by side in V and M: the GEMMs get wide and each U_xi is read once for them all.
 * Every element is computed in a fixed order, so results do not depend on the thread count.
 * The transforms add rounding error: tests bound it against a float64 reference. */
#include <math.h>
#include <string.h>

#include "fc_internal.h"
#include "fc_kernels.h"

#define CHUNK_FLOATS (1u << 22) /* V or M buffer per chunk: at most 16 MiB */
/* Chunks of NR tiles (see winograd_work_init) for U up to this size and images of at least this
 * many tiles. One thread, CPU time, ms, caches warm / flushed by a 64 MB write between calls:
 * 64 -> 64 channels on 56x56 1.24 / 1.85 -> 1.19 / 1.48; on 224x224 28.5 / 29.0 -> 22.0 / 22.2;
 * 128 on 112x112 18.3 -> 16.3-16.7. Not better: 256 channels on 56x56 (U 9.4 MiB, read 7
 * times) or 128 on 28x28 (49 tiles, two chunks); neither chunks of 16 or 64 tiles. */
#define SMALL_CHUNK_MAX_U (4u << 20)
#define SMALL_CHUNK_MIN_TILES 128
#define PRODUCT_SKEW 16 /* floats: one cache line, see winograd_work_init */
#define MAX_ALPHA 6             /* input tile side of F(4x4, 3x3) */
/* Images go several to a chunk up to this many tile columns. Batch 8, one thread: ResNet-50's
 * 7x7 512-channel layers (16 F(2x2) tiles, 1 MiB of U per product) 16.8 -> 13.3 ms with 8
 * images per chunk; its 56x56 64-channel ones (196 F(4x4) tiles) 12 -> 15 ms with all 8 in
 * one chunk (V and M then far outgrow the caches), so they stay one image per chunk;
 * 28x28 and 14x14 measured within noise either way. */
#define FOLD_COLUMNS 256
/* Input and output channels from which the GEMMs may read V in place (rows_in_place). */
#define PIXELS_MIN_CHANNELS 128

/* G of F(2x2, 3x3) (points 0, 1, -1, infinity) and of F(4x4, 3x3) (points 0, 2, -2, 1/2, -1/2,
 * infinity); B^T and A^T are written out in the transform kernels. */
static const double G2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double G4[6][3] = {{1, 0, 0},
                                {1 / 30.0, 1 / 15.0, 2 / 15.0},
                                {1 / 30.0, -1 / 15.0, 2 / 15.0},
                                {-8 / 15.0, -4 / 15.0, -2 / 15.0},
                                {-8 / 15.0, 4 / 15.0, -2 / 15.0},
                                {0, 0, 1}};

/* One tile size: outputs per tile side m, input tile side alpha = m + 2, its transforms. */
typedef struct winograd_variant {
  size_t m, alpha, products;
  const double (*g)[3];
  fc_winograd_input_fn input;
  fc_winograd_output_fn output;
} winograd_variant;

/* Other kernels run as groups of 3x3 sub-kernels (zero taps past the kernel's edge). Along an
 * axis with stride s, tap k = s * (3a + i) + r belongs to stride phase r (0 <= r < s) and
 * sub-kernel a (0 <= i < 3): group (a, r) is a 3x3 convolution at stride 1 whose tap i reads
 * padded input s * (output + i) + origin, origin = 3 s a + r. The layer is the sum of the
 * groups' convolutions, which the GEMMs add up as extra input channels. 5x5 at stride 1
 * (AlexNet's second layer): 4 groups, 4 * 36 / 16 = 9 multiplications per output and input
 * channel with F(4x4) instead of 25; 11x11 at stride 4 (its first): 16 groups, 36 instead of
 * 121. */
static size_t sub_kernels(size_t kernel, size_t stride) {
  const size_t phase_taps = (kernel + stride - 1) / stride;
  return (phase_taps + 2) / 3;
}

/* Groups along an axis, numbered g = a * stride + r. */
static size_t axis_groups(size_t kernel, size_t stride) {
  return stride * sub_kernels(kernel, stride);
}

/* The first tap of group g along an axis. */
static size_t group_origin(size_t g, size_t stride) {
  return 3 * stride * (g / stride) + g % stride;
}

/* The GEMMs' input channels: the layer's, once per group; GEMM channel gc is input channel
 * gc % C of group gc / C = gy * (groups along a row) + gx. */
static size_t gemm_channels(const fc_conv2d_params* p) {
  return p->in_channels * axis_groups(p->kernel_h, p->stride_h) *
         axis_groups(p->kernel_w, p->stride_w);
}

static winograd_variant variant_of(size_t m) {
  const fc_vector_config* vk = fc_vector_config_get();
  if (m == 4) return (winograd_variant){4, 6, 36, G4, vk->winograd4_input, vk->winograd4_output};
  return (winograd_variant){2, 4, 16, G2, vk->winograd_input, vk->winograd_output};
}

/* Whether the layer's GEMMs run transposed through the pixels kernel (AVX-512):
 * M_xi^T (tiles x O) = V_xi^T (tiles x C) * U_xi^T, V read in place (8 tiles of a channel are
 * contiguous), U_xi^T packed once as B panels, each tile stored transposed into M's rows. A
 * small chunk (16 tiles at batch 1 on 14x14 F(4x4) or 7x7 F(2x2)) then fills 8x32 tiles over
 * (tiles, output channels) instead of one vector of 16 columns per row. The kernel transposes
 * its tiles once per K block, which wants a deep K: from 256 channels, or 128 on images of few
 * tiles (on 56x56 and 112x112, chunks of NR tiles, 128 channels measured 0-7 % slower this way;
 * 64 channels on 56x56 3-10 %). Decided per layer, never per chunk, so that a tile's sums do not
 * depend on the batch. */
static int rows_in_place(const fc_conv2d_params* p, size_t m) {
  const size_t C = gemm_channels(p), O = p->out_channels;
  const size_t tiles = ((p->out_h + m - 1) / m) * ((p->out_w + m - 1) / m);
  const int deep = C >= 2 * PIXELS_MIN_CHANNELS ||
                   (C >= PIXELS_MIN_CHANNELS && tiles < SMALL_CHUNK_MIN_TILES);
  return fc_gemm_config_get()->pixels && deep && O >= PIXELS_MIN_CHANNELS;
}

static size_t u_size(const fc_conv2d_params* p, size_t m) {
  if (rows_in_place(p, m)) return fc_dense_packed_size(gemm_channels(p), p->out_channels);
  return fc_packed_a_size(p->out_channels, gemm_channels(p), fc_gemm_config_get()->mr);
}

size_t fc_winograd_packed_size(const fc_conv2d_params* p, size_t m) {
  return variant_of(m).products * u_size(p, m);
}

/* U = G g G^T for one 3x3 kernel, in float64. Zero coefficients of G are skipped rather than
 * multiplied, so an infinite weight does not turn into NaN (0 * inf) where G ignores it. */
static void transform_kernel(const winograd_variant* v, const float* g, double* u) {
  double t[MAX_ALPHA][3];
  for (size_t i = 0; i < v->alpha; i++) {
    for (int j = 0; j < 3; j++) {
      double sum = 0.0;
      for (int k = 0; k < 3; k++) {
        if (v->g[i][k] != 0.0) sum += v->g[i][k] * g[k * 3 + j];
      }
      t[i][j] = sum;
    }
  }
  for (size_t i = 0; i < v->alpha; i++) {
    for (size_t j = 0; j < v->alpha; j++) {
      double sum = 0.0;
      for (int k = 0; k < 3; k++) {
        if (v->g[j][k] != 0.0) sum += t[i][k] * v->g[j][k];
      }
      u[i * v->alpha + j] = sum;
    }
  }
}

/* The 3x3 sub-kernel of group `group` for output channel o and input channel c: the kernel's
 * taps it covers, zeros past the kernel's edge. */
static void sub_kernel(const fc_conv2d_params* p, const float* w, size_t o, size_t c, size_t group,
                       float* g) {
  const size_t kh = p->kernel_h, kw = p->kernel_w, sh = p->stride_h, sw = p->stride_w;
  const size_t groups_w = axis_groups(kw, sw);
  const size_t top = group_origin(group / groups_w, sh), left = group_origin(group % groups_w, sw);
  const float* taps = w + (o * p->in_channels + c) * kh * kw;
  for (size_t i = 0; i < 3; i++) {
    for (size_t j = 0; j < 3; j++) {
      const size_t y = top + sh * i, x = left + sw * j;
      g[i * 3 + j] = y < kh && x < kw ? taps[y * kw + x] : 0.0f;
    }
  }
}

int fc_winograd_pack_weights(const fc_conv2d_params* p, size_t m, const float* w, float* packed) {
  const winograd_variant v = variant_of(m);
  const size_t O = p->out_channels, C = gemm_channels(p), mr = fc_gemm_config_get()->mr;
  float* u = (float*)fc_alloc(v.products * O * C * sizeof(float));
  if (!u) return FC_ERROR_NOMEM;
  for (size_t o = 0; o < O; o++) {
    for (size_t c = 0; c < C; c++) {
      float g[9];
      double t[MAX_ALPHA * MAX_ALPHA];
      sub_kernel(p, w, o, c % p->in_channels, c / p->in_channels, g);
      transform_kernel(&v, g, t);
      for (size_t xi = 0; xi < v.products; xi++) u[(xi * O + o) * C + c] = (float)t[xi];
    }
  }
  const int pixels = rows_in_place(p, m);
  for (size_t xi = 0; xi < v.products; xi++) {
    float* dst = packed + xi * u_size(p, m);
    if (pixels) fc_pixels_pack_weights(C, O, u + xi * O * C, dst);
    else fc_pack_a(O, C, u + xi * O * C, (ptrdiff_t)C, 1, mr, dst);
  }
  fc_free(u);
  return 0;
}

/* Per call: the layout of the image's phase planes (tiles are the "outputs" of an alpha x alpha,
 * stride-m window) and the buffers of one chunk of tiles. V and M rows (one per channel and
 * product) are `pitch` floats apart, past the chunk's length, so the transforms' whole-vector
 * writes stay in their own row. */
typedef struct winograd_work {
  winograd_variant v;
  fc_phase_layout layout;
  size_t chan;  /* floats of phase planes per channel */
  size_t chunk, pitch, tiles_w, tiles;
  size_t groups_w;         /* groups along a row (1 for 3x3 at stride 1) */
  size_t stride_h, stride_w; /* the layer's */
  size_t v_stride, m_stride; /* floats from one product's V or M to the next's */
  size_t images; /* per chunk: 1, or whole images of `tiles` each */
  float* planes; /* images x C channels */
  float* vt; /* V: products x C rows */
  float* mt; /* M: products x O rows */
} winograd_work;

/* Where the transform kernel's phase q = (qy, qx) of a tile starts, relative to the tile's
 * first input, for a group of origin (oy, ox). The planes are the padded input's phases at
 * stride S = s m (s = 1 for stride-1 layers): tile t's input i of the group is padded row
 * S t + s i + oy. The kernel reads input i = qy + m k from its phase pointer qy at row k; that
 * row is in phase (s qy + oy) % S, at row t + k + (s qy + oy) / S: each phase pointer moves to
 * another phase plane and a few rows (columns) on. */
static ptrdiff_t shifted_phase(const winograd_work* w, size_t q, size_t oy, size_t ox) {
  const fc_phase_layout* l = &w->layout;
  const size_t m = w->v.m, y = w->stride_h * (q / m) + oy, x = w->stride_w * (q % m) + ox;
  const size_t phase = (y % l->stride_h) * l->stride_w + x % l->stride_w;
  return (ptrdiff_t)(phase * l->phase_size + y / l->stride_h * l->cols + x / l->stride_w);
}

/* The phase offsets (shifted_phase) of the last group the input transform read, kept across
 * the channels of the group: their divisions were 2.6 % of ResNet-18's time at two threads when
 * computed per channel and chunk. */
typedef struct group_phases {
  size_t group;
  ptrdiff_t offsets[MAX_ALPHA * MAX_ALPHA];
} group_phases;

#define NO_GROUP ((size_t)-1)

static const ptrdiff_t* group_phase_offsets(const winograd_work* w, size_t group,
                                            group_phases* cache) {
  if (cache->group != group) {
    const size_t oy = group_origin(group / w->groups_w, w->stride_h);
    const size_t ox = group_origin(group % w->groups_w, w->stride_w);
    for (size_t q = 0; q < w->v.m * w->v.m; q++) cache->offsets[q] = shifted_phase(w, q, oy, ox);
    cache->group = group;
  }
  return cache->offsets;
}

/* Input transform of the chunk's tiles [t0, t0 + tc) of an image for GEMM channel gc (input
 * channel gc % C, read for group gc / C), into V's columns from image * tc on: the rest of a
 * first tile row the chunk starts inside, then its tiles from the next row on in one call (the
 * kernel takes rows of a narrow image several to a vector). The kernel's whole-vector writes
 * past the last tile are overwritten by the next image's, which the same thread transforms
 * next. */
static void input_chunk(const winograd_work* w, size_t C, size_t image, size_t gc, size_t t0,
                        size_t tc, group_phases* phases_of) {
  const fc_phase_layout* l = &w->layout;
  const ptrdiff_t* offsets = group_phase_offsets(w, gc / C, phases_of);
  const float* base = w->planes + (image * C + gc % C) * w->chan;
  for (size_t t = t0; t < t0 + tc;) {
    const size_t ty = t / w->tiles_w, tx = t % w->tiles_w;
    const size_t n = tx ? fc_min(w->tiles_w - tx, t0 + tc - t) : t0 + tc - t;
    const float* phases[MAX_ALPHA * MAX_ALPHA];
    for (size_t q = 0; q < w->v.m * w->v.m; q++) phases[q] = base + offsets[q] + ty * l->cols + tx;
    w->v.input(n, tx ? n : w->tiles_w, phases, l->cols,
               w->vt + gc * w->pitch + image * tc + (t - t0), w->v_stride);
    t += n;
  }
}

/* The row pitch of the output transform's results for tc tiles: m outputs per tile, whole
 * vectors (the transform writes up to m * FC_WINDOW_SLACK floats past a run). */
static size_t output_tmp_stride(size_t m, size_t tc) {
  return m * fc_round_up(tc, FC_WINDOW_SLACK);
}

/* Output transform of the chunk's tiles of an image for output channel o: bias, residual,
 * activation, and the m x m outputs of each tile into the plane yo (tiles past the edge
 * clipped). The transform leaves output row i of the chunk's tiles, side by side, in row i of
 * tmp; each run of tiles along a tile row is then m output rows, stored from there with the
 * residual and clamp as vectors. */
static void output_chunk(const fc_conv2d_params* p, const winograd_work* w, size_t image,
                         size_t o, size_t t0, size_t tc, float bias, const float* residual,
                         float* yo, float* tmp) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t m = w->v.m, tmp_stride = output_tmp_stride(m, tc);
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  w->v.output(tc, w->mt + o * w->pitch + image * tc, w->m_stride, bias, tmp, tmp_stride);
  for (size_t t = 0; t < tc;) {
    const size_t ty = (t0 + t) / w->tiles_w, tx = (t0 + t) % w->tiles_w;
    const size_t n = fc_min(w->tiles_w - tx, tc - t), x0 = m * tx;
    const size_t width = fc_min(m * n, p->out_w - x0);
    for (size_t i = 0; i < m && m * ty + i < p->out_h; i++) {
      const size_t at = (m * ty + i) * p->out_w + x0;
      const float* line = tmp + i * tmp_stride + m * t;
      if (residual) {
        vk->vadd(width, line, residual + at, yo + at, lo, hi);
      } else {
        vk->vclamp(width, line, yo + at, lo, hi);
      }
      fc_activation_row(width, p->activation, yo + at);
    }
    t += n;
  }
}

/* One chunk: tiles [t0, t0 + tc) of each of `count` images (rn, yn: the first one's residual and
 * output). The three stages below are worksharing loops of the enclosing parallel region (run
 * serially outside one); each ends with the loop's barrier. */
typedef struct winograd_chunk {
  const fc_conv2d_params* p;
  const winograd_work* w;
  const float* packed;
  const float* bias;
  const float* rn;
  float* yn;
  size_t count, t0, tc;
} winograd_chunk;

static void input_stage(const winograd_chunk* k) {
  const size_t C = k->p->in_channels, gemm_c = gemm_channels(k->p);
  group_phases phases = {NO_GROUP, {0}}; /* each thread's own */
#pragma omp for schedule(static)
  for (size_t gc = 0; gc < gemm_c; gc++) {
    for (size_t i = 0; i < k->count; i++) input_chunk(k->w, C, i, gc, k->t0, k->tc, &phases);
  }
}

/* Product xi's GEMM, M_xi = U_xi V_xi, on `threads` (transposed when rows_in_place). */
static int product_gemm(const winograd_chunk* k, size_t xi, int threads) {
  const size_t C = gemm_channels(k->p), O = k->p->out_channels, pitch = k->w->pitch;
  const size_t tiles = k->count * k->tc;
  const float* vt = k->w->vt + xi * k->w->v_stride;
  const float* u = k->packed + xi * u_size(k->p, k->w->v.m);
  float* mt = k->w->mt + xi * k->w->m_stride;
  if (rows_in_place(k->p, k->w->v.m)) {
    return fc_gemm_pixels(tiles, O, C, vt, pitch, u, NULL, 0, FC_ACT_NONE, mt, pitch, threads);
  }
  const fc_matrix_src src = {vt, pitch};
  const fc_b_operand operand = fc_matrix_operand(&src);
  return fc_gemm_packed(O, tiles, C, u, &operand, NULL, NULL, 0, FC_ACT_NONE, mt, pitch, threads);
}

/* Whole products per thread, each GEMM on its own thread. */
static void gemm_stage(const winograd_chunk* k, int* rc) {
#pragma omp for schedule(static)
  for (size_t xi = 0; xi < k->w->v.products; xi++) {
    const int status = product_gemm(k, xi, 1);
    if (status != 0) {
#pragma omp atomic write
      *rc = status;
    }
  }
}

static void output_stage(const winograd_chunk* k, int* rc) {
  const fc_conv2d_params* p = k->p;
  const size_t O = p->out_channels, plane_out = p->out_h * p->out_w, m = k->w->v.m;
  /* Per thread: the output transform's m output rows of the chunk's tiles. */
  float* tmp = (float*)fc_workspace(FC_WS_TABLE, m * output_tmp_stride(m, k->tc) * sizeof(float));
  if (!tmp) {
#pragma omp atomic write
    *rc = FC_ERROR_NOMEM;
  }
#pragma omp for schedule(static)
  for (size_t o = 0; o < O; o++) {
    for (size_t i = 0; i < k->count && tmp; i++) {
      const size_t at = (i * O + o) * plane_out;
      output_chunk(p, k->w, i, o, k->t0, k->tc, k->bias ? k->bias[o] : 0.0f,
                   k->rn ? k->rn + at : NULL, k->yn + at, tmp);
    }
  }
}

/* The phase planes of the chunk's images, all their tiles. */
static void fill_stage(const winograd_chunk* k, const float* xn) {
  const size_t C = k->p->in_channels, plane_in = k->p->in_h * k->p->in_w;
#pragma omp for schedule(static)
  for (size_t ic = 0; ic < k->count * C; ic++) {
    fc_phase_fill(&k->w->layout, xn + ic * plane_in, 0.0f, k->w->planes + ic * k->w->chan);
  }
}

/* All the chunks of k's images (k's t0 and tc are set here), each thread computing whole
 * products: run by every thread of a region, or serially outside one. */
static void all_chunks(winograd_chunk k, const float* xn, int* rc) {
  const size_t tiles = k.w->tiles, chunk = k.w->chunk;
  fill_stage(&k, xn);
  const unsigned fp_mode = fc_fp_enter();
  for (k.t0 = 0; k.t0 < tiles; k.t0 += chunk) {
    k.tc = fc_min(chunk, tiles - k.t0);
    input_stage(&k);
    gemm_stage(&k, rc);
    output_stage(&k, rc);
  }
  fc_fp_exit(fp_mode);
}

/* When the products (16 or 36) divide evenly among the threads, one parallel region runs all
 * the chunks and each thread computes whole products: at batch 1 a small image's GEMMs are too
 * small to split well, and a fork/join per GEMM, or per chunk of NR tiles, added up. Otherwise
 * each GEMM is split. Either way every GEMM sums in the same order, so results do not depend on
 * the thread count. One thread enters no region (each costs it about half a microsecond),
 * except inside a team, where the stages' loops would bind to the team's region. */
static int run_images(winograd_chunk k, const float* xn, int threads) {
  const size_t tiles = k.w->tiles, chunk = k.w->chunk;
  int rc = 0;
  if (threads == 1 && !fc_in_team()) {
    all_chunks(k, xn, &rc);
    return rc;
  }
  if (k.w->v.products % (size_t)threads == 0) {
#pragma omp parallel num_threads(threads)
    all_chunks(k, xn, &rc);
    return rc;
  }
#pragma omp parallel num_threads(threads)
  fill_stage(&k, xn);
  for (k.t0 = 0; k.t0 < tiles && rc == 0; k.t0 += chunk) {
    k.tc = fc_min(chunk, tiles - k.t0);
#pragma omp parallel num_threads(threads)
    {
      const unsigned fp_mode = fc_fp_enter();
      input_stage(&k);
      fc_fp_exit(fp_mode);
    }
    for (size_t xi = 0; xi < k.w->v.products && rc == 0; xi++) rc = product_gemm(&k, xi, threads);
#pragma omp parallel num_threads(threads)
    {
      const unsigned fp_mode = fc_fp_enter();
      output_stage(&k, &rc);
      fc_fp_exit(fp_mode);
    }
  }
  return rc;
}

static int winograd_work_init(const fc_conv2d_params* p, size_t m, winograd_work* w) {
  const size_t C = gemm_channels(p), O = p->out_channels, nr = fc_gemm_config_get()->nr;
  w->v = variant_of(m);
  const size_t tiles_h = (p->out_h + m - 1) / m;
  w->tiles_w = (p->out_w + m - 1) / m;
  w->tiles = tiles_h * w->tiles_w;
  w->groups_w = axis_groups(p->kernel_w, p->stride_w);
  w->stride_h = p->stride_h, w->stride_w = p->stride_w;
  /* A tile's window at stride S = s m: s (alpha + 3 per further sub-kernel) padded inputs. */
  const size_t alpha = w->v.alpha;
  const size_t window_h = p->stride_h * (alpha + 3 * (sub_kernels(p->kernel_h, p->stride_h) - 1));
  const size_t window_w = p->stride_w * (alpha + 3 * (sub_kernels(p->kernel_w, p->stride_w) - 1));
  fc_phase_layout_init(&w->layout, p->in_h, p->in_w, tiles_h, w->tiles_w, window_h, window_w,
                       p->stride_h * m, p->stride_w * m, 1, 1, p->pad_top, p->pad_left);
  w->chan = fc_phase_planes_size(&w->layout);
  /* Large chunks keep the GEMMs wide and read each U_xi once for many tiles. */
  size_t chunk = CHUNK_FLOATS / (w->v.products * (C > O ? C : O)) / nr * nr;
  chunk = chunk < nr ? nr : chunk;
  /* Whole images per chunk when they fit, each image's tiles a run of columns. */
  const size_t fold = fc_min(FOLD_COLUMNS, chunk);
  w->images = fold >= 2 * w->tiles ? fc_min(p->batch, fold / w->tiles) : 1;
  w->chunk = fc_min(chunk, w->tiles);
  /* A small U is re-read for every chunk at little cost: many tiles then go in chunks of one
   * GEMM column panel, whose V and M (36 x (C + O) x NR floats, 0.6 MiB at 64 channels) stay
   * in L2 from the input transform to the output transform instead of going out to memory. */
  if (w->images == 1 && w->tiles >= SMALL_CHUNK_MIN_TILES &&
      w->v.products * C * O * sizeof(float) <= SMALL_CHUNK_MAX_U) {
    w->chunk = nr;
  }
  w->pitch = fc_round_up(w->images * w->chunk, FC_WINDOW_SLACK) + FC_WINDOW_SLACK;
  w->planes = (float*)fc_workspace(FC_WS_LAYOUT,
                                   w->images * p->in_channels * w->chan * sizeof(float));
  /* The transforms touch one row of each of the 36 (or 16) products per channel: with matrices
   * a multiple of 4 KiB apart (pitch 64 floats and 256 channels, or 256 and 64) those rows fall
   * in one L1 set, 8 ways deep. A cache line more per product spreads them over the sets. */
  w->v_stride = C * w->pitch + PRODUCT_SKEW;
  w->m_stride = O * w->pitch + PRODUCT_SKEW;
  w->vt = (float*)fc_workspace(FC_WS_INPUT, w->v.products * w->v_stride * sizeof(float));
  w->mt = (float*)fc_workspace(FC_WS_OUTPUT, w->v.products * w->m_stride * sizeof(float));
  return w->planes && w->vt && w->mt ? 0 : FC_ERROR_NOMEM;
}

int fc_winograd_run(const fc_conv2d_params* p, size_t m, const float* packed, const float* bias,
                    const float* residual, const float* x, float* y) {
  const size_t C = p->in_channels, O = p->out_channels;
  const size_t plane_in = p->in_h * p->in_w, plane_out = p->out_h * p->out_w;
  winograd_work w;
  if (winograd_work_init(p, m, &w) != 0) return FC_ERROR_NOMEM;
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n += w.images) {
    const size_t count = fc_min(w.images, p->batch - n);
    /* One region runs all the chunks of these images: their flops decide. */
    const int threads = fc_threads_for(2.0 * O * gemm_channels(p) * w.v.products * w.tiles * count);
    const winograd_chunk k = {p, &w, packed, bias, residual ? residual + n * O * plane_out : NULL,
                              y + n * O * plane_out, count, 0, 0};
    rc = run_images(k, x + n * C * plane_in, threads);
  }
  return rc;
}
