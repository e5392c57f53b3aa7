/* Micro-kernel contracts and the dispatch table (see docs/kernels.md).
 *
 * A micro-kernel computes one register tile or one contiguous run. It allocates nothing, starts
 * no threads and keeps no state. Each family has a scalar version that is always compiled; the
 * AVX2+FMA and AVX-512 versions are compiled with their own flags, and the table below is filled
 * once from CPUID + XGETBV, capped by FASTCONV_ISA. */
#ifndef FC_KERNELS_H
#define FC_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum fc_isa { FC_ISA_SCALAR = 0, FC_ISA_AVX2 = 1, FC_ISA_AVX512 = 2 };

/* What the GEMM micro-kernel does after its kc-long dot products, in this order:
 * add the previous C tile (accumulate), add a per-row and a per-column bias, clamp to [min, max].
 * NaN survives the clamp. bias_row holds a value per row of the tile, bias_col one per column. */
typedef struct fc_gemm_epilogue {
  int accumulate;
  const float* bias_row;
  const float* bias_col;
  float min;
  float max;
} fc_gemm_epilogue;

/* The epilogue of the narrow kernels for column j of rows r0 .. r0 + n - 1 of C, from their sums,
 * element by element in the tile kernels' order (C, row bias, column bias, the clamp that keeps
 * NaN): there C's columns are strided, and these are few elements. */
static inline void fc_narrow_epilogue(const float* sums, size_t n, size_t r0, size_t j, float* c,
                                      size_t ldc, const fc_gemm_epilogue* ep) {
  for (size_t r = 0; r < n; r++) {
    float* cr = c + (r0 + r) * ldc + j;
    float v = sums[r];
    if (ep->accumulate) v = *cr + v;
    if (ep->bias_row) v = v + ep->bias_row[r0 + r];
    if (ep->bias_col) v = v + ep->bias_col[j];
    v = ep->min > v ? ep->min : v;
    *cr = ep->max < v ? ep->max : v;
  }
}

/* C[0:rows, 0:cols] (row stride ldc) = A_panel (kc x MR, k-major) * B (kc x cols), followed by
 * the epilogue; 1 <= rows <= MR, 1 <= cols <= NR, kc >= 1. B is a packed panel (row k at
 * b + k * NR, 64-byte aligned, zero past cols) when b_offsets is NULL; otherwise it is read in
 * place, row k at b + b_offsets[k] (unaligned): the implicit GEMM of a convolution. Only the
 * rows x cols tile is read from B's rows in place, from C, bias_row and bias_col, and only it is
 * written, so edge tiles need no scratch. */
typedef void (*fc_gemm_ukernel_fn)(size_t rows, size_t cols, size_t kc, const float* a,
                                   const float* b, const ptrdiff_t* b_offsets, float* c,
                                   size_t ldc, const fc_gemm_epilogue* ep);

/* Sliding windows over a flat run (f32-window.c): for i < n,
 *   wmacc: y[i] = clamp(s + sum over t < taps of w[t] * x[i + offsets[t]], min, max), where s is
 *          y[i] if ep->accumulate, else ep->init; the clamp keeps NaN
 *   wmax:  y[i] = max over t < taps of x[i + offsets[t]] (NaN wins; taps >= 1).
 * The kernels work in whole vectors: they may read x[i + offsets[t]] and write y[i] for every
 * i < n rounded up to FC_WINDOW_SLACK, so callers allocate that slack. */
#define FC_WINDOW_SLACK 32
typedef struct fc_window_epilogue {
  int accumulate;
  float init;
  float min;
  float max;
} fc_window_epilogue;
typedef void (*fc_wmacc_fn)(size_t n, const float* x, const ptrdiff_t* offsets, const float* w,
                            size_t taps, const fc_window_epilogue* ep, float* y);
typedef void (*fc_wmax_fn)(size_t n, const float* x, const ptrdiff_t* offsets, size_t taps,
                           float* y);
/* maxpool2x2 (f32-window.c): one output row of a 2x2 stride-2 max pooling read in place,
 *   y[i] = max(r0[2i], r0[2i + 1], r1[2i], r1[2i + 1]) for i < out_w (NaN wins). */
