/* The GEMM driver: BLIS-style blocking around a register-tiled micro-kernel.
 *
 * Each thread owns a block of C: a range of NR-column panels or of MR-row panels (see
 * thread_grid). Within it, loops run outermost first over column blocks (at most FC_NC columns
 * whose B panels fit FC_B_BLOCK, kept in L2), K blocks of FC_KC, A panels (kept in L1), then B
 * panels. Consecutive tiles therefore walk along the same MR rows of C, which its row-major
 * layout (output channels x pixels) streams; walking down the rows first touched up to 256 rows
 * per column panel, more streams than the prefetchers follow once C is out of cache, as it is
 * in a network (ResNet-50's 64 -> 256 1x1 layers on 56x56: 1.6 -> 1.06 ms in the network).
 * A is packed once, whole (it is the weight matrix of a layer). B is packed by each thread for
 * its own K x NR panels through a callback (so im2col writes straight into the panels), or was
 * packed once (dense weights), or is read in place (the implicit GEMM of a convolution; see
 * block_run for its loop order). There is no barrier inside the parallel region. K is never
 * split, so every element of C sums its products in the same order whatever the thread count. */
#include <math.h>
#include <string.h>

#include "fastconv.h"
#include "fc_internal.h"
#include "fc_kernels.h"

#define FC_NC 1024 /* a multiple of every NR */
#define FC_B_BLOCK (256 << 10) /* bytes of B panels per column block: a quarter of Zen 4's L2 */
#define FC_MC 256 /* B read in place: rows of A per block (MC x KC floats, 256 KiB, in L2) */
/* fc_gemm_pixels: K blocks twice as deep. Its tiles are transposed and stored once per K block,
 * which costs more than a plain store; 512 measured 2-6 % faster than 256 on 1x1 layers of 512
 * to 1024 input channels (one thread, caches flushed), 128 and 64 5-15 % slower. */
#define FC_PIXEL_KC 512

size_t fc_packed_a_size(size_t M, size_t K, size_t mr) { return fc_round_up(M, mr) * K; }

/* Panel layout: for each K block (k0, kc), for each MR-row panel i, kc x MR floats, k-major,
 * at dst + k0 * Mpad + i * MR * kc. Rows past M are zero. */
void fc_pack_a(size_t M, size_t K, const float* a, ptrdiff_t rs, ptrdiff_t cs, size_t mr,
               float* dst) {
  const size_t mpad = fc_round_up(M, mr);
  for (size_t k0 = 0; k0 < K; k0 += FC_KC) {
    const size_t kc = fc_min(FC_KC, K - k0);
    for (size_t m0 = 0; m0 < mpad; m0 += mr) {
      float* panel = dst + k0 * mpad + m0 * kc;
      if (rs == 1 && m0 + mr <= M) { /* the panel's rows are contiguous in each column of A */
        const float* src = a + (ptrdiff_t)m0 + (ptrdiff_t)k0 * cs;
        for (size_t kk = 0; kk < kc; kk++) { /* a loop: 2x faster than memcpy of mr floats */
          for (size_t r = 0; r < mr; r++) panel[kk * mr + r] = src[(ptrdiff_t)kk * cs + r];
        }
        continue;
      }
      for (size_t r = 0; r < mr; r++) {
        const size_t m = m0 + r;
        if (m >= M) {
          for (size_t kk = 0; kk < kc; kk++) panel[kk * mr + r] = 0.0f;
          continue;
        }
        const float* src = a + (ptrdiff_t)m * rs + (ptrdiff_t)k0 * cs;
        for (size_t kk = 0; kk < kc; kk++) panel[kk * mr + r] = src[(ptrdiff_t)kk * cs];
      }
    }
  }
}

/* One A panel of fc_pack_a_rows whose `mr` rows (a constant where inlined) are evenly spaced,
 * `step` apart from off0. */
static inline __attribute__((always_inline)) void pack_rows_even(
    size_t kc, const float* base, const ptrdiff_t* cols, ptrdiff_t off0, ptrdiff_t step,
    size_t mr, float* panel) {
  for (size_t kk = 0; kk < kc; kk++) {
    const float* src = base + cols[kk] + off0;
    for (size_t r = 0; r < mr; r++) panel[kk * mr + r] = src[(ptrdiff_t)r * step];
  }
}

/* One full 8-row A panel of fc_pack_a_rows gathered row by row (its rows run over the end of an
 * output row), the 8 row offsets held in registers. */
static void pack_rows_gather8(size_t kc, const float* base, const ptrdiff_t* cols,
                              const ptrdiff_t* off, float* panel) {
  ptrdiff_t o[8];
  for (size_t r = 0; r < 8; r++) o[r] = off[r];
  for (size_t kk = 0; kk < kc; kk++) {
    const float* src = base + cols[kk];
    for (size_t r = 0; r < 8; r++) panel[kk * 8 + r] = src[o[r]];
  }
}

/* fc_pack_a for an A gathered through two offset tables: A[m][k] = base[rows[m] + cols[k]] (the
 * pixels of a convolution's input as rows, across images, at a stride or in phase planes; its
 * channels and taps as columns). A panel whose rows are evenly spaced (most of them) is copied
 * with that constant step, which the compiler vectorises; the others are gathered row by row.
 * Both are compiled for MR = 8 (AVX-512) with the row loop unrolled: with mr a variable the
 * copies took twice as long (a K = 2304 A of 196 rows over phase planes, 25 panels: 102 -> 68
 * us, a harness on one thread). */
