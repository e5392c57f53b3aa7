/* Helpers shared by the drivers in src/ops and src/runtime; not part of the C API. */
#ifndef FC_INTERNAL_H
#define FC_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fastconv.h"

/* Threads to use for an operator call of about `flops` floating-point operations. */
int fc_threads_for(double flops);
/* fc_threads_for an op of `flops` that also reads and writes `floats` from outside L2. */
int fc_threads_for_traffic(double flops, double floats);
int fc_in_team(void); /* inside an active parallel region */
/* The calling thread's index in the current parallel region (0 outside one or without OpenMP). */
int fc_thread_id(void);
/* The number of threads in the current parallel region (1 outside one or without OpenMP). */
int fc_thread_count(void);

/* Parallel work without an OpenMP region when it runs on one thread: even a one-thread region
 * costs 0.4-0.7 us and a futex system call (its team's barrier), measured, which for LeNet-5's
 * ~30 regions per batch-8 predict was ~10 % of its one-thread time. Bodies split their work by
 * (id, count) and must not use `omp for`: orphaned, it would bind to an enclosing team (a
 * convolution splitting images, run_images), whose threads would then share one image's loop.
 * fc_run_team calls body(ctx, id, count) on each thread of a team of `threads`, or once on the
 * calling thread as (0, 1). */
typedef void (*fc_team_fn)(void* ctx, size_t id, size_t count);
void fc_run_team(int threads, fc_team_fn body, void* ctx);
/* task(ctx, i) for every i in [0, n), the threads taking contiguous shares (fc_share). */
typedef void (*fc_task_fn)(void* ctx, size_t i);
void fc_parallel_for(int threads, size_t n, fc_task_fn task, void* ctx);
/* The contiguous share [*begin, *end) of `total` items that member `id` of `count` takes. */
static inline void fc_share(size_t total, size_t id, size_t count, size_t* begin, size_t* end) {
  *begin = total * id / count;
  *end = total * (id + 1) / count;
}

/* Work a team member hands over: the tail of its share as units [0, n), which it takes from the
 * front and the other members, done with their own shares, steal from the back. On a shared
 * machine either of two threads may run 10-25 % slower than the other through a call, and a
 * static split leaves the faster one waiting (docs/kernels.md, "Threads"). One word per member:
 * front + 1 in the low half, back + 1 in the high half; zero (not open yet) has nothing. */
typedef struct fc_steal_queue {
  uint64_t word;
} fc_steal_queue;
#define FC_MAX_TEAM 64 /* queues a team keeps; a larger team splits statically */

static inline void fc_steal_open(fc_steal_queue* q, size_t units) {
  __atomic_store_n(&q->word, (((uint64_t)units + 1) << 32) | 1u, __ATOMIC_RELEASE);
}

/* A unit of q, from the front (its owner) or the back (a thief); -1 when there is none. */
static inline ptrdiff_t fc_steal_take(fc_steal_queue* q, int from_back) {
  uint64_t word = __atomic_load_n(&q->word, __ATOMIC_ACQUIRE);
  for (;;) {
    const uint64_t front = word & 0xffffffffu, back = word >> 32;
    if (word == 0 || front >= back) return -1;
    const uint64_t next = from_back ? ((back - 1) << 32) | front : (back << 32) | (front + 1);
    if (__atomic_compare_exchange_n(&q->word, &word, next, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
      return (ptrdiff_t)(from_back ? back - 2 : front - 1);
    }
  }
}

/* Denormal flushing for the calling thread (src/runtime/fpmode.c): fc_fp_enter sets it if
 * enabled and returns the previous mode, which fc_fp_exit restores. Every thread of a parallel
 * region that does floating-point work brackets it with the pair. */
unsigned fc_fp_enter(void);
void fc_fp_exit(unsigned saved);

/* 64-byte aligned allocation; NULL when out of memory. */
void* fc_alloc(size_t bytes);
void fc_free(void* p);

/* The calling thread's reusable buffer for `slot`, at least `bytes` long (NULL when out of
 * memory); valid until the thread asks for the same slot again. An operator uses each slot at
 * most once at a time, so nested calls (a convolution calling the GEMM driver) use distinct
 * slots. Contents are not preserved when the buffer grows. */
enum fc_workspace_slot {
  FC_WS_INPUT,    /* laid-out or transformed input (phase planes, Winograd V) */
  FC_WS_OUTPUT,   /* results before the final store (implicit-GEMM run, Winograd M) */
  FC_WS_TABLE,    /* small tables (offsets) */
  FC_WS_GEMM,     /* the GEMM driver's packed B panels */
  FC_WS_LAYOUT,   /* a whole image's phase planes (Winograd) */
  FC_WS_CHAIN,    /* a depth-first chain's band buffers (src/ops/chain.c) */
  FC_WS_COUNT
};
void* fc_workspace(int slot, size_t bytes);

static inline size_t fc_round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }
static inline size_t fc_min(size_t a, size_t b) { return a < b ? a : b; }