typedef void (*fc_maxpool2x2_fn)(size_t out_w, const float* r0, const float* r1, float* y);
/* maxpool3x3s1, maxpool3x3s2 (f32-window.c): FC_MAXPOOL_ROWS output rows of a 3x3 max pooling at
 * stride s = 1 or 2, read in place:
 *   y[r][i] = max over kh, kw < 3 of X(s * r + kh, s * i + kw)   for r < FC_MAXPOOL_ROWS, i < n,
 * from the s * (FC_MAXPOOL_ROWS - 1) + 3 input rows x[j] of `width` floats, left-padded by pad:
 * X(j, k) = x[j][k - pad] for pad <= k < pad + width, else -inf. NaN wins. Exactly n columns of
 * each y row are written and nothing outside x[j][0, width) is read (masked loads). */
#define FC_MAXPOOL_ROWS 2
typedef void (*fc_maxpool3x3_fn)(size_t n, const float* const* x, size_t pad, size_t width,
                                 float* const* y);
/* maxpool3x3s1_flat: 3x3 max pooling at stride 1 with one row and column of padding on every
 * side, over `planes` consecutive planes of height x width (n = height * width <=
 * FC_MAXPOOL_FLAT_MAX floats each, output planes as large), each plane one flat run:
 *   y[q] = max over |dh|, |dw| <= 1 of x[q + dh * width + dw] for q = oh * width + ow < n,
 * the taps with oh + dh or ow + dw outside the plane left out. NaN wins; exactly n floats of each
 * output plane are written and nothing outside the input planes is read. */
#define FC_MAXPOOL_FLAT_MAX 1024
typedef void (*fc_maxpool3x3_flat_fn)(size_t planes, size_t height, size_t width, const float* x,
                                      float* y);
/* Depthwise 3x3 convolution (f32-dwconv.c), stride s = 1 or 2: FC_DW_ROWS output rows per call,
 *   y[r][i] = clamp(ep->init + sum over kh, kw < 3 of w[3 * kh + kw] * X(s * r + kh, s * i + kw),
 *                   min, max)            for r < FC_DW_ROWS, i < n,
 * from the (FC_DW_ROWS - 1) * s + 3 input rows x[j] of `width` floats, left-padded by `pad`:
 * X(j, k) = x[j][k - pad] for pad <= k < pad + width, else 0. Taps are summed in (kh, kw) order,
 * the clamp keeps NaN, ep->accumulate is ignored. Exactly n columns of each y row are written
 * and nothing outside x[j][0, width) is read (masked loads), so rows need no slack.
 * `ahead` names the rows the next call reads and writes (NULL, or NULL pointers, for none):
 * they are prefetched column by column as the blocks go, never loaded or stored. */
#define FC_DW_ROWS 4
typedef struct fc_dw_ahead {
  const float* x; /* x_rows input rows, `width` floats apart */
  size_t x_rows;
  float* y; /* y_rows output rows, n floats apart */
  size_t y_rows;
} fc_dw_ahead;
typedef void (*fc_dwconv_fn)(size_t n, const float* const* x, size_t pad, size_t width,
                             const float* w, const fc_window_epilogue* ep, float* const* y,
                             const fc_dw_ahead* ahead);
/* Depthwise 3x3 at stride 1 over `planes` consecutive small planes whose output rows are as wide
 * as their input rows (width), each plane as one flat run of out_h * width <= FC_DW_FLAT_MAX
 * outputs: plane p reads x + p * in_h * width, weights w + 9 * p and bias[p] (0 without bias),
 * and writes y + p * out_h * width, exactly, clamped to [ep->min, ep->max] (NaN kept); input
 * row ih = oh + kh - pad_top, column ow + kw - pad_left, zero outside the plane (masked loads:
 * nothing outside a plane is read). Taps summed in (kh, kw) order after the bias, as in
 * fc_dwconv_fn; ep->init and ep->accumulate are ignored. */
#define FC_DW_FLAT_MAX 256
typedef struct fc_dw_flat_geometry {
  size_t in_h, out_h, width, pad_top, pad_left;
} fc_dw_flat_geometry;
typedef void (*fc_dwconv_flat_fn)(size_t planes, const fc_dw_flat_geometry* g, const float* x,
                                  const float* w, const float* bias, const fc_window_epilogue* ep,
                                  float* y);
