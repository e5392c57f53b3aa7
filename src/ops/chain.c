/* Depth-first chains of convolutions: a run of 1x1 and 3x3 depthwise layers (a stem may come
 * first), each read only by the next (MobileNetV2's inverted residual blocks: 1x1 expansion,
 * 3x3 depthwise, 1x1 projection), computed band by band of the last layer's output rows. Layer
 * by layer, the expanded tensors (six times the block's channels: 4.8 MB on 112x112) go out to
 * L3 or memory and come back; here each thread keeps the rows of every intermediate tensor that
 * its current band needs in its own buffers, sized to stay in L2.
 *
 * Intermediate tensor t holds rows [lo, hi) of each channel plane, `cap` rows apart. For the next
 * band, the rows it still needs (a depthwise layer's overlap: 1 or 2 rows) move to the front of
 * each plane and only the new rows are computed, so no row is computed twice except at the
 * start of a thread's share. Threads split the batch's output rows into contiguous shares (at
 * batch 1, each takes a part of the image). Every output element is computed by the same kernel
 * arithmetic as a layer run alone, so results do not depend on the thread count or the bands. */
#include <string.h>

#include "fc_internal.h"
#include "fc_kernels.h"

/* Bytes a thread's band aims to keep in flight (intermediate rows and the band's input and
 * output rows): three quarters of Zen 4's 1 MiB of L2 per core (Ice Lake has 1.25 MiB); 512 KiB
 * cut MobileNetV2's 112x112 block to 3-row bands, 1 MiB measured no faster (docs/kernels.md). */
#define FC_CHAIN_BAND_BYTES (768u << 10)

static int is_depthwise(const fc_conv2d_params* p) {
  return p->groups == p->in_channels && p->groups > 1;
}

int fc_conv_chain_applies(const fc_conv2d_params* p, int algorithm) {
  if (p->activation >= FC_ACT_TANH) return 0; /* the stores clamp; nothing runs after them */
  if (algorithm == FC_CONV_IMPLICIT) return fc_conv2d_stem_rows_applies(p);
  if (is_depthwise(p)) {
    return algorithm == FC_CONV_DIRECT && fc_dwconv3x3_applies(p) &&
           p->out_channels == p->in_channels && p->pad_top <= 2 && p->pad_left <= 2;
  }
  return algorithm == FC_CONV_GEMM && p->groups == 1 && p->kernel_h == 1 && p->kernel_w == 1 &&
         p->stride_h == 1 && p->stride_w == 1 && p->pad_top == 0 && p->pad_left == 0 &&
         fc_conv2d_packs_gemm_a(p);
}

/* A tensor as a band sees it: rows [lo, hi) of `channels` planes, row r of channel c at
 * data + c * plane + (r - lo) * w. The chain's input and output are whole images (lo = 0). */
typedef struct band_tensor {
  float* data;
  size_t plane, w, lo, hi;
} band_tensor;

static float* row_at(const band_tensor* t, size_t c, size_t r) {
  return t->data + c * t->plane + (r - t->lo) * t->w;
}

typedef struct rows {
  size_t lo, hi;
} rows;

/* Input rows a band of `rows` output rows of stage p spans. */
static size_t span(const fc_conv2d_params* p, size_t rows) {
  return (rows - 1) * p->stride_h + (p->kernel_h - 1) * p->dilation_h + 1;
}

/* The input rows that output rows `out` of stage p read (clipped to the image). */
static rows input_rows(const fc_conv2d_params* p, rows out) {
  if (p->kernel_h == 1) return out;
  const ptrdiff_t first = (ptrdiff_t)(out.lo * p->stride_h) - (ptrdiff_t)p->pad_top;
  const ptrdiff_t end = first + (ptrdiff_t)span(p, out.hi - out.lo);
  rows in = {first > 0 ? (size_t)first : 0, end > 0 ? (size_t)end : 0};
  in.hi = fc_min(in.hi, p->in_h);
  return in;
}

/* The most rows of tensor t (the input of stage t) a band of `band` output rows needs. */
static size_t rows_needed(const fc_chain_stage* s, size_t n, size_t t, size_t band) {
  size_t r = band;
  for (size_t i = n; i-- > t;) {
    r = fc_min(span(&s[i].p, r), s[i].p.in_h);
  }
  return r;
}