void fc_pack_a_rows(size_t M, size_t K, const float* base, const ptrdiff_t* rows,
                    const ptrdiff_t* cols, size_t mr, float* dst) {
  const size_t mpad = fc_round_up(M, mr);
  for (size_t k0 = 0; k0 < K; k0 += FC_KC) {
    const size_t kc = fc_min(FC_KC, K - k0);
    for (size_t m0 = 0; m0 < mpad; m0 += mr) {
      float* panel = dst + k0 * mpad + m0 * kc;
      const size_t used = fc_min(mr, M - fc_min(M, m0));
      const ptrdiff_t* off = rows + m0;
      const ptrdiff_t step = used > 1 ? off[1] - off[0] : 1;
      size_t even = used == mr;
      for (size_t r = 1; r < used && even; r++) even = off[r] - off[r - 1] == step;
      if (even && step == 1 && mr == 8) {
        pack_rows_even(kc, base, cols + k0, off[0], 1, 8, panel);
      } else if (even && step == 1 && mr == 6) {
        pack_rows_even(kc, base, cols + k0, off[0], 1, 6, panel);
      } else if (even) {
        pack_rows_even(kc, base, cols + k0, off[0], step, mr, panel);
      } else if (used == 8 && mr == 8) {
        pack_rows_gather8(kc, base, cols + k0, off, panel);
      } else {
        for (size_t kk = 0; kk < kc; kk++) {
          const float* src = base + cols[k0 + kk];
          float* d = panel + kk * mr;
          for (size_t r = 0; r < used; r++) d[r] = src[off[r]];
          for (size_t r = used; r < mr; r++) d[r] = 0.0f;
        }
      }
    }
  }
}

typedef struct strided_b {
  const float* b;
  ptrdiff_t rs, cs;
} strided_b;

static void pack_b_strided(const void* ctx, size_t k0, size_t kc, size_t n0, size_t nr_used,
                           size_t nr, float* dst) {
  const strided_b* s = (const strided_b*)ctx;
  for (size_t kk = 0; kk < kc; kk++) {
    const float* src = s->b + (ptrdiff_t)(k0 + kk) * s->rs + (ptrdiff_t)n0 * s->cs;
    float* d = dst + kk * nr;
    if (s->cs == 1) {
      memcpy(d, src, nr_used * sizeof(float));
    } else {
      for (size_t j = 0; j < nr_used; j++) d[j] = src[(ptrdiff_t)j * s->cs];
    }
    for (size_t j = nr_used; j < nr; j++) d[j] = 0.0f;
  }
}

static const float* matrix_row(const fc_matrix_src* s, size_t k) {
  if (s->b2 && k >= s->split) return s->b2 + (k - s->split) * s->n;
  return s->b + (s->offsets ? s->offsets[k] : (ptrdiff_t)(k * s->n));
}

/* Any panel, as the callback of a matrix operand: pack_block leaves it the edge panels. */
static void pack_b_matrix(const void* ctx, size_t k0, size_t kc, size_t n0, size_t nr_used,
                          size_t nr, float* dst) {
  const fc_matrix_src* s = (const fc_matrix_src*)ctx;
  for (size_t kk = 0; kk < kc; kk++) { /* columns past N are zero */
    float* d = dst + kk * nr;
    memcpy(d, matrix_row(s, k0 + kk) + n0, nr_used * sizeof(float));
    for (size_t j = nr_used; j < nr; j++) d[j] = 0.0f;
  }
}

/* One row of B into `panels` panels kc rows deep, `nr` (a constant where inlined) floats each:
 * with a library memcpy call per 64-byte piece, packing took 8.4 % of ResNet-50's time, 6.0 %
 * inline (perf, AVX2, one thread). */
static inline __attribute__((always_inline)) void scatter_row(const float* row, size_t panels,
                                                              size_t kc, size_t nr, float* d) {
  for (size_t j = 0; j < panels; j++) memcpy(d + j * kc * nr, row + j * nr, nr * sizeof(float));
}

/* Rows this far ahead are fetched while a row is copied: a large image's rows are pages apart
 * (56 x 56 floats), where the hardware prefetchers do not run ahead.
 * Measured against none and 8 rows ahead, one thread, caches flushed: 256 -> 64 channels on
 * 56x56 x0.68 (none x0.82, 8 the same as 4), Zen 3. */
#define FC_PACK_AHEAD 4

/* Whole panels, row by row: each row of B is read once, across all the panels of the block.
 * Panel by panel, a 56x56 image's 256 rows were read one cache line per row per panel, which
 * took 31 % of ResNet-50's 256 -> 64 1x1 layer (15 % this way; perf, one thread, Zen 3). */
static void pack_b_matrix_panels(const void* ctx, size_t k0, size_t kc, size_t n0, size_t panels,
                                 size_t nr, float* dst) {
  const fc_matrix_src* s = (const fc_matrix_src*)ctx;
  const size_t bytes = panels * nr * sizeof(float);
  for (size_t kk = 0; kk < kc; kk++) {
    const float* row = matrix_row(s, k0 + kk) + n0;
    if (kk + FC_PACK_AHEAD < kc) {
      const char* ahead = (const char*)(matrix_row(s, k0 + kk + FC_PACK_AHEAD) + n0);
      for (size_t q = 0; q < bytes; q += 64) __builtin_prefetch(ahead + q, 0, 3);
    }
    if (nr == 16) scatter_row(row, panels, kc, 16, dst + kk * nr);
    else if (nr == 32) scatter_row(row, panels, kc, 32, dst + kk * nr);
    else scatter_row(row, panels, kc, nr, dst + kk * nr);
  }
}

fc_b_operand fc_matrix_operand(const fc_matrix_src* m) {
  return (fc_b_operand){pack_b_matrix, m, NULL, NULL, NULL, 0, 0, 0, pack_b_matrix_panels};
}

