/* Winograd F(2x2, 3x3) convolution (Lavin and Gray, 2015), for 3x3 kernels with stride 1,
 * dilation 1 and one group, NCHW.
 *
 * Each 2x2 output tile is computed from a 4x4 input tile with 16 multiplications per input
 * channel instead of 36: Y = A^T [ (G g G^T) . (B^T d B) ] A. The weights are transformed and
 * packed once (16 matrices U_xi, O x C); per image, tiles are processed in chunks: the input
 * transform writes 16 matrices V_xi (C x tiles), 16 GEMMs give M_xi = U_xi V_xi (O x tiles), and
 * the output transform adds bias and residual, applies the activation and stores the tiles.
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

/* V = B^T d B for the tiles [t0, t0 + tc) of one channel, B^T = [1 0 -1 0; 0 1 1 0;
 * 0 -1 1 0; 0 1 0 -1]; V_xi lands at v[(xi * C + c) * tc + t]. */
static void transform_input(const fc_conv2d_params* p, const float* xc, size_t c, size_t t0,
                            size_t tc, size_t tiles_w, float* v) {
  const size_t C = p->in_channels;
  for (size_t t = 0; t < tc; t++) {
    const size_t ty = (t0 + t) / tiles_w, tx = (t0 + t) % tiles_w;
    const ptrdiff_t iy0 = (ptrdiff_t)(2 * ty) - (ptrdiff_t)p->pad_top;
    const ptrdiff_t ix0 = (ptrdiff_t)(2 * tx) - (ptrdiff_t)p->pad_left;
    float d[4][4];
    for (int i = 0; i < 4; i++) {
      const ptrdiff_t iy = iy0 + i;
      for (int j = 0; j < 4; j++) {
        const ptrdiff_t ix = ix0 + j;
        const int inside = iy >= 0 && iy < (ptrdiff_t)p->in_h && ix >= 0 && ix < (ptrdiff_t)p->in_w;
        d[i][j] = inside ? xc[iy * (ptrdiff_t)p->in_w + ix] : 0.0f;
      }
    }
    float r[4][4];
    for (int j = 0; j < 4; j++) {
      r[0][j] = d[0][j] - d[2][j];
      r[1][j] = d[1][j] + d[2][j];
      r[2][j] = d[2][j] - d[1][j];
      r[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; i++) {
      const float vals[4] = {r[i][0] - r[i][2], r[i][1] + r[i][2], r[i][2] - r[i][1],
                             r[i][1] - r[i][3]};
      for (int j = 0; j < 4; j++) v[((size_t)(i * 4 + j) * C + c) * tc + t] = vals[j];
    }
  }
}

/* Y = A^T m A (A^T = [1 1 1 0; 0 1 -1 -1]) for the tiles of one output channel, plus bias and
 * residual, then the activation; tiles past the output's edge are clipped. */
static void transform_output(const fc_conv2d_params* p, const float* m, size_t o, size_t t0,
                             size_t tc, size_t tiles_w, float bias, const float* residual,
                             float* yo) {
  const size_t O = p->out_channels;
  float lo = -INFINITY, hi = INFINITY;
  if (p->activation == FC_ACT_RELU || p->activation == FC_ACT_RELU6) lo = 0.0f;
  if (p->activation == FC_ACT_RELU6) hi = 6.0f;
  for (size_t t = 0; t < tc; t++) {
    float s[4][4];
    for (int xi = 0; xi < 16; xi++) s[xi / 4][xi % 4] = m[((size_t)xi * O + o) * tc + t];
    float r[2][4];
    for (int j = 0; j < 4; j++) {
      r[0][j] = s[0][j] + s[1][j] + s[2][j];
      r[1][j] = s[1][j] - s[2][j] - s[3][j];
    }
    const size_t ty = (t0 + t) / tiles_w, tx = (t0 + t) % tiles_w;
    for (int i = 0; i < 2; i++) {
      const size_t oy = 2 * ty + i;
      if (oy >= p->out_h) break;
      const float out[2] = {r[i][0] + r[i][1] + r[i][2], r[i][1] - r[i][2] - r[i][3]};
      for (int j = 0; j < 2; j++) {
        const size_t ox = 2 * tx + j;
        if (ox >= p->out_w) break;
        const size_t at = oy * p->out_w + ox;
        float value = out[j] + bias;
        if (residual) value += residual[at];
        value = value < lo ? lo : value; /* NaN passes the clamp unchanged */
        value = value > hi ? hi : value;
        yo[at] = value;
      }
    }
    if (p->activation == FC_ACT_TANH || p->activation == FC_ACT_SIGMOID) {
      for (int i = 0; i < 2 && 2 * ty + i < p->out_h; i++) {
        const size_t at = (2 * ty + i) * p->out_w + 2 * tx;
        fc_activation_row(fc_min(2, p->out_w - 2 * tx), p->activation, yo + at);
      }
    }
  }
}

/* One chunk of tiles [t0, t0 + tc) of one image: input transform, 16 GEMMs, output transform,
 * each parallelised over `threads`. */
static int run_chunk(const fc_conv2d_params* p, const float* packed, const float* bias,
                     const float* rn, const float* xn, float* yn, size_t t0, size_t tc,
                     size_t tiles_w, float* v, float* m, int threads) {
  const size_t C = p->in_channels, O = p->out_channels;
  const size_t plane_in = p->in_h * p->in_w, plane_out = p->out_h * p->out_w;
  int rc = 0;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t c = 0; c < C; c++) transform_input(p, xn + c * plane_in, c, t0, tc, tiles_w, v);
  for (int xi = 0; xi < 16 && rc == 0; xi++) {
    const fc_matrix_src src = {v + (size_t)xi * C * tc, tc};
    const fc_b_operand operand = {fc_pack_b_matrix, &src, NULL, NULL, NULL};
    rc = fc_gemm_packed(O, tc, C, packed + xi * u_size(p), &operand, NULL, NULL, 0, FC_ACT_NONE,
                        m + (size_t)xi * O * tc, tc, threads);
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t o = 0; o < O; o++) {
    transform_output(p, m, o, t0, tc, tiles_w, bias ? bias[o] : 0.0f,
                     rn ? rn + o * plane_out : NULL, yn + o * plane_out);
  }
  return rc;
}

