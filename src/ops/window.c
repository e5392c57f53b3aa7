/* Phase planes: one input plane laid out so that a whole output plane of a strided, padded,
 * dilated window operator (pooling, depthwise convolution) is a single flat run.
 *
 * Output (oh, ow) reads padded input (oh*s + kh*d, ow*s + kw*d). Splitting the padded plane by
 * row and column phase (index mod stride) turns that into phase ((kh*d) % s, (kw*d) % s) at row
 * oh + (kh*d)/s, column ow + (kw*d)/s. With every phase plane `cols` wide, output (oh, ow) sits at
 * flat index oh*cols + ow and each tap is a fixed offset from it, so the window kernels see
 * contiguous loads only. Columns ow >= out_w of the run are computed and thrown away. */
#include <string.h>

#include "fc_internal.h"
#include "fc_kernels.h"

void fc_phase_layout_init(fc_phase_layout* l, size_t in_h, size_t in_w, size_t out_h, size_t out_w,
                          size_t kernel_h, size_t kernel_w, size_t stride_h, size_t stride_w,
                          size_t dilation_h, size_t dilation_w, size_t pad_top, size_t pad_left) {
  l->in_h = in_h, l->in_w = in_w, l->out_h = out_h, l->out_w = out_w;
  l->kernel_h = kernel_h, l->kernel_w = kernel_w;
  l->stride_h = stride_h, l->stride_w = stride_w;
  l->dilation_h = dilation_h, l->dilation_w = dilation_w;
  l->pad_top = pad_top, l->pad_left = pad_left;
  l->rows = out_h + (kernel_h - 1) * dilation_h / stride_h;
  l->cols = out_w + (kernel_w - 1) * dilation_w / stride_w;
  l->run = out_h * l->cols;
  /* A tap's column offset is below `cols`, so a run read from any tap ends within one extra
   * row; the kernels' vector slack comes after that. */
  l->phase_size = (l->rows + 1) * l->cols + FC_WINDOW_SLACK;
}

size_t fc_phase_planes_size(const fc_phase_layout* l) {
  return l->stride_h * l->stride_w * l->phase_size;
}

size_t fc_run_size(const fc_phase_layout* l) { return fc_round_up(l->run, FC_WINDOW_SLACK); }

void fc_phase_offsets(const fc_phase_layout* l, ptrdiff_t* offsets) {
  for (size_t kh = 0; kh < l->kernel_h; kh++) {
    for (size_t kw = 0; kw < l->kernel_w; kw++) {
      const size_t dh = kh * l->dilation_h, dw = kw * l->dilation_w;
      const size_t phase = (dh % l->stride_h) * l->stride_w + dw % l->stride_w;
      offsets[kh * l->kernel_w + kw] =
          (ptrdiff_t)(phase * l->phase_size + dh / l->stride_h * l->cols + dw / l->stride_w);
    }
  }
}

static void fill(float* dst, size_t n, float value) {
  for (size_t i = 0; i < n; i++) dst[i] = value;
}

/* Whether some tap reads phase `phase` along an axis (a 1x1 kernel at stride 2 reads one). */
static int phase_used(size_t phase, size_t kernel, size_t dilation, size_t stride) {
  for (size_t k = 0; k < kernel; k++) {
    if (k * dilation % stride == phase) return 1;
  }
  return 0;
}

/* One phase plane: rows r hold padded input row r * stride_h + phase_h, columns c padded input
 * column c * stride_w + phase_w; the columns [lo, hi) that fall inside the input are the same
 * for every row. */