void fc_activation_row(size_t n, int activation, float* y) {
  if (activation == FC_ACT_TANH) {
    for (size_t i = 0; i < n; i++) y[i] = tanhf(y[i]);
  } else if (activation == FC_ACT_SIGMOID) {
    for (size_t i = 0; i < n; i++) {
      const float v = y[i];
      if (v >= 0.0f) {
        y[i] = 1.0f / (1.0f + expf(-v));
      } else {
        const float e = expf(v);
        y[i] = e / (1.0f + e);
      }
    }
  }
}

typedef struct tile_job {
  const fc_gemm_config* cfg;
  float* c;
  size_t c_rs;
  int activation;
  int last;
} tile_job;

/* Tanh and sigmoid, which the kernels' store does not apply, over rows x cols of C at c once
 * the last K block is stored there. */
static void finish_activation(const tile_job* job, float* c, size_t rows, size_t cols) {
  if (!job->last || (job->activation != FC_ACT_TANH && job->activation != FC_ACT_SIGMOID)) return;
  for (size_t r = 0; r < rows; r++) fc_activation_row(cols, job->activation, c + r * job->c_rs);
}

/* One MR x NR tile, of which the kernel reads and writes only the part inside C. */
static void run_tile(const tile_job* job, size_t kc, const float* a, const float* b,
                     const ptrdiff_t* b_offsets, size_t m0, size_t mr_used, size_t n0,
                     size_t nr_used, const fc_gemm_epilogue* ep) {
  float* c = job->c + m0 * job->c_rs + n0;
  job->cfg->fn(mr_used, nr_used, kc, a, b, b_offsets, c, job->c_rs, ep);
  finish_activation(job, c, mr_used, nr_used);
}

/* How a team shares the tiles of C: tm row groups times tn column groups. Splitting columns
 * lets each thread pack only its own B panels, but every thread then streams all of A (the
 * weights); with few column panels (late, small-image layers, large weights) the rows are split
 * instead, each thread reading half of A and packing its own copy of the few B panels. */
static void thread_grid(size_t team, size_t n_mpanels, size_t n_npanels, size_t* tm, size_t* tn) {
  if (n_npanels < 4 * team && n_mpanels >= 2 * team) {
    *tm = team;
    *tn = 1;
  } else {
    *tn = fc_min(team, n_npanels);
    *tm = team / *tn;
  }
}

/* Where the NR-column panel j starts: logical column `col` (bias_col's index), `b_col` in B
 * read in place, `c_col` in C, and its width. N is one row of columns, or rows of b->seg. */
typedef struct panel_pos {
  size_t col, b_col, c_col, cols;
} panel_pos;

static panel_pos panel_at(const fc_b_operand* b, size_t N, size_t nr, size_t j) {
  if (!b->seg) return (panel_pos){j * nr, j * nr, j * nr, fc_min(nr, N - j * nr)};
  const size_t per_row = fc_round_up(b->seg, nr) / nr, s = j / per_row, q = (j % per_row) * nr;
  return (panel_pos){s * b->seg + q, s * b->seg_b + q, s * b->seg_c + q, fc_min(nr, b->seg - q)};
}

/* Panel j of the current K block (k0, kc): where the micro-kernel reads it. */
static const float* b_panel(const fc_b_operand* b, size_t npad, size_t nr, size_t k0, size_t kc,
                            size_t j, size_t p0, const float* bpanels, const panel_pos* pos) {
  if (b->base) return b->base + pos->b_col;
  if (b->packed) return b->packed + k0 * npad + j * kc * nr;
  return bpanels + (j - p0) * kc * nr;
}

/* One column block at one K block, as the tiles of it see it. */
typedef struct block {
  const tile_job* job;
  fc_gemm_epilogue* ep;
  const float* a; /* the A panels of this K block */
  const fc_b_operand* b;
  const ptrdiff_t* b_offsets;
  const float* bpanels;
  const float *bias_row, *bias_col;
  size_t M, N, npad, k0, kc, p0;
} block;

/* Tile (A panel i, B panel j) of the block. */
static void block_tile(const block* s, size_t i, size_t j) {
  const size_t mr = s->job->cfg->mr, nr = s->job->cfg->nr, m0 = i * mr;
  const panel_pos pos = panel_at(s->b, s->N, nr, j);
  const float* bj = b_panel(s->b, s->npad, nr, s->k0, s->kc, j, s->p0, s->bpanels, &pos);
  s->ep->bias_row = s->job->last && s->bias_row ? s->bias_row + m0 : NULL;
  s->ep->bias_col = s->job->last && s->bias_col ? s->bias_col + pos.col : NULL;
  run_tile(s->job, s->kc, s->a + m0 * s->kc, bj, s->b_offsets, m0, fc_min(mr, s->M - m0),
           pos.c_col, pos.cols, s->ep);
}

/* Row panel i against B panels [p0, p1) of a packed B, none of them narrow: block_tile's loop
 * with what depends only on the row hoisted out, the panels `kc * nr` floats apart. A short K
 * makes tiles short (K = 32: about 200 cycles), where block_tile's bookkeeping per tile took
 * 3 % of MobileNetV2's time (perf, one thread, Zen 3). */
static void block_row(const block* s, size_t i, size_t p0, size_t p1) {
  const tile_job* job = s->job;
  const size_t mr = job->cfg->mr, nr = job->cfg->nr, m0 = i * mr, rows = fc_min(mr, s->M - m0);
  const float* a = s->a + m0 * s->kc;
  float* c = job->c + m0 * job->c_rs;
  const panel_pos first = panel_at(s->b, s->N, nr, p0);
  const float* bj = b_panel(s->b, s->npad, nr, s->k0, s->kc, p0, s->p0, s->bpanels, &first);
  s->ep->bias_row = job->last && s->bias_row ? s->bias_row + m0 : NULL;
  const float* bias_col = job->last ? s->bias_col : NULL;
  for (size_t j = p0; j < p1; j++, bj += s->kc * nr) {
    const size_t col = j * nr;
    s->ep->bias_col = bias_col ? bias_col + col : NULL;
    job->cfg->fn(rows, fc_min(nr, s->N - col), s->kc, a, bj, NULL, c + col, job->c_rs, s->ep);
  }
  if (p1 > p0) finish_activation(job, c + p0 * nr, rows, fc_min(p1 * nr, s->N) - p0 * nr);
}