/* Floats of a thread's buffers for bands of `band` rows: tensors 1 .. n-1. */
static size_t buffer_floats(const fc_chain_stage* s, size_t n, size_t band) {
  size_t floats = 0;
  for (size_t t = 1; t < n; t++) {
    floats += s[t].p.in_channels * rows_needed(s, n, t, band) * s[t].p.in_w;
  }
  return floats;
}

/* The most output rows per band whose working set fits FC_CHAIN_BAND_BYTES (at least one, a
 * multiple of the depthwise kernels' FC_DW_ROWS when that is more). */
static size_t band_rows(const fc_chain_stage* s, size_t n) {
  const fc_conv2d_params* last = &s[n - 1].p;
  size_t best = 1;
  for (size_t band = 1; band <= last->out_h; band++) {
    const size_t in_bytes = s[0].p.in_channels * rows_needed(s, n, 0, band) * s[0].p.in_w;
    const size_t out_bytes = last->out_channels * band * last->out_w;
    const size_t bytes = (buffer_floats(s, n, band) + in_bytes + out_bytes) * sizeof(float);
    if (bytes > FC_CHAIN_BAND_BYTES) break;
    best = band;
  }
  return best >= FC_DW_ROWS ? best / FC_DW_ROWS * FC_DW_ROWS : best;
}

/* Rows [a, b) of a 1x1 stage's output: Y (O x pixels) = W * X over the band's pixels, X read in
 * place (channel k's rows are contiguous) or packed, as conv_gemm chooses for that many pixels.
 * A residual is copied into the rows first and accumulated. */
static int pointwise_rows(const fc_chain_stage* st, const band_tensor* in, band_tensor* out,
                          size_t a, size_t b, const float* residual) {
  const fc_conv2d_params* p = &st->p;
  const size_t npix = (b - a) * p->out_w, K = p->in_channels, O = p->out_channels;
  const float* x = row_at(in, 0, a);
  float* y = row_at(out, 0, a);
  if (residual) {
    const size_t image = p->out_h * p->out_w;
    for (size_t c = 0; c < O; c++) {
      const float* r = residual + c * image + a * p->out_w;
      if (r != y + c * out->plane) memcpy(y + c * out->plane, r, npix * sizeof(float));
    }
  }
  const fc_matrix_src matrix = {x, in->plane};
  fc_b_operand operand = fc_matrix_operand(&matrix);
  if (fc_gemm_reads_in_place(O, npix)) {
    ptrdiff_t* offsets = (ptrdiff_t*)fc_workspace(FC_WS_TABLE, K * sizeof(ptrdiff_t));
    if (!offsets) return FC_ERROR_NOMEM;
    for (size_t k = 0; k < K; k++) offsets[k] = (ptrdiff_t)(k * in->plane);
    operand = (fc_b_operand){NULL, NULL, NULL, x, offsets, 0, 0, 0, NULL};
  }
  return fc_gemm_packed(O, npix, K, st->weights, &operand, st->bias, NULL, residual != NULL,
                        p->activation, y, out->plane, 1);
}

/* Rows [a, b) of a depthwise stage's output, FC_DW_ROWS at a time per channel: input rows
 * outside the image (or outside the band, read only for rows past b, which go to `spill`) are
 * a row of zeros. */
static void depthwise_rows(const fc_chain_stage* st, const band_tensor* in, band_tensor* out,
                           size_t a, size_t b, const float* zeros, float* spill) {
  const fc_conv2d_params* p = &st->p;
  const fc_vector_config* vk = fc_vector_config_get();
  const fc_dwconv_fn kernel = p->stride_h == 1 ? vk->dwconv3x3s1 : vk->dwconv3x3s2;
  const size_t s = p->stride_h, in_rows = (FC_DW_ROWS - 1) * s + 3;
  const float lo = fc_act_min(p->activation), hi = fc_act_max(p->activation);
  for (size_t c = 0; c < p->out_channels; c++) {
    const fc_window_epilogue ep = {0, st->bias ? st->bias[c] : 0.0f, lo, hi};
    for (size_t oh0 = a; oh0 < b; oh0 += FC_DW_ROWS) {
      const float* x[2 * FC_DW_ROWS + 1];
      float* y[FC_DW_ROWS];
      for (size_t j = 0; j < in_rows; j++) {
        const ptrdiff_t ih = (ptrdiff_t)(oh0 * s + j) - (ptrdiff_t)p->pad_top;
        const int held = ih >= (ptrdiff_t)in->lo && ih < (ptrdiff_t)in->hi;
        x[j] = held ? row_at(in, c, (size_t)ih) : zeros;
      }
      for (size_t r = 0; r < FC_DW_ROWS; r++) y[r] = oh0 + r < b ? row_at(out, c, oh0 + r) : spill;
      kernel(p->out_w, x, p->pad_left, p->in_w, st->weights + c * 9, &ep, y, NULL);
    }
  }
}