/* Depthwise 3x3 at stride 1 or 2 over `planes` consecutive planes, VLEN at a time with the
 * channels as vector lanes (f32-dwconv.c): plane p reads x + p * in_h * in_w, weights w + 9 * p,
 * bias[p] (0 without bias), and writes y + p * out_h * out_w, clamped to [ep->min, ep->max] (NaN
 * kept); output (oh, ow) reads input (stride * oh + kh - pad_top, stride * ow + kw - pad_left),
 * zero outside the plane. Taps summed in (kh, kw) order after the bias, as in fc_dwconv_fn.
 * `buffer` (64-byte aligned) holds FC_DW_CBLOCK_FLOATS(g) floats. */
typedef struct fc_dw_cblock_geometry {
  size_t in_h, in_w, out_h, out_w, stride, pad_top, pad_left;
} fc_dw_cblock_geometry;
#define FC_DW_CBLOCK_FLOATS(g)                                                                     \
  ((((g)->out_h - 1) * (g)->stride + 3) * (((g)->out_w - 1) * (g)->stride + 3) +                \
   (g)->out_h * (g)->out_w) * 16
typedef void (*fc_dwconv_cblock_fn)(size_t planes, const fc_dw_cblock_geometry* g,
                                    const float* x, const float* w, const float* bias,
                                    const fc_window_epilogue* ep, float* buffer, float* y);
/* Winograd F(m x m, 3x3) transforms over n tiles (f32-winograd.c), m = 2 or 4: the input
 * transform reads each tile's (m+2)x(m+2) input from m x m phase planes (phases[q] at tile 0,
 * rows `cols` apart; the tiles in rows of row_tiles, tile l at row l / row_tiles and column
 * l % row_tiles, row_tiles < cols when n > row_tiles) and writes V_xi of tile l at
 * v[xi * xi_stride + l]; the
 * output transform reads M_xi at m[xi * xi_stride + l] and writes output (i, j) + bias at
 * y[i * y_stride + m*l + j]: row i of the run's outputs, its tiles side by side, interleaved in
 * registers. Whole vectors: reads may run FC_WINDOW_SLACK floats past each run's end, writes
 * m * FC_WINDOW_SLACK (y_stride >= m * n rounded up to FC_WINDOW_SLACK). */
typedef void (*fc_winograd_input_fn)(size_t n, size_t row_tiles, const float* const* phases,
                                     size_t cols, float* v, size_t xi_stride);
typedef void (*fc_winograd_output_fn)(size_t n, const float* m, size_t xi_stride, float bias,
                                      float* y, size_t y_stride);
/* y[i] = x[i * stride]. */
typedef void (*fc_vcopy_fn)(size_t n, const float* x, size_t stride, float* y);
/* A padded row split into its `stride` column phases in one pass: y[p][i] = x[c] for the column
 * c = i * stride + p - left when it lies in [0, width), `pad` otherwise (p < stride, i < n).
 * Reads only x[0 .. width), writes exactly y[p][0 .. n); permutes of whole vectors (masked at
 * the row's ends) for stride 2 and 4, a plain loop otherwise. */
typedef void (*fc_vdeinterleave_fn)(size_t n, const float* x, size_t left, size_t width,
                                    size_t stride, float pad, float* const* y);
/* y[i] = clamp(x[i], lo, hi); NaN stays NaN. */
typedef void (*fc_vclamp_fn)(size_t n, const float* x, float* y, float lo, float hi);
/* y[i] = clamp(a[i] + b[i], lo, hi). */
typedef void (*fc_vadd_fn)(size_t n, const float* a, const float* b, float* y, float lo, float hi);
/* y[i] = x[i] * scale + shift. */
typedef void (*fc_vaffine_fn)(size_t n, const float* x, float scale, float shift, float* y);

/* One row of A against `panels` (1..4) packed B panels `panel_stride` floats apart
 * (f32-gemv.c): sums[p * NR + j] = sum over k < kc of a[k * a_stride] * panel_p[k * NR + j],
 * each summed in k order from zero exactly as the GEMM micro-kernel of the same ISA sums it. */
typedef void (*fc_gemv_ukernel_fn)(size_t kc, const float* a, size_t a_stride, const float* b,
                                   size_t panel_stride, size_t panels, float* sums);
#define FC_GEMV_PANELS 4