/* The clamp that applies an activation in a store: [0, inf] for ReLU, [0, 6] for ReLU6, no
 * limit otherwise (tanh and sigmoid run on the stored values, fc_activation_row). */
static inline float fc_act_min(int activation) {
  return activation == FC_ACT_RELU || activation == FC_ACT_RELU6 ? 0.0f : -INFINITY;
}
static inline float fc_act_max(int activation) {
  return activation == FC_ACT_RELU6 ? 6.0f : INFINITY;
}

/* Output positions o in [*lo, *hi) whose input index o * stride + offset lies in [0, in):
 * the part of a row that needs no padding. */
static inline void fc_valid_range(size_t out, size_t stride, ptrdiff_t offset, size_t in,
                                  size_t* lo, size_t* hi) {
  const ptrdiff_t s = (ptrdiff_t)stride;
  ptrdiff_t first = offset < 0 ? (-offset + s - 1) / s : 0;
  ptrdiff_t last = (ptrdiff_t)in - 1 - offset < 0 ? -1 : ((ptrdiff_t)in - 1 - offset) / s;
  if (first > (ptrdiff_t)out) first = (ptrdiff_t)out;
  if (last + 1 > (ptrdiff_t)out) last = (ptrdiff_t)out - 1;
  *lo = (size_t)first;
  *hi = last + 1 > first ? (size_t)(last + 1) : (size_t)first;
}

/* Packing of GEMM operands (src/ops/gemm.c). A is packed once, in MR-row panels per K block;
 * B is packed per block by a callback, so im2col can write straight into B panels. */
typedef void (*fc_pack_b_fn)(const void* ctx, size_t k0, size_t kc, size_t n0, size_t nr_used,
                             size_t nr, float* dst);
/* The same for `panels` whole NR-column panels from column n0 at once, panel j at
 * dst + j * kc * nr: where each row of B is long, reading it once, contiguously, is faster. */
typedef void (*fc_pack_panels_fn)(const void* ctx, size_t k0, size_t kc, size_t n0,
                                  size_t panels, size_t nr, float* dst);
/* The GEMM's K block: packed panels hold FC_KC rows of K each (a caller splitting K into
 * several GEMMs over packed weights cuts it at multiples of this). */
#define FC_KC 256
size_t fc_packed_a_size(size_t M, size_t K, size_t mr);
void fc_pack_a(size_t M, size_t K, const float* a, ptrdiff_t rs, ptrdiff_t cs, size_t mr,
               float* dst);
/* The same panels from an A gathered through offset tables: A[m][k] = base[rows[m] + cols[k]]. */
void fc_pack_a_rows(size_t M, size_t K, const float* base, const ptrdiff_t* rows,
                    const ptrdiff_t* cols, size_t mr, float* dst);
/* C^T = act(A * B + bias), the pixels of a 1x1 convolution as the rows of A, through the kernel
 * table's `pixels` kernel (not NULL): C[m][n] stored at c[n * ldc + m] (NCHW output planes), bias
 * per n, accumulate adds to C. B holds the weights packed by fc_pixels_pack_weights (K blocks of
 * 512). A is read in place, A[m][k] = a[k * lda + m] (M pixels of K input channels), or, with
 * lda = 0, was packed by fc_pixels_pack_rows. */
int fc_gemm_pixels(size_t M, size_t N, size_t K, const float* a, size_t lda,
                   const float* b_packed, const float* bias, int accumulate, int activation,
                   float* c, size_t ldc, int threads);
/* The pixels per packed A panel of fc_gemm_pixels: M cut into as few panels of at most MR as
 * possible, all but the last of the same size (49 pixels: 7 panels of 7). */
size_t fc_pixels_panel_rows(size_t M);
/* A (M x K) of fc_gemm_pixels packed from A[m][k] = base[rows[m] + cols[k]]: panel i holds the
 * fc_pixels_panel_rows(M) pixels from i times that, K x MR floats k-major (zero past its pixels),
 * at dst + i * MR * K; fc_packed_a_size(M, K, MR) floats in all. */
void fc_pixels_pack_rows(size_t M, size_t K, const float* base, const ptrdiff_t* rows,
                         const ptrdiff_t* cols, float* dst);
/* Weights W (N x K) for fc_gemm_pixels: fc_dense_pack_weights' panels in deeper K blocks
 * (fc_dense_packed_size floats). */
void fc_pixels_pack_weights(size_t K, size_t N, const float* w, float* packed);
/* The B operand of fc_gemm_packed, in one of three forms:
 *  - pack (+ ctx): a callback packing K x NR panels block by block (im2col, plain matrices),
 *    with pack_panels (optional) for runs of whole panels;
 *  - packed: B packed once, in the layout of fc_dense_pack_weights;
 *  - base (+ offsets): B read in place, B[k][n] = base[offsets[k] + n] (implicit GEMM over
 *    phase planes, or a plain matrix); the kernels read no column past N - 1.
 * With base, seg > 0 splits the N columns into rows of seg columns (N a multiple of seg): column
 * s * seg + q is read at base[offsets[k] + s * seg_b + q] and written at c[s * seg_c + q], and
 * no tile crosses a row (an implicit GEMM storing straight into its output planes). */
