/* Winograd F(2x2, 3x3) convolution (Lavin and Gray, 2015), for 3x3 kernels with stride 1,
 * dilation 1 and one group, NCHW.
 *
 * Each 2x2 output tile is computed from a 4x4 input tile with 16 multiplications per input
 * channel instead of 36: Y = A^T [ (G g G^T) . (B^T d B) ] A. The weights are transformed and
 * packed once (16 matrices U_xi, O x C); per image, the input is laid out as 2x2 phase planes
 * (src/ops/window.c) so that the input transform (a vector kernel, f32-winograd.c) reads runs of
 * tiles with contiguous loads; tiles are processed in chunks: the input transform writes 16
 * matrices V_xi (C x tiles), 16 GEMMs give M_xi = U_xi V_xi (O x tiles), and the output
 * transform adds bias and residual, applies the activation and stores the tiles.
 * Every element is computed in a fixed order, so results do not depend on the thread count.
 * The transforms add rounding error: tests bound it against a float64 reference. */
#include <math.h>
#include <string.h>

#include "fc_internal.h"
#include "fc_kernels.h"

#define CHUNK_FLOATS (1u << 22) /* V or M buffer per chunk: at most 16 MiB */

static size_t u_size(const fc_conv2d_params* p) {
  return fc_packed_a_size(p->out_channels, p->in_channels, fc_gemm_config_get()->mr);
}

size_t fc_winograd_packed_size(const fc_conv2d_params* p) { return 16 * u_size(p); }

/* U = G g G^T for one 3x3 kernel, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]. */
static void transform_kernel(const float* g, double u[16]) {
  double t[4][3];
  for (int j = 0; j < 3; j++) {
    const double g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
    t[0][j] = g0;
    t[1][j] = 0.5 * (g0 + g1 + g2);
    t[2][j] = 0.5 * (g0 - g1 + g2);
    t[3][j] = g2;
  }
  for (int i = 0; i < 4; i++) {
    u[i * 4 + 0] = t[i][0];
    u[i * 4 + 1] = 0.5 * (t[i][0] + t[i][1] + t[i][2]);
    u[i * 4 + 2] = 0.5 * (t[i][0] - t[i][1] + t[i][2]);
    u[i * 4 + 3] = t[i][2];
  }
}

int fc_winograd_pack_weights(const fc_conv2d_params* p, const float* w, float* packed) {
  const size_t O = p->out_channels, C = p->in_channels, mr = fc_gemm_config_get()->mr;
  float* u = (float*)fc_alloc(16 * O * C * sizeof(float));
  if (!u) return FC_ERROR_NOMEM;
  for (size_t o = 0; o < O; o++) {
    for (size_t c = 0; c < C; c++) {
      double t[16];
      transform_kernel(w + (o * C + c) * 9, t);
      for (int xi = 0; xi < 16; xi++) u[(xi * O + o) * C + c] = (float)t[xi];
    }
  }
  for (int xi = 0; xi < 16; xi++) {
    fc_pack_a(O, C, u + xi * O * C, (ptrdiff_t)C, 1, mr, packed + xi * u_size(p));
  }
  fc_free(u);
  return 0;
}

/* Per call: the layout of the image's phase planes (tiles are the "outputs" of a 4x4, stride-2
 * window) and the buffers of one chunk of tiles. V and M rows (one per channel and product)
 * are `pitch` floats apart, past the chunk's length, so the transforms' whole-vector writes
 * stay in their own row. */
typedef struct winograd_work {
  fc_phase_layout layout;
  size_t chan;  /* floats of phase planes per channel */
  size_t chunk, pitch, tiles_w, tiles;
  float* planes;
  float* v;  /* 16 x C rows */
  float* m;  /* 16 x O rows */
} winograd_work;

/* Input transform of the chunk's tiles [t0, t0 + tc) for channel c, one tile row at a time. */
static void input_chunk(const fc_vector_config* vk, const winograd_work* w, size_t C, size_t c,
                        size_t t0, size_t tc) {
  const fc_phase_layout* l = &w->layout;
  const float* base = w->planes + c * w->chan;
  for (size_t t = t0; t < t0 + tc;) {
    const size_t ty = t / w->tiles_w, tx = t % w->tiles_w;
    const size_t n = fc_min(w->tiles_w - tx, t0 + tc - t);
    const float* at = base + ty * l->cols + tx;
    const float* const phases[4] = {at, at + l->phase_size, at + 2 * l->phase_size,
                                    at + 3 * l->phase_size};
    vk->winograd_input(n, phases, l->cols, w->v + c * w->pitch + (t - t0), C * w->pitch);
    t += n;
  }
}

/* Output transform of the chunk's tiles for output channel o: bias, residual, activation, and
 * the 2x2 outputs of each tile into the plane yo (tiles past the edge clipped). */