/* The narrow edge of C, transposed (the rows are the vector lanes): C[0:rows, 0:cols] = the A
 * panels at a and a + a_stride (the second read only when rows > MR) * B (row k at
 * b + k * b_stride, or at b + b_offsets[k] when read in place; only its first cols columns are
 * read), then the epilogue; 1 <= rows <= 2 * MR, 1 <= cols <= narrow_cols. Each element is summed
 * as the tile kernel sums it: the results are the same. */
typedef void (*fc_gemm_narrow_fn)(size_t rows, size_t cols, size_t kc, const float* a,
                                  size_t a_stride, const float* b, size_t b_stride,
                                  const ptrdiff_t* b_offsets, float* c, size_t ldc,
                                  const fc_gemm_epilogue* ep);

/* A 1x1 convolution's tile transposed, its input read in place (fc_gemm_pixels): C[0:rows,
 * 0:cols] = A (rows are pixels: A[r][k] at a[k * lda + r]) * B (a packed panel, row k at
 * b + k * NR, 64-byte aligned, zero past cols), then the epilogue, stored transposed: C[r][j] at
 * c[j * ldc + r]. 1 <= rows <= MR, 1 <= cols <= NR; A is read for rows 0 .. MR - 1 whatever
 * `rows` says (a last partial panel is packed by the caller), only rows x cols of C is written.
 * The epilogue has no row bias (a 1x1 layer's bias is per channel, bias_col; bias_row is not
 * read). Each element is summed as the tile kernel sums it, in k order from zero. */
typedef void (*fc_gemm_pixels_fn)(size_t rows, size_t cols, size_t kc, const float* a,
                                  size_t lda, const float* b, float* c, size_t ldc,
                                  const fc_gemm_epilogue* ep);

typedef struct fc_gemm_config {
  fc_gemm_ukernel_fn fn;
  fc_gemv_ukernel_fn gemv; /* its NR is 2 x the ISA's vector width: the same as fn's */
  size_t mr;
  size_t nr;
  const char* name;
  fc_gemm_narrow_fn narrow; /* NULL: edge panels go through fn (scalar) */
  size_t narrow_cols;
  fc_gemm_pixels_fn pixels; /* NULL: 1x1 layers keep their other paths (AVX2, scalar) */
} fc_gemm_config;

typedef struct fc_vector_config {
  fc_wmacc_fn wmacc;
  fc_wmax_fn wmax;
  fc_maxpool2x2_fn maxpool2x2;
  fc_maxpool3x3_fn maxpool3x3s1;
  fc_maxpool3x3_fn maxpool3x3s2;
  fc_maxpool3x3_flat_fn maxpool3x3s1_flat;
  fc_vcopy_fn vcopy;
  fc_vdeinterleave_fn vdeinterleave;
  fc_winograd_input_fn winograd_input; /* F(2x2, 3x3) */
  fc_winograd_output_fn winograd_output;
  fc_winograd_input_fn winograd4_input; /* F(4x4, 3x3) */
  fc_winograd_output_fn winograd4_output;
  fc_vclamp_fn vclamp;
  fc_vadd_fn vadd;
  fc_vaffine_fn vaffine;
  fc_dwconv_fn dwconv3x3s1;
  fc_dwconv_fn dwconv3x3s2;
  fc_dwconv_flat_fn dwconv3x3s1_flat;
  fc_dwconv_cblock_fn dwconv3x3_cblock;
  const char* name;
} fc_vector_config;

/* The kernel table in force (filled at first use, refilled by fc_set_isa_cap). */
const fc_gemm_config* fc_gemm_config_get(void);
const fc_vector_config* fc_vector_config_get(void);

/* Kernels, by ISA. The names are their specification: MRxNR tile, epilogue, instruction set. */
#define FC_GEMM_UKERNEL(name)                                                                      \
  void name(size_t rows, size_t cols, size_t kc, const float* a, const float* b,                \
            const ptrdiff_t* b_offsets, float* c, size_t ldc, const fc_gemm_epilogue* ep)
FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_4x8__scalar);
FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_6x16__avx2);
FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_8x32__avx512f);
void fc_f32_gemm_narrow_ukernel_12x4__avx2(size_t rows, size_t cols, size_t kc, const float* a,
                                           size_t a_stride, const float* b, size_t b_stride,
                                           const ptrdiff_t* b_offsets, float* c, size_t ldc,
                                           const fc_gemm_epilogue* ep);