/* Whether panel j is left to the narrow kernel (block_narrow) instead of tile by tile. */
static int block_is_narrow(const block* s, size_t j) {
  const fc_gemm_config* cfg = s->job->cfg;
  return cfg->narrow && panel_at(s->b, s->N, cfg->nr, j).cols <= cfg->narrow_cols;
}

/* Panel j against A panels i0 and i1 (i1 = i0 or i0 + 1) through the narrow kernel. */
static void block_narrow(const block* s, size_t i0, size_t i1, size_t j) {
  const size_t mr = s->job->cfg->mr, m0 = i0 * mr, rows = fc_min((i1 - i0 + 1) * mr, s->M - m0);
  const panel_pos pos = panel_at(s->b, s->N, s->job->cfg->nr, j);
  const float* bj = b_panel(s->b, s->npad, s->job->cfg->nr, s->k0, s->kc, j, s->p0, s->bpanels,
                            &pos);
  s->ep->bias_row = s->job->last && s->bias_row ? s->bias_row + m0 : NULL;
  s->ep->bias_col = s->job->last && s->bias_col ? s->bias_col + pos.col : NULL;
  float* c = s->job->c + m0 * s->job->c_rs + pos.c_col;
  const size_t b_stride = s->b->packed ? s->job->cfg->nr : pos.cols; /* see the packing */
  s->job->cfg->narrow(rows, pos.cols, s->kc, s->a + m0 * s->kc, mr * s->kc, bj, b_stride,
                      s->b_offsets, c, s->job->c_rs, s->ep);
  finish_activation(s->job, c, rows, pos.cols);
}

/* NR-column panels per column block: as many as fit FC_B_BLOCK at the block's depth kc. */
static size_t column_block_panels(size_t kc, size_t nr) {
  const size_t fit = FC_B_BLOCK / (kc * nr * sizeof(float));
  return fit < 1 ? 1 : fc_min(FC_NC / nr, fit);
}

/* The tail of a thread's share of column panels that the other threads may take
 * (fc_steal_queue): the last quarter of the share, in units of a quarter of that. */
typedef struct tail_queue {
  fc_steal_queue q;
  size_t first, unit, end; /* panels: where the tail starts, per unit, where the share ends */
} tail_queue;

/* The arguments of fc_gemm_packed, shared by its team. */
typedef struct gemm_job {
  size_t M, N, K, mpad, npad, n_mpanels, n_npanels, block_panels, bsize;
  const float* a_packed;
  const fc_b_operand* b;
  const float *bias_row, *bias_col;
  int accumulate, activation;
  float* c;
  size_t c_rs;
  float* bbuf;
  tail_queue* tails; /* FC_MAX_TEAM of them */
} gemm_job;

/* The tiles of A panels [mp0, mp1) against the block's B panels [p0, p1). B read in place (the
 * implicit GEMM: rows scattered over phase planes) keeps each B panel in L1 across FC_MC rows of
 * A instead: re-reading its rows from L2 for every A panel measured slower (VGG-16 +4 %). Not
 * when it is cut into output rows (seg: a wide image stored straight into its output, the stems
 * of few input channels, whose B rows a block reads all from L1 or L2 anyway): there C is the
 * output, new memory in a network, and walking down its rows measured slower (one thread, the
 * caches flushed between calls: MobileNetV2's stem 0.47 -> 0.39 ms, ResNet's 2.55 -> 2.52). */
static void block_run(const block* blk, size_t mp0, size_t mp1, size_t p0, size_t p1) {
  if (blk->b->base && !blk->b->seg) {
    for (size_t i0 = mp0; i0 < mp1; i0 += FC_MC / blk->job->cfg->mr) {
      const size_t i1 = fc_min(mp1, i0 + FC_MC / blk->job->cfg->mr);
      for (size_t j = p0; j < p1; j++) {
        if (!block_is_narrow(blk, j)) {
          for (size_t i = i0; i < i1; i++) block_tile(blk, i, j);
        } else {
          for (size_t i = i0; i < i1; i += 2) block_narrow(blk, i, fc_min(i + 1, i1 - 1), j);
        }
      }
    }
    return;
  }
  /* A narrow panel runs for two rows of tiles at once: on the second, or on a last one. Only
   * the last panel of B can be narrow. */
  const size_t wide_end = p1 > p0 && block_is_narrow(blk, p1 - 1) ? p1 - 1 : p1;
  for (size_t i = mp0; i < mp1; i++) {
    const size_t pair = (i - mp0) % 2 ? i - 1 : i;
    if (!blk->b->base) {
      block_row(blk, i, p0, wide_end);
      if (wide_end < p1 && (pair < i || i + 1 == mp1)) block_narrow(blk, pair, i, wide_end);
      continue;
    }
    for (size_t j = p0; j < p1; j++) {
      if (!block_is_narrow(blk, j)) {
        block_tile(blk, i, j);
      } else if (pair < i || i + 1 == mp1) {
        block_narrow(blk, pair, i, j);
      }
    }
  }
}

/* B panels [p0, p1) of K block (k0, kc) into bpanels: whole ones together where the operand
 * can, the others one by one. */