/* Keeps only rows from `first` of a band buffer (moving them to the front of each plane). */
static void drop_rows_before(band_tensor* t, size_t channels, size_t first) {
  if (first <= t->lo) {
    if (first < t->lo || t->hi == t->lo) t->lo = t->hi = first; /* a new share: start empty */
    return;
  }
  const size_t keep = t->hi > first ? t->hi - first : 0;
  if (keep) {
    for (size_t c = 0; c < channels; c++) {
      memmove(t->data + c * t->plane, row_at(t, c, first), keep * t->w * sizeof(float));
    }
  }
  t->lo = first;
  t->hi = first + keep;
}

typedef struct chain_job {
  const fc_chain_stage* stages;
  size_t n, batch, band;
  const float* residual;
  const float* x;
  float* y;
  int rc;
  fc_steal_queue queues[FC_MAX_TEAM]; /* each member's tail of output rows */
} chain_job;

/* One band: output rows [o0, o1) of image `image`, t[0] and t[n] its input and output,
 * t[1 .. n-1] the thread's buffers. */
static int chain_band(const chain_job* j, band_tensor* t, size_t image, size_t o0, size_t o1,
                      const float* zeros, float* spill) {
  const fc_chain_stage* s = j->stages;
  const size_t n = j->n;
  rows need[FC_CHAIN_MAX_STAGES + 1];
  need[n] = (rows){o0, o1};
  for (size_t i = n; i-- > 0;) need[i] = input_rows(&s[i].p, need[i + 1]);
  for (size_t i = 0; i < n; i++) {
    band_tensor* out = &t[i + 1];
    rows todo = need[i + 1];
    if (i + 1 < n) {
      drop_rows_before(out, s[i].p.out_channels, todo.lo);
      todo.lo = fc_min(out->hi > todo.lo ? out->hi : todo.lo, todo.hi);
      if (todo.lo == todo.hi) continue;
    }
    if (is_depthwise(&s[i].p)) {
      depthwise_rows(&s[i], &t[i], out, todo.lo, todo.hi, zeros, spill);
    } else if (s[i].algorithm == FC_CONV_IMPLICIT) { /* a stem: the first stage, x whole */
      const int rc = fc_conv2d_stem_rows(&s[i].p, s[i].weights, s[i].bias, t[0].data, todo.lo,
                                         todo.hi, row_at(out, 0, todo.lo), out->plane);
      if (rc) return rc;
    } else {
      const size_t image_floats = s[n - 1].p.out_channels * s[n - 1].p.out_h * s[n - 1].p.out_w;
      const float* residual = i + 1 == n && j->residual ? j->residual + image * image_floats : NULL;
      const int rc = pointwise_rows(&s[i], &t[i], out, todo.lo, todo.hi, residual);
      if (rc) return rc;
    }
    if (i + 1 < n) out->hi = todo.hi;
  }
  return 0;
}

/* Output rows [first, end) of the batch (image-major), band by band, from empty buffers: the
 * first band of each image's part computes the rows its taps need above it. */
static int chain_rows(const chain_job* j, size_t first, size_t end, float* buffer,
                      const float* zeros, float* spill) {
  const fc_chain_stage* s = j->stages;
  const size_t n = j->n, out_h = s[n - 1].p.out_h;
  band_tensor t[FC_CHAIN_MAX_STAGES + 1];
  int rc = 0;
  for (size_t g = first; g < end && rc == 0;) {
    const size_t image = g / out_h, r0 = g % out_h, r1 = fc_min(out_h, r0 + (end - g));
    const fc_conv2d_params* p0 = &s[0].p;
    const fc_conv2d_params* pn = &s[n - 1].p;
    t[0] = (band_tensor){(float*)j->x + image * p0->in_channels * p0->in_h * p0->in_w,
                         p0->in_h * p0->in_w, p0->in_w, 0, p0->in_h};
    t[n] = (band_tensor){j->y + image * pn->out_channels * pn->out_h * pn->out_w,
                         pn->out_h * pn->out_w, pn->out_w, 0, pn->out_h};
    float* next = buffer;
    for (size_t i = 1; i < n; i++) { /* empty buffers: the part starts anywhere */
      const size_t cap = rows_needed(s, n, i, j->band);
      t[i] = (band_tensor){next, cap * s[i].p.in_w, s[i].p.in_w, 0, 0};
      next += s[i].p.in_channels * cap * s[i].p.in_w;
    }
    for (size_t o0 = r0; o0 < r1 && rc == 0; o0 += j->band) {
      rc = chain_band(j, t, image, o0, fc_min(r1, o0 + j->band), zeros, spill);
    }
    g += r1 - r0;
  }
  return rc;
}

