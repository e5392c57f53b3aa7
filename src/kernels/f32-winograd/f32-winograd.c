/* Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms, vectorised across tiles
 * (src/ops/winograd.c).
 *
 * Input: n tiles of one channel in rows of row_tiles (tile l at row l / row_tiles, column
 * l % row_tiles), whose 4x4 inputs come from the channel's 2x2 phase planes (src/ops/window.c):
 * d[i][j] of tile (r, c) is phase (i % 2, j % 2) at row r + i / 2 and column c + j / 2, so the
 * inputs of a row's tiles are one contiguous load. Output: the 16 products of a run of tiles of
 * one output channel, reduced to the tiles' 2x2 outputs.
 *
 * One portable C source compiled once per ISA (-DFC_ISA) with GCC/Clang vector extensions.
 * All kernels work in whole vectors: they may read and write up to FC_WINDOW_SLACK floats
 * past element n - 1 of every run. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

/* Where the input kernels' vectors come from. Rows of at least VLEN / 2 tiles: each vector is
 * VLEN tiles of one row, one load. Narrower rows (a 7x7 or 14x14 image has 4 tiles per row, a
 * 28x28 one 7 with F(4x4)) would leave most lanes idle: there a vector takes whole rows, several
 * at a time, gathered by one permute of the two vectors from the first row's start (the rows
 * are cols floats apart in the planes, cols > row_tiles), `lanes` giving each lane's offset. */
typedef struct tile_rows {
  size_t row_tiles, cols, per_vector; /* per_vector: rows per vector, 1 = a load per vector */
  vi lanes;
} tile_rows;

static inline tile_rows tile_rows_of(size_t n, size_t row_tiles, size_t cols) {
  tile_rows t = {row_tiles, cols, 1, (vi){}};
  /* AVX-512 only: it permutes two vectors in one instruction (vpermt2ps). AVX2's permute takes
   * one, and with a blend ResNet-18 measured no faster (25.8 ms either way, one thread). */
  if (VLEN != 16 || n <= row_tiles || 2 * row_tiles > VLEN) return t;
  size_t rows = VLEN / row_tiles;
  while (rows > 1 && (rows - 1) * cols + row_tiles > 2 * VLEN) rows--;
  int32_t lanes[VLEN];
  for (size_t q = 0; q < VLEN; q++) {
    lanes[q] = (int32_t)(q < rows * row_tiles ? q / row_tiles * cols + q % row_tiles : q);
  }
  __builtin_memcpy(&t.lanes, lanes, sizeof lanes);
  t.per_vector = rows;
  return t;
}

/* The vector's tiles from p, the first one's input. */
static inline vf load_tiles(const tile_rows* t, const float* p, const int gathered) {
  return gathered ? __builtin_shuffle(load(p), load(p + VLEN), t->lanes) : load(p);
}

/* The first tile of the vector after the one starting at tile l. */
static inline size_t next_vector(const tile_rows* t, size_t l, const int gathered) {
  if (gathered) return l + t->per_vector * t->row_tiles;
  const size_t row_end = (l / t->row_tiles + 1) * t->row_tiles;
  return l + VLEN < row_end ? l + VLEN : row_end;
}

/* Where tile l's inputs start, relative to the planes' first tile. */
static inline size_t tile_offset(const tile_rows* t, size_t l) {
  return l / t->row_tiles * t->cols + l % t->row_tiles;
}

/* V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]: V_xi of tile l goes to
 * v[xi * xi_stride + l]. phases[q] (4 pointers) points at phase q's input of tile 0. */
static inline void input2(size_t n, const tile_rows* t, const float* const* phases, float* v,
                          size_t xi_stride, const int gathered) {
  const size_t cols = t->cols;
  for (size_t l = 0; l < n; l = next_vector(t, l, gathered)) {
    const size_t at = tile_offset(t, l);
    vf d[4][4];
    for (int i = 0; i < 4; i++) {
      for (int j = 0; j < 4; j++) {
        d[i][j] = load_tiles(t, phases[(i % 2) * 2 + j % 2] + (i / 2) * cols + j / 2 + at, gathered);
      }
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

void FC_NAME(fc_f32_winograd_input_ukernel)(size_t n, size_t row_tiles, const float* const* phases,
                                            size_t cols, float* v, size_t xi_stride) {
  const tile_rows t = tile_rows_of(n, row_tiles, cols);
  if (t.per_vector > 1) input2(n, &t, phases, v, xi_stride, 1);
  else input2(n, &t, phases, v, xi_stride, 0);
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
 * phase planes: d[i][j] of tile (r, c) is phase (i % 4, j % 4) at row r + i / 4 and column
 * c + j / 4. The constants are powers of two or 17/4, all exact in float32. */

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
 * at phase q's input of tile 0. */
static inline void input4(size_t n, const tile_rows* t, const float* const* phases, float* v,
                          size_t xi_stride, const int gathered) {
  const size_t cols = t->cols;
  for (size_t l = 0; l < n; l = next_vector(t, l, gathered)) {
    const size_t at = tile_offset(t, l);
    vf rows[6][6]; /* rows[i] = (d B)[i]: each input row transformed */
    for (int i = 0; i < 6; i++) {
      vf d[6];
      for (int j = 0; j < 6; j++) {
        d[j] = load_tiles(t, phases[(i % 4) * 4 + j % 4] + (i / 4) * cols + j / 4 + at, gathered);
      }
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

void FC_NAME(fc_f32_winograd4_input_ukernel)(size_t n, size_t row_tiles,
                                             const float* const* phases, size_t cols, float* v,
                                             size_t xi_stride) {
  const tile_rows t = tile_rows_of(n, row_tiles, cols);
  if (t.per_vector > 1) input4(n, &t, phases, v, xi_stride, 1);
  else input4(n, &t, phases, v, xi_stride, 0);
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