int fc_winograd_run(const fc_conv2d_params* p, const float* packed, const float* bias,
                    const float* residual, const float* x, float* y) {
  const size_t C = p->in_channels, O = p->out_channels, nr = fc_gemm_config_get()->nr;
  const size_t tiles_w = (p->out_w + 1) / 2, tiles = (p->out_h + 1) / 2 * tiles_w;
  const size_t plane_in = p->in_h * p->in_w, plane_out = p->out_h * p->out_w;
  /* Large chunks keep the 16 GEMMs wide (small ones measured slower, transforms included). */
  size_t chunk = CHUNK_FLOATS / (16 * (C > O ? C : O)) / nr * nr;
  chunk = chunk < nr ? nr : (chunk > tiles ? tiles : chunk);
  const int threads = fc_threads_for(2.0 * O * C * 16 * fc_min(chunk, tiles));
  float* v = (float*)fc_alloc(16 * C * chunk * sizeof(float));
  float* m = (float*)fc_alloc(16 * O * chunk * sizeof(float));
  if (!v || !m) {
    fc_free(v);
    fc_free(m);
    return FC_ERROR_NOMEM;
  }
  int rc = 0;
  for (size_t n = 0; n < p->batch && rc == 0; n++) {
    for (size_t t0 = 0; t0 < tiles && rc == 0; t0 += chunk) {
      rc = run_chunk(p, packed, bias, residual ? residual + n * O * plane_out : NULL,
                     x + n * C * plane_in, y + n * O * plane_out, t0, fc_min(chunk, tiles - t0),
                     tiles_w, v, m, threads);
    }
  }
  fc_free(v);
  fc_free(m);
  return rc;
}
