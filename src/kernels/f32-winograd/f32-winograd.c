/* Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms, vectorised across a run of tiles
 * (src/ops/winograd.c).
 *
 * Input: a run of n horizontally adjacent tiles of one channel, whose 4x4 inputs come from the
 * channel's 2x2 phase planes (src/ops/window.c): d[i][j] of tile l is phase (i % 2, j % 2) at
 * row offset (i / 2) * cols and column l + j / 2, a contiguous load across tiles. Output: the 16
 * products of a run of tiles of one output channel, reduced to the tiles' 2x2 outputs.
 *
 * One portable C source compiled once per ISA (-DFC_ISA) with GCC/Clang vector extensions.
 * All kernels work in whole vectors: they may read and write up to FC_WINDOW_SLACK floats
 * past element n - 1 of every run. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

/* V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]: V_xi of tile l goes to
 * v[xi * xi_stride + l]. phases[q] (4 pointers) points at phase q's first input of the run. */
void FC_NAME(fc_f32_winograd_input_ukernel)(size_t n, const float* const* phases, size_t cols,
                                            float* v, size_t xi_stride) {
  for (size_t l = 0; l < n; l += VLEN) {
    vf d[4][4];
    for (int i = 0; i < 4; i++) {
      for (int j = 0; j < 4; j++) d[i][j] = load(phases[(i % 2) * 2 + j % 2] + (i / 2) * cols + j / 2 + l);
    }
    vf r[4][4];
    for (int j = 0; j < 4; j++) {
      r[0][j] = d[0][j] - d[2][j];
      r[1][j] = d[1][j] + d[2][j];
      r[2][j] = d[2][j] - d[1][j];
      r[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; i++) {
      float* row = v + (size_t)(i * 4) * xi_stride + l;
      store(row, r[i][0] - r[i][2]);
      store(row + xi_stride, r[i][1] + r[i][2]);
      store(row + 2 * xi_stride, r[i][2] - r[i][1]);
      store(row + 3 * xi_stride, r[i][1] - r[i][3]);
    }
  }
}

/* Output row i of tiles l .. l + VLEN - 1 from their columns j (m of them, m = 2 or 4): tile
 * l's m outputs side by side, m * VLEN floats at y. */
static inline void store_interleaved2(float* y, vf c0, vf c1) {
  store(y, interleave_low(c0, c1));
  store(y + VLEN, interleave_high(c0, c1));
}

static inline void store_interleaved4(float* y, const vf c[4]) {
  /* (c0, c2) and (c1, c3) zipped, then the two zipped: c0 c1 c2 c3 of each tile in turn. */
  const vf low02 = interleave_low(c[0], c[2]), high02 = interleave_high(c[0], c[2]);
  const vf low13 = interleave_low(c[1], c[3]), high13 = interleave_high(c[1], c[3]);
  store_interleaved2(y, low02, low13);
  store_interleaved2(y + 2 * VLEN, high02, high13);
}

/* Y = A^T M A + bias, A^T = [1 1 1 0; 0 1 -1 -1], from M_xi of tile l at m[xi * xi_stride + l]:
 * output (i, j) of tile l goes to y[i * y_stride + 2 * l + j]. */
void FC_NAME(fc_f32_winograd_output_ukernel)(size_t n, const float* m, size_t xi_stride,
                                             float bias, float* y, size_t y_stride) {
  for (size_t l = 0; l < n; l += VLEN) {
    vf s[4][4];
    for (int xi = 0; xi < 16; xi++) s[xi / 4][xi % 4] = load(m + (size_t)xi * xi_stride + l);
    vf r[2][4];
    for (int j = 0; j < 4; j++) {
      r[0][j] = s[0][j] + s[1][j] + s[2][j];
      r[1][j] = s[1][j] - s[2][j] - s[3][j];
    }
    for (int i = 0; i < 2; i++) {
      store_interleaved2(y + (size_t)i * y_stride + 2 * l, r[i][0] + r[i][1] + r[i][2] + bias,
                         r[i][1] - r[i][2] - r[i][3] + bias);
    }
  }
}

/* F(4x4, 3x3) with the interpolation points 0, 2, -2, 1/2, -1/2 and infinity: a smaller
 * rounding error than Lavin's 0, +-1, +-2 (docs/kernels.md). Its 6x6 inputs come from 4x4
 * phase planes: d[i][j] of tile l is phase (i % 4, j % 4) at row offset (i / 4) * cols and
 * column l + j / 4. The constants are powers of two or 17/4, all exact in float32. */

/* v = B^T d for one line of six inputs, B^T = [1 0 -17/4 0 1 0; 0 -1/2 -1/4 2 1 0;
 * 0 1/2 -1/4 -2 1 0; 0 -2 -4 1/2 1 0; 0 2 -4 -1/2 1 0; 0 1 0 -17/4 0 1]. */
static inline void input_line6(const vf d[6], vf v[6]) {
  const vf quarter = d[4] - 0.25f * d[2], odd_small = 2.0f * d[3] - 0.5f * d[1];
  const vf four = d[4] - 4.0f * d[2], odd_large = 0.5f * d[3] - 2.0f * d[1];
  v[0] = d[0] - 4.25f * d[2] + d[4];
  v[1] = quarter + odd_small;
  v[2] = quarter - odd_small;
  v[3] = four + odd_large;
  v[4] = four - odd_large;
  v[5] = d[1] - 4.25f * d[3] + d[5];
}

/* V = B^T d B: V_xi of tile l goes to v[xi * xi_stride + l]; phases[q] (16 pointers) points
 * at phase q's first input of the run. */
void FC_NAME(fc_f32_winograd4_input_ukernel)(size_t n, const float* const* phases, size_t cols,
                                             float* v, size_t xi_stride) {
  for (size_t l = 0; l < n; l += VLEN) {
    vf rows[6][6]; /* rows[i] = (d B)[i]: each input row transformed */
    for (int i = 0; i < 6; i++) {
      vf d[6];
      for (int j = 0; j < 6; j++) d[j] = load(phases[(i % 4) * 4 + j % 4] + (i / 4) * cols + j / 4 + l);
      input_line6(d, rows[i]);
    }
    for (int k = 0; k < 6; k++) {
      const vf column[6] = {rows[0][k], rows[1][k], rows[2][k], rows[3][k], rows[4][k], rows[5][k]};
      vf out[6];
      input_line6(column, out);
      for (int i = 0; i < 6; i++) store(v + (size_t)(i * 6 + k) * xi_stride + l, out[i]);
    }
  }
}

/* y = A^T m for one line of six products, A^T = [1 1 1 1 1 0; 0 2 -2 1/2 -1/2 0;
 * 0 4 4 1/4 1/4 0; 0 8 -8 1/8 -1/8 1]. */
static inline void output_line6(const vf m[6], vf y[4]) {
  const vf sum_large = m[1] + m[2], diff_large = m[1] - m[2];
  const vf sum_small = m[3] + m[4], diff_small = m[3] - m[4];
  y[0] = m[0] + sum_large + sum_small;
  y[1] = 2.0f * diff_large + 0.5f * diff_small;
  y[2] = 4.0f * sum_large + 0.25f * sum_small;
  y[3] = 8.0f * diff_large + 0.125f * diff_small + m[5];
}

/* Y = A^T M A + bias, from M_xi of tile l at m[xi * xi_stride + l]: output (i, j) of tile l
 * goes to y[i * y_stride + 4 * l + j]. */
void FC_NAME(fc_f32_winograd4_output_ukernel)(size_t n, const float* m, size_t xi_stride,
                                              float bias, float* y, size_t y_stride) {
  for (size_t l = 0; l < n; l += VLEN) {
    vf rows[6][4]; /* rows[i] = (M A)[i] */
    for (int i = 0; i < 6; i++) {
      vf s[6];
      for (int j = 0; j < 6; j++) s[j] = load(m + (size_t)(i * 6 + j) * xi_stride + l);
      output_line6(s, rows[i]);
    }
    vf out[4][4]; /* out[i][j]: output (i, j) of the tiles */
    for (int j = 0; j < 4; j++) {
      const vf column[6] = {rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j], rows[5][j]};
      vf y_column[4];
      output_line6(column, y_column);
      for (int i = 0; i < 4; i++) out[i][j] = y_column[i] + bias;
    }
    for (int i = 0; i < 4; i++) store_interleaved4(y + (size_t)i * y_stride + 4 * l, out[i]);
  }
}