/* Member id's rows [*first, *end) and the start of its tail (the last quarter, in units of
 * *unit rows, at least a band: a unit starts from empty buffers, recomputing the rows above it
 * that its first band's taps read). */
static size_t chain_share_of(const chain_job* j, size_t id, size_t count, size_t* first,
                             size_t* end, size_t* unit) {
  fc_share(j->batch * j->stages[j->n - 1].p.out_h, id, count, first, end);
  const size_t tail = count > 1 && count <= FC_MAX_TEAM ? (*end - *first) / 4 : 0;
  *unit = tail / 2 > j->band ? tail / 2 : j->band;
  return tail >= j->band ? *end - tail : *end;
}

/* A thread's share of the batch's output rows, image by image, band by band; then its tail,
 * then the other members' tails, unit by unit (fc_steal_queue). */
static void chain_share(void* ctx, size_t id, size_t count) {
  chain_job* j = (chain_job*)ctx;
  const fc_chain_stage* s = j->stages;
  const size_t n = j->n;
  size_t first, end, unit;
  const size_t tail_at = chain_share_of(j, id, count, &first, &end, &unit);
  if (count <= FC_MAX_TEAM) fc_steal_open(&j->queues[id], (end - tail_at + unit - 1) / unit);
  if (first == end) return;
  size_t widest = 0; /* the zero row and the spill row */
  for (size_t i = 0; i < n; i++) {
    if (s[i].p.in_w > widest) widest = s[i].p.in_w;
    if (s[i].p.out_w > widest) widest = s[i].p.out_w;
  }
  float* buffer = (float*)fc_workspace(
      FC_WS_CHAIN, (buffer_floats(s, n, j->band) + 2 * widest) * sizeof(float));
  if (!buffer) {
#pragma omp atomic write
    j->rc = FC_ERROR_NOMEM;
    return;
  }
  float* zeros = buffer + buffer_floats(s, n, j->band);
  float* spill = zeros + widest;
  memset(zeros, 0, widest * sizeof(float));
  const unsigned fp_mode = fc_fp_enter();
  int rc = chain_rows(j, first, tail_at, buffer, zeros, spill);
  for (size_t other = 0; other < count && count <= FC_MAX_TEAM && rc == 0; other++) {
    const size_t victim = (id + other) % count; /* itself first, from the front */
    size_t v_first, v_end, v_unit;
    const size_t v_tail = chain_share_of(j, victim, count, &v_first, &v_end, &v_unit);
    ptrdiff_t u;
    while (rc == 0 && (u = fc_steal_take(&j->queues[victim], other != 0)) >= 0) {
      const size_t r0 = v_tail + (size_t)u * v_unit;
      rc = chain_rows(j, r0, fc_min(v_end, r0 + v_unit), buffer, zeros, spill);
    }
  }
  if (rc) {
#pragma omp atomic write
    j->rc = rc;
  }
  fc_fp_exit(fp_mode);
}

int fc_conv_chain_run(const fc_chain_stage* stages, size_t n, size_t batch, const float* residual,
                      const float* x, float* y) {
  double flops = 0;
  for (size_t i = 0; i < n; i++) {
    const fc_conv2d_params* p = &stages[i].p;
    if (stages[i].packed_tile != fc_conv2d_packed_tile(stages[i].algorithm)) {
      return FC_ERROR_STALE;
    }
    flops += 2.0 * batch * p->out_channels * p->out_h * p->out_w * (p->in_channels / p->groups) *
             p->kernel_h * p->kernel_w;
  }
  chain_job job = {stages, n, batch, band_rows(stages, n), residual, x, y, 0, {{0}}};
  fc_run_team(fc_threads_for(flops), chain_share, &job);
  return job.rc;
}