static void fill_phase(const fc_phase_layout* l, fc_vcopy_fn copy, const float* x, size_t phase_h,
                       size_t phase_w, float pad, float* plane) {
  size_t lo, hi;
  const ptrdiff_t offset = (ptrdiff_t)phase_w - (ptrdiff_t)l->pad_left;
  fc_valid_range(l->cols, l->stride_w, offset, l->in_w, &lo, &hi);
  for (size_t r = 0; r < l->rows; r++) {
    const ptrdiff_t ih = (ptrdiff_t)(r * l->stride_h + phase_h) - (ptrdiff_t)l->pad_top;
    float* dst = plane + r * l->cols;
    if (ih < 0 || ih >= (ptrdiff_t)l->in_h || hi == lo) {
      fill(dst, l->cols, pad);
      continue;
    }
    const float* src = x + (size_t)ih * l->in_w + (ptrdiff_t)(lo * l->stride_w) + offset;
    fill(dst, lo, pad);
    if (l->stride_w == 1) memcpy(dst + lo, src, (hi - lo) * sizeof(float));
    else copy(hi - lo, src, l->stride_w, dst + lo);
    fill(dst + hi, l->cols - hi, pad);
  }
  fill(plane + l->rows * l->cols, l->phase_size - l->rows * l->cols, pad);
}

/* Whether every column phase is read by some tap (3x3 at stride 2, Winograd's 6x6 window at
 * stride 4: yes; a 1x1 kernel at stride 2: no). */
static int all_column_phases_used(const fc_phase_layout* l) {
  for (size_t pw = 0; pw < l->stride_w; pw++) {
    if (!phase_used(pw, l->kernel_w, l->dilation_w, l->stride_w)) return 0;
  }
  return 1;
}

/* The stride_w phase planes of row phase `phase_h` (planes[pw]) at once: each input row is read
 * in one pass and split, padding included, into its column phases. FC_MAX_SPLIT_STRIDE bounds
 * stride_w. */
#define FC_MAX_SPLIT_STRIDE 4
static void fill_row_phase(const fc_phase_layout* l, fc_vdeinterleave_fn split, const float* x,
                           size_t phase_h, float pad, float* const* planes) {
  const size_t s = l->stride_w, cols = l->cols;
  float* dst[FC_MAX_SPLIT_STRIDE];
  for (size_t r = 0; r < l->rows; r++) {
    const ptrdiff_t ih = (ptrdiff_t)(r * l->stride_h + phase_h) - (ptrdiff_t)l->pad_top;
    for (size_t pw = 0; pw < s; pw++) dst[pw] = planes[pw] + r * cols;
    if (ih < 0 || ih >= (ptrdiff_t)l->in_h) {
      for (size_t pw = 0; pw < s; pw++) fill(dst[pw], cols, pad);
    } else {
      split(cols, x + (size_t)ih * l->in_w, l->pad_left, l->in_w, s, pad, dst);
    }
  }
  for (size_t pw = 0; pw < s; pw++) {
    fill(planes[pw] + l->rows * cols, l->phase_size - l->rows * cols, pad);
  }
}

void fc_phase_fill(const fc_phase_layout* l, const float* x, float pad, float* planes) {
  const fc_vector_config* vk = fc_vector_config_get();
  const int split_rows = (l->stride_w == 2 || l->stride_w == 4) && all_column_phases_used(l);
  for (size_t ph = 0; ph < l->stride_h; ph++) {
    if (!phase_used(ph, l->kernel_h, l->dilation_h, l->stride_h)) continue;
    float* row_phase = planes + ph * l->stride_w * l->phase_size;
    if (split_rows) {
      float* phase_planes[FC_MAX_SPLIT_STRIDE];
      for (size_t pw = 0; pw < l->stride_w; pw++) phase_planes[pw] = row_phase + pw * l->phase_size;
      fill_row_phase(l, vk->vdeinterleave, x, ph, pad, phase_planes);
      continue;
    }
    for (size_t pw = 0; pw < l->stride_w; pw++) {
      if (!phase_used(pw, l->kernel_w, l->dilation_w, l->stride_w)) continue;
      fill_phase(l, vk->vcopy, x, ph, pw, pad, row_phase + pw * l->phase_size);
    }
  }
}