void fc_f32_gemm_narrow_ukernel_16x8__avx512f(size_t rows, size_t cols, size_t kc,
                                              const float* a, size_t a_stride, const float* b,
                                              size_t b_stride, const ptrdiff_t* b_offsets,
                                              float* c, size_t ldc, const fc_gemm_epilogue* ep);
void fc_f32_gemm_pixels_ukernel_8x32__avx512f(size_t rows, size_t cols, size_t kc,
                                              const float* a, size_t lda, const float* b,
                                              float* c, size_t ldc, const fc_gemm_epilogue* ep);
#define FC_DECLARE_GEMV_KERNEL(isa)                                                                \
  void fc_f32_gemv_ukernel__##isa(size_t, const float*, size_t, const float*, size_t, size_t,    \
                                  float*);
FC_DECLARE_GEMV_KERNEL(scalar)
FC_DECLARE_GEMV_KERNEL(avx2)
FC_DECLARE_GEMV_KERNEL(avx512f)

/* The vector, window and Winograd transform kernels come from C sources compiled once per ISA
 * (f32-vector.c, f32-window.c, f32-winograd.c, f32-dwconv.c). */
#define FC_DECLARE_VECTOR_KERNELS(isa)                                                             \
  void fc_f32_wmacc_ukernel__##isa(size_t, const float*, const ptrdiff_t*, const float*, size_t, \
                                   const fc_window_epilogue*, float*);                           \
  void fc_f32_wmax_ukernel__##isa(size_t, const float*, const ptrdiff_t*, size_t, float*);       \
  void fc_f32_maxpool2x2_ukernel__##isa(size_t, const float*, const float*, float*);             \
  void fc_f32_maxpool3x3s1_ukernel__##isa(size_t, const float* const*, size_t, size_t,           \
                                          float* const*);                                        \
  void fc_f32_maxpool3x3s2_ukernel__##isa(size_t, const float* const*, size_t, size_t,           \
                                          float* const*);                                        \
  void fc_f32_maxpool3x3s1_flat_ukernel__##isa(size_t, size_t, size_t, const float*, float*);     \
  void fc_f32_vcopy_strided_ukernel__##isa(size_t, const float*, size_t, float*);                \
  void fc_f32_vdeinterleave_ukernel__##isa(size_t, const float*, size_t, size_t, size_t, float,  \
                                           float* const*);                                       \
  void fc_f32_winograd_input_ukernel__##isa(size_t, size_t, const float* const*, size_t, float*,\
                                            size_t);                                             \
  void fc_f32_winograd_output_ukernel__##isa(size_t, const float*, size_t, float, float*,        \
                                             size_t);                                            \
  void fc_f32_winograd4_input_ukernel__##isa(size_t, size_t, const float* const*, size_t,       \
                                             float*, size_t);                                    \
  void fc_f32_winograd4_output_ukernel__##isa(size_t, const float*, size_t, float, float*,       \
                                              size_t);                                           \
  void fc_f32_vclamp_ukernel__##isa(size_t, const float*, float*, float, float);                 \
  void fc_f32_vadd_minmax_ukernel__##isa(size_t, const float*, const float*, float*, float,      \
                                         float);                                                 \
  void fc_f32_vaffine_ukernel__##isa(size_t, const float*, float, float, float*);                \
  void fc_f32_dwconv3x3s1_ukernel__##isa(size_t, const float* const*, size_t, size_t,            \
                                         const float*, const fc_window_epilogue*, float* const*,  \
                                         const fc_dw_ahead*);                                     \
  void fc_f32_dwconv3x3s2_ukernel__##isa(size_t, const float* const*, size_t, size_t,            \
                                         const float*, const fc_window_epilogue*, float* const*,  \
                                         const fc_dw_ahead*);                                     \
  void fc_f32_dwconv3x3s1_flat_ukernel__##isa(size_t, const fc_dw_flat_geometry*, const float*,  \
                                              const float*, const float*,                        \
                                              const fc_window_epilogue*, float*);              \
  void fc_f32_dwconv3x3_cblock_ukernel__##isa(size_t, const fc_dw_cblock_geometry*, const float*, \
                                              const float*, const float*,                        \
                                              const fc_window_epilogue*, float*, float*);
FC_DECLARE_VECTOR_KERNELS(scalar)
FC_DECLARE_VECTOR_KERNELS(avx2)
FC_DECLARE_VECTOR_KERNELS(avx512f)

#ifdef __cplusplus
}
#endif
#endif