static void pack_block(const fc_b_operand* b, const fc_gemm_config* cfg, size_t N, size_t k0,
                       size_t kc, size_t p0, size_t p1, float* bpanels) {
  const size_t nr = cfg->nr;
  size_t j = p0;
  if (b->pack_panels && fc_min(p1, N / nr) > p0) {
    j = fc_min(p1, N / nr);
    b->pack_panels(b->ctx, k0, kc, p0 * nr, j - p0, nr, bpanels);
  }
  for (; j < p1; j++) {
    const size_t col = j * nr, used = fc_min(nr, N - col);
    /* A narrow panel is packed compact, its rows `used` floats apart (4 KiB at kc = 256 for 4
     * columns, against 32 KiB whose every cache line would serve 16 bytes). */
    const int narrow = cfg->narrow && used <= cfg->narrow_cols;
    b->pack(b->ctx, k0, kc, col, used, narrow ? used : nr, bpanels + (j - p0) * kc * nr);
  }
}

/* Column panels [p0, p1) (at most a column block) against A panels [mp0, mp1), every K block. */
static void column_block(const gemm_job* g, const fc_gemm_config* cfg, float* bpanels, size_t mp0,
                         size_t mp1, size_t p0, size_t p1) {
  const fc_b_operand* b = g->b;
  const float lo = fc_act_min(g->activation), hi = fc_act_max(g->activation);
  for (size_t k0 = 0; k0 < g->K; k0 += FC_KC) {
    const size_t kc = fc_min(FC_KC, g->K - k0);
    const int last = k0 + kc == g->K;
    const tile_job job = {cfg, g->c, g->c_rs, g->activation, last};
    fc_gemm_epilogue ep = {g->accumulate || k0 > 0, NULL, NULL, last ? lo : -INFINITY,
                           last ? hi : INFINITY};
    if (b->pack) pack_block(b, cfg, g->N, k0, kc, p0, p1, bpanels);
    const block blk = {&job, &ep, g->a_packed + k0 * g->mpad, b,
                       b->base ? b->offsets + k0 : NULL, bpanels, g->bias_row, g->bias_col,
                       g->M, g->N, g->npad, k0, kc, p0};
    block_run(&blk, mp0, mp1, p0, p1);
  }
}

static void run_unit(const gemm_job* g, const fc_gemm_config* cfg, float* bpanels,
                     const tail_queue* q, size_t u) {
  const size_t i0 = q->first + u * q->unit, i1 = fc_min(q->end, i0 + q->unit);
  column_block(g, cfg, bpanels, 0, g->n_mpanels, i0, i1);
}

/* The fewest panels a tail unit may have. A unit streams all of A through its column panels: a
 * unit of A larger than a quarter of L2 (AlexNet's 384 -> 384 on 13x13: 2.6 MB) reads it from
 * L3 again for 16 columns of work, and with 1-panel units AlexNet measured x1.05 on two
 * threads; so such units are 4 panels or none. */
static size_t min_unit(const gemm_job* g) {
  return g->mpad * g->K * sizeof(float) > ((size_t)128 << 10) ? 4 : 1;
}

/* Sets up thread id's queue over the tail of its share [s0, s1) of column panels; returns where
 * the tail starts. A unit must fit the thread's B panels: at most a column block. */
static size_t setup_tail(const gemm_job* g, tail_queue* q, size_t s0, size_t s1) {
  const size_t least = min_unit(g);
  size_t tail = (s1 - s0) / 4;
  if (tail < least) tail = 0; /* too few panels to share */
  const size_t unit = fc_min(g->block_panels, tail / 4 > least ? tail / 4 : least);
  q->first = s1 - tail, q->unit = unit ? unit : 1, q->end = s1;
  fc_steal_open(&q->q, (tail + q->unit - 1) / q->unit);
  return s1 - tail;
}

/* One thread's tiles of C. The runtime may give fewer threads than asked for, so the grid is
 * made from the team actually running. When the team splits the columns, each thread runs the
 * first three quarters of its share, then its tail queue, then steals the other threads' tail
 * units: on a shared machine either thread of two may run 10-25 % slower than the other
 * through a call (ResNet-50 on two threads: the threads' times differed by 7 ms per predict of
 * 60-75 over its GEMMs, by 34 of 92 in a slow phase). Every tile is still computed by one
 * thread in the same K order, so results do not depend on who computes it. A split of the rows
 * (few column panels: 7x7 images) shares no tail: a unit of rows, even the thread's own, packs
 * all of B again for its 48 rows, and without the units the layers ran x0.935-0.958 on two
 * threads (2048 -> 512, 512 -> 2048, 832 -> 384 and 320 -> 1280 channels on 7x7; ResNet-50
 * x0.991 / x0.994 at batch 1; GoogLeNet, ResNet-152, MobileNetV2 x1.00; Zen 3, session 15). */
static void gemm_share(void* ctx, size_t id, size_t team) {
  const gemm_job* g = (const gemm_job*)ctx;
  const fc_gemm_config* cfg = fc_gemm_config_get();
  const unsigned fp_mode = fc_fp_enter();
  size_t tm, tn;
  thread_grid(team, g->n_mpanels, g->n_npanels, &tm, &tn);
  float* bpanels = g->bbuf + id * g->bsize;
  size_t mp0, mp1, np0, np1;
  fc_share(g->n_mpanels, id % tm, tm, &mp0, &mp1);
  fc_share(g->n_npanels, id / tm, tn, &np0, &np1);
  if (id >= tm * tn) np1 = np0; /* a thread left over by the grid */
  const int by_cols = tm == 1 && tn > 1;
  tail_queue* mine = by_cols && team <= FC_MAX_TEAM ? &g->tails[id] : NULL;
  const size_t own_end = mine ? setup_tail(g, mine, np0, np1) : np1;
  for (size_t p0 = np0; p0 < own_end; p0 += g->block_panels) {
    column_block(g, cfg, bpanels, mp0, mp1, p0, fc_min(own_end, p0 + g->block_panels));
  }
  if (mine) {
    ptrdiff_t u;
    while ((u = fc_steal_take(&mine->q, 0)) >= 0) run_unit(g, cfg, bpanels, mine, (size_t)u);
    for (size_t other = 1; other < team; other++) {
      tail_queue* q = &g->tails[(id + other) % team];
      while ((u = fc_steal_take(&q->q, 1)) >= 0) run_unit(g, cfg, bpanels, q, (size_t)u);
    }
  }
  fc_fp_exit(fp_mode);
}

