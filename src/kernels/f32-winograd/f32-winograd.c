/* Winograd F(2x2, 3x3) transforms, vectorised across a run of tiles (src/ops/winograd.c).
 *
 * Input: a run of n horizontally adjacent tiles of one channel, whose 4x4 inputs come from the
 * channel's 2x2 phase planes (src/ops/window.c): d[i][j] of tile l is phase (i % 2, j % 2) at
 * row offset (i / 2) * cols and column l + j / 2, a contiguous load across tiles. Output: the 16
 * products of a run of tiles of one output channel, reduced to the tiles' 2x2 outputs.
 *
 * One portable C source compiled once per ISA (-DFC_ISA) with GCC/Clang vector extensions.
 * Both kernels work in whole vectors: they may read and write up to FC_WINDOW_SLACK floats
 * past element n - 1 of every run. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

/* V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]: V_xi of tile l goes to
 * v[xi * xi_stride + l]. phases[q] points at phase q's first input of the run. */
void FC_NAME(fc_f32_winograd_input_ukernel)(size_t n, const float* const phases[4], size_t cols,
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

/* Y = A^T M A + bias, A^T = [1 1 1 0; 0 1 -1 -1], from M_xi of tile l at m[xi * xi_stride + l]:
 * output (i, j) of tile l goes to y[(i * 2 + j) * y_stride + l]. */
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
      store(y + (size_t)(i * 2) * y_stride + l, r[i][0] + r[i][1] + r[i][2] + bias);
      store(y + (size_t)(i * 2 + 1) * y_stride + l, r[i][1] - r[i][2] - r[i][3] + bias);
    }
  }
}