static void output_chunk(const fc_conv2d_params* p, const fc_vector_config* vk,
                         const winograd_work* w, size_t o, size_t t0, size_t tc, float bias,
                         const float* residual, float* yo, float* tmp) {
  const size_t O = p->out_channels, tmp_stride = fc_round_up(tc, FC_WINDOW_SLACK);
  float lo = -INFINITY, hi = INFINITY;
  if (p->activation == FC_ACT_RELU || p->activation == FC_ACT_RELU6) lo = 0.0f;
  if (p->activation == FC_ACT_RELU6) hi = 6.0f;
  vk->winograd_output(tc, w->m + o * w->pitch, O * w->pitch, bias, tmp, tmp_stride);
  for (size_t t = 0; t < tc; t++) {
    const size_t ty = (t0 + t) / w->tiles_w, tx = (t0 + t) % w->tiles_w;
    for (size_t i = 0; i < 2 && 2 * ty + i < p->out_h; i++) {
      const size_t row = (2 * ty + i) * p->out_w, width = fc_min(2, p->out_w - 2 * tx);
      for (size_t j = 0; j < width; j++) {
        const size_t at = row + 2 * tx + j;
        float value = tmp[(i * 2 + j) * tmp_stride + t];
        if (residual) value += residual[at];
        value = value < lo ? lo : value; /* NaN passes the clamp unchanged */
        value = value > hi ? hi : value;
        yo[at] = value;
      }
      fc_activation_row(width, p->activation, yo + row + 2 * tx);
    }
  }
}

/* One chunk of tiles [t0, t0 + tc) of one image: input transform, 16 GEMMs, output transform,
 * each parallelised over `threads`. */
static int run_chunk(const fc_conv2d_params* p, const float* packed, const float* bias,
                     const float* rn, float* yn, const winograd_work* w, size_t t0, size_t tc,
                     int threads) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t C = p->in_channels, O = p->out_channels, plane_out = p->out_h * p->out_w;
  int rc = 0;
#pragma omp parallel num_threads(threads)
  {
    const unsigned fp_mode = fc_fp_enter();
#pragma omp for schedule(static)
    for (size_t c = 0; c < C; c++) input_chunk(vk, w, C, c, t0, tc);
    fc_fp_exit(fp_mode);
  }
  for (int xi = 0; xi < 16 && rc == 0; xi++) {
    const fc_matrix_src src = {w->v + (size_t)xi * C * w->pitch, w->pitch};
    const fc_b_operand operand = {fc_pack_b_matrix, &src, NULL, NULL, NULL};
    rc = fc_gemm_packed(O, tc, C, packed + xi * u_size(p), &operand, NULL, NULL, 0, FC_ACT_NONE,
                        w->m + (size_t)xi * O * w->pitch, w->pitch, threads);
  }
#pragma omp parallel num_threads(threads)
  {
    const unsigned fp_mode = fc_fp_enter();
    /* The output transform's 4 x tc results, per thread. */
    float* tmp = (float*)fc_workspace(FC_WS_TABLE, 4 * fc_round_up(tc, FC_WINDOW_SLACK) * sizeof(float));
    if (!tmp) {
#pragma omp atomic write
      rc = FC_ERROR_NOMEM;
    }
#pragma omp for schedule(static)
    for (size_t o = 0; o < O; o++) {
      if (tmp) {
        output_chunk(p, vk, w, o, t0, tc, bias ? bias[o] : 0.0f, rn ? rn + o * plane_out : NULL,
                     yn + o * plane_out, tmp);
      }
    }
    fc_fp_exit(fp_mode);
  }
  return rc;
}

static int winograd_work_init(const fc_conv2d_params* p, winograd_work* w) {
  const size_t C = p->in_channels, O = p->out_channels, nr = fc_gemm_config_get()->nr;
  const size_t tiles_h = (p->out_h + 1) / 2;
  w->tiles_w = (p->out_w + 1) / 2;
  w->tiles = tiles_h * w->tiles_w;
  fc_phase_layout_init(&w->layout, p->in_h, p->in_w, tiles_h, w->tiles_w, 4, 4, 2, 2, 1, 1,
                       p->pad_top, p->pad_left);
  w->chan = fc_phase_planes_size(&w->layout);
  /* Large chunks keep the 16 GEMMs wide (small ones measured slower, transforms included). */
  size_t chunk = CHUNK_FLOATS / (16 * (C > O ? C : O)) / nr * nr;
  w->chunk = chunk < nr ? nr : (chunk > w->tiles ? w->tiles : chunk);
  w->pitch = fc_round_up(w->chunk, FC_WINDOW_SLACK) + FC_WINDOW_SLACK;
  w->planes = (float*)fc_workspace(FC_WS_LAYOUT, C * w->chan * sizeof(float));
  w->v = (float*)fc_workspace(FC_WS_INPUT, 16 * C * w->pitch * sizeof(float));
  w->m = (float*)fc_workspace(FC_WS_OUTPUT, 16 * O * w->pitch * sizeof(float));
  return w->planes && w->v && w->m ? 0 : FC_ERROR_NOMEM;
}

int fc_winograd_run(const fc_conv2d_params* p, const float* packed, const float* bias,
                    const float* residual, const float* x, float* y) {
  const size_t C = p->in_channels, O = p->out_channels;
  const size_t plane_in = p->in_h * p->in_w, plane_out = p->out_h * p->out_w;
  winograd_work w;
  if (winograd_work_init(p, &w) != 0) return FC_ERROR_NOMEM;
  const int threads = fc_threads_for(2.0 * O * C * 16 * w.chunk);
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n++) {
    const float* xn = x + n * C * plane_in;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (size_t c = 0; c < C; c++) fc_phase_fill(&w.layout, xn + c * plane_in, 0.0f, w.planes + c * w.chan);
    for (size_t t0 = 0; t0 < w.tiles && rc == 0; t0 += w.chunk) {
      rc = run_chunk(p, packed, bias, residual ? residual + n * O * plane_out : NULL,
                     y + n * O * plane_out, &w, t0, fc_min(w.chunk, w.tiles - t0), threads);
    }
  }
  return rc;
}