int fc_gemm_packed(size_t M, size_t N, size_t K, const float* a_packed, const fc_b_operand* b,
                   const float* bias_row, const float* bias_col, int accumulate, int activation,
                   float* c, size_t c_rs, int threads) {
  const fc_gemm_config* cfg = fc_gemm_config_get();
  const size_t mr = cfg->mr, nr = cfg->nr;
  const size_t mpad = fc_round_up(M, mr), npad = fc_round_up(N, nr);
  const size_t n_npanels = b->seg ? N / b->seg * (fc_round_up(b->seg, nr) / nr) : npad / nr;
  const size_t block_panels = column_block_panels(fc_min(K, FC_KC), nr);
  const size_t bsize = b->pack ? fc_min(K, FC_KC) * fc_min(npad, block_panels * nr) : 0;
  float* bbuf = (float*)fc_workspace(FC_WS_GEMM, (size_t)threads * bsize * sizeof(float));
  if (!bbuf) return FC_ERROR_NOMEM;
  tail_queue tails[FC_MAX_TEAM]; /* used by teams only: a one-thread call (thousands per
                                 * predict inside Winograd) skips clearing them */
  if (threads > 1) memset(tails, 0, sizeof tails);
  gemm_job job = {M, N, K, mpad, npad, mpad / mr, n_npanels, block_panels, bsize, a_packed, b,
                  bias_row, bias_col, accumulate, activation, c, c_rs, bbuf, tails};
  fc_run_team(threads, gemm_share, &job);
  return 0;
}

int fc_gemm_f32(size_t M, size_t N, size_t K, const float* a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                const float* b, ptrdiff_t b_rs, ptrdiff_t b_cs, const float* bias_row,
                const float* bias_col, int accumulate, int activation, float* c, size_t c_rs) {
  const size_t mr = fc_gemm_config_get()->mr;
  float* ap = (float*)fc_workspace(FC_WS_INPUT, fc_packed_a_size(M, K, mr) * sizeof(float));
  if (!ap) return FC_ERROR_NOMEM;
  fc_pack_a(M, K, a, a_rs, a_cs, mr, ap);
  const strided_b src = {b, b_rs, b_cs};
  const fc_b_operand operand = {pack_b_strided, &src, NULL, NULL, NULL};
  const int rc = fc_gemm_packed(M, N, K, ap, &operand, bias_row, bias_col, accumulate, activation,
                                c, c_rs, fc_threads_for(2.0 * M * N * K));
  return rc;
}

/* Dense weights W (N x K, row-major) as B = W^T panels: for each K block (k0, kc), for each
 * NR-column panel j, kc x NR floats at k0 * Npad + j * kc * NR (the layout fc_gemm_packed reads
 * when it is given no packing callback). Columns past N are zero. */
size_t fc_dense_packed_size(size_t K, size_t N) {
  return fc_round_up(N, fc_gemm_config_get()->nr) * K;
}

int fc_dense_packed_tile(void) { return (int)fc_gemm_config_get()->nr; }

/* W (N x K) as B = W^T panels in K blocks of kblock. */
static void pack_weights(size_t K, size_t N, const float* w, size_t kblock, float* packed) {
  const size_t nr = fc_gemm_config_get()->nr, npad = fc_round_up(N, nr);
  const strided_b wt = {w, 1, (ptrdiff_t)K}; /* B[k][n] = W[n][k] */
  for (size_t k0 = 0; k0 < K; k0 += kblock) {
    const size_t kc = fc_min(kblock, K - k0);
    for (size_t col = 0; col < npad; col += nr) {
      pack_b_strided(&wt, k0, kc, col, fc_min(nr, N - col), nr,
                     packed + k0 * npad + col * kc);
    }
  }
}

void fc_dense_pack_weights(size_t K, size_t N, const float* w, float* packed) {
  pack_weights(K, N, w, FC_KC, packed);
}

void fc_pixels_pack_weights(size_t K, size_t N, const float* w, float* packed) {
  pack_weights(K, N, w, FC_PIXEL_KC, packed);
}

/* The epilogue of fc_gemm_packed for one row, element by element and in the micro-kernel's
 * order (previous block, bias, clamp), so the result is bit-identical to a row of a batch. */
static void gemv_store(size_t n, const float* sums, int accumulate, const float* bias, float lo,
                       float hi, float* y) {
  for (size_t j = 0; j < n; j++) {
    float v = sums[j];
    if (accumulate) v = y[j] + v;
    if (bias) v = v + bias[j];
    v = v < lo ? lo : v; /* NaN passes the clamp unchanged */
    y[j] = v > hi ? hi : v;
  }
}

/* A dense layer at batch 1: y = act(x W^T + bias) through the one-row kernel, each thread
 * taking whole groups of FC_GEMV_PANELS panels (K is never split, as in fc_gemm_packed). */
typedef struct dense_row_job {
  size_t N, K;
  const float* packed;
  const float* bias;
  int activation;
  const float* x;
  float* y;
} dense_row_job;