typedef struct fc_b_operand {
  fc_pack_b_fn pack;
  const void* ctx;
  const float* packed;
  const float* base;
  const ptrdiff_t* offsets;
  size_t seg, seg_b, seg_c;
  fc_pack_panels_fn pack_panels;
} fc_b_operand;
/* C = act(packedA * B + ...): see fc_gemm_f32 in fastconv.h. */
int fc_gemm_packed(size_t M, size_t N, size_t K, const float* a_packed, const fc_b_operand* b,
                   const float* bias_row, const float* bias_col, int accumulate, int activation,
                   float* c, size_t c_rs, int threads);

/* A B operand whose rows are contiguous: row k at b + k * n (a row-major matrix of row stride
 * n), or at b + offsets[k] where offsets is given (an implicit GEMM's phase planes). With b2,
 * rows from `split` on are a second matrix stacked below: row k >= split at
 * b2 + (k - split) * n (the two inputs of fc_conv2d_sum_packed). */
typedef struct fc_matrix_src {
  const float* b;
  size_t n;
  const ptrdiff_t* offsets;
  const float* b2;
  size_t split;
} fc_matrix_src;
/* The B operand packing `m` (which must outlive it). */
fc_b_operand fc_matrix_operand(const fc_matrix_src* m);

/* Winograd F(m x m, 3x3) convolution, m = 2 or 4 (src/ops/winograd.c). */
size_t fc_winograd_packed_size(const fc_conv2d_params* p, size_t m);
int fc_winograd_pack_weights(const fc_conv2d_params* p, size_t m, const float* w, float* packed);
int fc_winograd_run(const fc_conv2d_params* p, size_t m, const float* packed, const float* bias,
                    const float* residual, const float* x, float* y);

/* Phase planes (src/ops/window.c): an input plane laid out so that a whole output plane of a
 * strided, padded, dilated window operator is one flat run of the window kernels. Output
 * (oh, ow) is run element oh * cols + ow; the other columns of the run are discarded. */
typedef struct fc_phase_layout {
  size_t in_h, in_w, out_h, out_w, kernel_h, kernel_w;
  size_t stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  size_t rows, cols;   /* of each phase plane */
  size_t run;          /* out_h * cols: the outputs one kernel call computes */
  size_t phase_size;   /* floats per phase plane, kernel slack included */
} fc_phase_layout;
void fc_phase_layout_init(fc_phase_layout* l, size_t in_h, size_t in_w, size_t out_h, size_t out_w,
                          size_t kernel_h, size_t kernel_w, size_t stride_h, size_t stride_w,
                          size_t dilation_h, size_t dilation_w, size_t pad_top, size_t pad_left);
/* Floats for all stride_h * stride_w phase planes, and for one output run (slack included). */
size_t fc_phase_planes_size(const fc_phase_layout* l);
size_t fc_run_size(const fc_phase_layout* l);
/* The kernel_h * kernel_w tap offsets (row-major taps) into the phase planes. */
void fc_phase_offsets(const fc_phase_layout* l, ptrdiff_t* offsets);
/* Lays out one in_h x in_w plane; positions outside the input read `pad`. Phases no tap reads
 * are left unwritten. */
void fc_phase_fill(const fc_phase_layout* l, const float* x, float pad, float* planes);

/* Depthwise 3x3 convolution at stride 1 or 2 (src/ops/dwconv.c): the direct algorithm's path
 * when every group has one input channel. */
/* Whether a 1x1 layer of `og` output channels over `npix` pixels reads its input in place as
 * the GEMM's B (else packs it), and whether algorithm GEMM packs p's weights as A panels (not
 * transposed): the choices of conv_gemm, which depth-first chains make the same way. */
int fc_gemm_reads_in_place(size_t og, size_t npix);
int fc_conv2d_packs_gemm_a(const fc_conv2d_params* p);
/* A stem (at most 4 input channels, algorithm FC_CONV_IMPLICIT) whose output rows can be
 * computed band by band (rows mode), and output rows [oh0, oh1) of one image x of it into y,
 * channel o's rows from y + o * y_plane. */
int fc_conv2d_stem_rows_applies(const fc_conv2d_params* p);
int fc_conv2d_stem_rows(const fc_conv2d_params* p, const float* packed, const float* bias,
                        const float* x, size_t oh0, size_t oh1, float* y, size_t y_plane);
int fc_dwconv3x3_applies(const fc_conv2d_params* p);
const char* fc_dwconv3x3_kernel(const fc_conv2d_params* p); /* which kernel it runs */
int fc_dwconv3x3_run(const fc_conv2d_params* p, const float* w, const float* bias,
                     const float* residual, const float* x, float* y);

/* Row activation after the store (tanh, sigmoid; clamps are fused in the kernels). */
void fc_activation_row(size_t n, int activation, float* y);
#endif