static void dense_row_share(void* ctx, size_t id, size_t count) {
  const dense_row_job* d = (const dense_row_job*)ctx;
  const fc_gemm_config* cfg = fc_gemm_config_get();
  const size_t nr = cfg->nr, npad = fc_round_up(d->N, nr), group = FC_GEMV_PANELS * nr;
  const float lo = fc_act_min(d->activation), hi = fc_act_max(d->activation);
  float sums[FC_GEMV_PANELS * 32] __attribute__((aligned(64)));
  size_t g0, g1;
  fc_share((npad + group - 1) / group, id, count, &g0, &g1);
  const unsigned fp_mode = fc_fp_enter();
  for (size_t col = g0 * group; col < g1 * group; col += group) {
    const size_t panels = fc_min(FC_GEMV_PANELS, (npad - col) / nr), n = fc_min(group, d->N - col);
    for (size_t k0 = 0; k0 < d->K; k0 += FC_KC) {
      const size_t kc = fc_min(FC_KC, d->K - k0);
      const int last = k0 + kc == d->K;
      cfg->gemv(kc, d->x + k0, 1, d->packed + k0 * npad + col * kc, kc * nr, panels, sums);
      gemv_store(n, sums, k0 > 0, last && d->bias ? d->bias + col : NULL, last ? lo : -INFINITY,
                 last ? hi : INFINITY, d->y + col);
    }
    fc_activation_row(n, d->activation, d->y + col);
  }
  fc_fp_exit(fp_mode);
}

static void dense_row(size_t N, size_t K, const float* packed, const float* bias, int activation,
                      const float* x, float* y) {
  dense_row_job job = {N, K, packed, bias, activation, x, y};
  fc_run_team(fc_threads_for(2.0 * N * K), dense_row_share, &job);
}

int fc_dense_f32_packed(size_t M, size_t N, size_t K, int packed_tile, const float* packed,
                        const float* bias, int activation, const float* x, float* y) {
  if (packed_tile != fc_dense_packed_tile()) return FC_ERROR_STALE;
  if (M == 1 && fc_gemm_config_get()->nr <= 32) {
    dense_row(N, K, packed, bias, activation, x, y);
    return 0;
  }
  const size_t mr = fc_gemm_config_get()->mr;
  float* ap = (float*)fc_workspace(FC_WS_INPUT, fc_packed_a_size(M, K, mr) * sizeof(float));
  if (!ap) return FC_ERROR_NOMEM;
  fc_pack_a(M, K, x, (ptrdiff_t)K, 1, mr, ap);
  const fc_b_operand operand = {NULL, NULL, packed, NULL, NULL};
  const int rc = fc_gemm_packed(M, N, K, ap, &operand, NULL, bias, 0, activation, y, N,
                                fc_threads_for(2.0 * M * N * K));
  return rc;
}

/* fc_gemm_pixels: the 1x1 convolution transposed, its input read in place or its pixels packed
 * (see docs/kernels.md, "1x1 convolutions"). Each thread takes a share of the pixel panels, or of
 * the weights panels when there are few pixel panels (small images, large weights: each thread
 * then streams half of the weights, not all of them). Per block of FC_PIXEL_BLOCK pixels, column
 * block of weights that fits FC_B_BLOCK (in L2) and K block, pairs of A panels run against every
 * weights panel of the block: read in place, the two panels are 16 pixels, so each output row's
 * cache line is written whole by two tiles in a row. A block's outputs stay in L2 across its K
 * blocks. Read in place, a last partial panel (M % 8 pixels) is packed first, zero-padded, so
 * that the kernel reads nothing past the input. Packed, the pixels are cut into equal panels of
 * fc_pixels_panel_rows (a 7x7 image: 7 panels of 7, no 1-pixel edge panel). */
#define FC_PIXEL_BLOCK 256

size_t fc_pixels_panel_rows(size_t M) {
  const size_t mr = fc_gemm_config_get()->mr, panels = (M + mr - 1) / mr;
  return panels ? (M + panels - 1) / panels : mr;
}

/* One packed pixel panel: `used` (a constant where inlined) rows `step` apart from off0, then
 * zeros up to MR. Contiguous rows are copied with memcpy, which GCC inlines as a few vector
 * moves (a 7-float row as two overlapping 4-float ones); the loop copied them one by one. */
static inline __attribute__((always_inline)) void pack_pixels_even(
    size_t K, const float* base, const ptrdiff_t* cols, ptrdiff_t off0, ptrdiff_t step,
    size_t used, size_t mr, float* panel) {
  for (size_t k = 0; k < K; k++) {
    const float* src = base + cols[k] + off0;
    if (step == 1) {
      memcpy(panel + k * mr, src, used * sizeof(float));
    } else {
      for (size_t r = 0; r < used; r++) panel[k * mr + r] = src[(ptrdiff_t)r * step];
    }
    for (size_t r = used; r < mr; r++) panel[k * mr + r] = 0.0f;
  }
}

/* Channels per pass of fc_pixels_pack_rows over its panels: each pass reads a few KiB of the
 * input, whose cache lines its panels share (a 7x7 image's rows are 196 bytes), from L1. One
 * panel over all the channels at a time took 3x as long (960 channels: 3-5 % of the layer). */
#define FC_PIXEL_PACK_KB 64

void fc_pixels_pack_rows(size_t M, size_t K, const float* base, const ptrdiff_t* rows,
                         const ptrdiff_t* cols, float* dst) {
  const size_t mr = fc_gemm_config_get()->mr, pr = fc_pixels_panel_rows(M);
  for (size_t k0 = 0; k0 < K; k0 += FC_PIXEL_PACK_KB) {
    const size_t kb = fc_min(FC_PIXEL_PACK_KB, K - k0);
    for (size_t m0 = 0; m0 < M; m0 += pr) {
      float* panel = dst + (m0 / pr * K + k0) * mr;
      const size_t used = fc_min(pr, M - m0);
      const ptrdiff_t* off = rows + m0;
      const ptrdiff_t step = used > 1 ? off[1] - off[0] : 1;
      size_t even = 1;
      for (size_t r = 1; r < used && even; r++) even = off[r] - off[r - 1] == step;
      if (even && step == 1 && used == 7 && mr == 8) { /* a row of a 7x7 image, stride 1 */
        pack_pixels_even(kb, base, cols + k0, off[0], 1, 7, 8, panel);
      } else if (even && used == 7 && mr == 8) {
        pack_pixels_even(kb, base, cols + k0, off[0], step, 7, 8, panel);
      } else if (even && used == 8 && mr == 8) {
        pack_pixels_even(kb, base, cols + k0, off[0], step, 8, 8, panel);
      } else {
        for (size_t k = 0; k < kb; k++) {
          const float* src = base + cols[k0 + k];
          for (size_t r = 0; r < mr; r++) panel[k * mr + r] = r < used ? src[off[r]] : 0.0f;
        }
      }
    }
  }
}

typedef struct pixels_job {
  size_t M, N, K, lda, pr, npad, kblock;
  const float* a;
  const float* edge; /* read in place: the last partial panel packed (MR x K, k-major), or NULL */
  const float* b;
  const float* bias;
  int accumulate, activation;
  float* c;
  size_t ldc;
} pixels_job;

/* Tile (pixel panel i, weights panel j) at K block (k0, kc). */
static void pixels_tile(const pixels_job* g, const fc_gemm_config* cfg, fc_gemm_epilogue* ep,
                        size_t i, size_t j, size_t k0, size_t kc) {
  const size_t mr = cfg->mr, nr = cfg->nr, m0 = i * g->pr, n0 = j * nr;
  const size_t rows = fc_min(g->pr, g->M - m0), cols = fc_min(nr, g->N - n0);
  const int last = k0 + kc == g->K;
  ep->bias_col = last && g->bias ? g->bias + n0 : NULL;
  float* c = g->c + n0 * g->ldc + m0;
  const float* a = g->a + k0 * g->lda + m0; /* in place */
  size_t lda = g->lda;
  if (!g->lda || (rows < mr && g->edge)) { /* a packed panel: rows mr floats apart */
    a = g->lda ? g->edge + k0 * mr : g->a + (i * g->K + k0) * mr;
    lda = mr;
  }
  cfg->pixels(rows, cols, kc, a, lda, g->b + k0 * g->npad + n0 * kc, c, g->ldc, ep);
  if (last && (g->activation == FC_ACT_TANH || g->activation == FC_ACT_SIGMOID)) {
    for (size_t q = 0; q < cols; q++) fc_activation_row(rows, g->activation, c + q * g->ldc);
  }
}

/* Pixel panels [i0, i1) against weights panels [j0, j1) at K block (k0, kc). */
static void pixels_block(const pixels_job* g, const fc_gemm_config* cfg, size_t i0, size_t i1,
                         size_t j0, size_t j1, size_t k0, size_t kc) {
  const int last = k0 + kc == g->K;
  fc_gemm_epilogue ep = {g->accumulate || k0 > 0, NULL, NULL,
                         last ? fc_act_min(g->activation) : -INFINITY,
                         last ? fc_act_max(g->activation) : INFINITY};
  for (size_t i = i0; i < i1; i += 2) {
    for (size_t j = j0; j < j1; j++) {
      pixels_tile(g, cfg, &ep, i, j, k0, kc);
      if (i + 1 < i1) pixels_tile(g, cfg, &ep, i + 1, j, k0, kc);
    }
  }
}

static void pixels_share(void* ctx, size_t id, size_t team) {
  const pixels_job* g = (const pixels_job*)ctx;
  const fc_gemm_config* cfg = fc_gemm_config_get();
  const size_t step = FC_PIXEL_BLOCK / cfg->mr, n_mpanels = (g->M + g->pr - 1) / g->pr;
  const size_t block_panels = column_block_panels(fc_min(g->K, g->kblock), cfg->nr);
  const int split_weights = n_mpanels < 4 * team;
  size_t p0 = 0, p1 = n_mpanels, q0 = 0, q1 = g->npad / cfg->nr;
  if (split_weights) fc_share(q1, id, team, &q0, &q1);
  else fc_share(n_mpanels, id, team, &p0, &p1);
  const unsigned fp_mode = fc_fp_enter();
  for (size_t i0 = p0; i0 < p1; i0 += step) {
    for (size_t j0 = q0; j0 < q1; j0 += block_panels) {
      for (size_t k0 = 0; k0 < g->K; k0 += g->kblock) {
        pixels_block(g, cfg, i0, fc_min(p1, i0 + step), j0, fc_min(q1, j0 + block_panels), k0,
                     fc_min(g->kblock, g->K - k0));
      }
    }
  }
  fc_fp_exit(fp_mode);
}

int fc_gemm_pixels(size_t M, size_t N, size_t K, const float* a, size_t lda,
                   const float* b_packed, const float* bias, int accumulate, int activation,
                   float* c, size_t ldc, int threads) {
  const fc_gemm_config* cfg = fc_gemm_config_get();
  const size_t mr = cfg->mr, full = M / mr * mr;
  float* edge = NULL;
  if (lda && full < M) {
    edge = (float*)fc_workspace(FC_WS_GEMM, mr * K * sizeof(float));
    if (!edge) return FC_ERROR_NOMEM;
    for (size_t k = 0; k < K; k++) {
      for (size_t r = 0; r < mr; r++) edge[k * mr + r] = full + r < M ? a[k * lda + full + r] : 0;
    }
  }
  pixels_job job = {M, N, K, lda, lda ? mr : fc_pixels_panel_rows(M), fc_round_up(N, cfg->nr),
                    FC_PIXEL_KC, a, edge, b_packed, bias, accumulate, activation, c, ldc};
  fc_run_team(threads, pixels_share, &job);
  return 0;
}
