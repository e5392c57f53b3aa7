/* The C entry points the Cython bindings call: one per operator call, GIL released.
 * Arrays are float32; strides are in elements. Functions that allocate return 0 on success and
 * FC_ERROR_NOMEM when memory runs out. Arguments are validated in Python, never here. */
#ifndef FASTCONV_H
#define FASTCONV_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FC_ERROR_NOMEM 1
#define FC_ERROR_STALE 2 /* weights packed for another kernel table: pack them again */

typedef enum fc_activation {
  FC_ACT_NONE = 0,
  FC_ACT_RELU = 1,
  FC_ACT_RELU6 = 2,
  FC_ACT_TANH = 3,
  FC_ACT_SIGMOID = 4,
} fc_activation;

typedef enum fc_conv_algorithm {
  FC_CONV_DIRECT = 0,
  FC_CONV_IM2COL = 1,
  FC_CONV_GEMM = 2, /* 1x1, stride 1, no padding: the input is the GEMM operand */
  FC_CONV_WINOGRAD = 3, /* F(2x2, 3x3): 3x3, stride 1, dilation 1, one group */
  FC_CONV_IMPLICIT = 4, /* implicit GEMM over phase planes of the input */
  FC_CONV_WINOGRAD4 = 5, /* F(4x4, 3x3): 3x3, stride 1, dilation 1, one group */
} fc_conv_algorithm;

/* Denormals are flushed to zero inside the kernels (default on). */
void fc_set_flush_denormals(int enabled);
int fc_get_flush_denormals(void);

/* Runtime: instruction set, dispatch, threads, build. */
int fc_isa_detected(void);
int fc_isa_active(void);
int fc_set_isa_cap(int cap); /* returns the ISA now in use: min(cap, detected) */
const char* fc_isa_name(int isa);
const char* fc_gemm_kernel_name(void);
const char* fc_vector_kernel_name(void);
void fc_set_num_threads(int n);
int fc_get_num_threads(void);
int fc_openmp_enabled(void);
/* 1 in a process forked after OpenMP teams started: it runs single-threaded (libgomp's pool
 * does not survive fork). */
int fc_forked_single_threaded(void);
/* The bindings bracket every operator call with begin/end (GIL released); tests read the count
 * and may hold calls at their entry for up to `seconds` (0 releases them). */
void fc_call_begin(void);
void fc_call_end(void);
int fc_calls_in_flight(void);
void fc_hold_calls(double seconds);
const char* fc_build_compiler(void);
const char* fc_build_flags(void);

/* C (M x N, row stride c_rs) = act(A (M x K) * B (K x N) [+ C] + bias_row[m] + bias_col[n]).
 * A and B are read through element strides (any sign), so transposed and sliced views work. */
int fc_gemm_f32(size_t M, size_t N, size_t K, const float* a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                const float* b, ptrdiff_t b_rs, ptrdiff_t b_cs, const float* bias_row,
                const float* bias_col, int accumulate, int activation, float* c, size_t c_rs);

typedef struct fc_conv2d_params {
  size_t batch, in_channels, in_h, in_w;
  size_t out_channels, out_h, out_w;
  size_t kernel_h, kernel_w;
  size_t stride_h, stride_w;
  size_t dilation_h, dilation_w;
  size_t pad_top, pad_left; /* the bottom and right padding follow from the output size */
  size_t groups;
  int activation;
} fc_conv2d_params;

/* x NCHW, weight OIHW (I = in_channels / groups), bias (O) or NULL, y NCHW. */
int fc_conv2d_nchw_f32(const fc_conv2d_params* p, int algorithm, const float* x, const float* w,
                       const float* bias, float* y);

/* Weights packed once for the kernel table in force (a model plan keeps them):
 * `fc_conv2d_packed_size` floats, stamped with `fc_conv2d_packed_tile`, which the run checks
 * (FC_ERROR_STALE when the table changed since). With `residual` (NCHW like y, may be y itself)
 * the result is act(conv + bias + residual): a ResNet shortcut fused into the store. */
size_t fc_conv2d_packed_size(const fc_conv2d_params* p, int algorithm);
int fc_conv2d_packed_tile(int algorithm);
int fc_conv2d_pack_weights(const fc_conv2d_params* p, int algorithm, const float* w,
                           float* packed);
int fc_conv2d_nchw_f32_packed(const fc_conv2d_params* p, int algorithm, int packed_tile,
                              const float* packed, const float* bias, const float* residual,
                              const float* x, float* y);
/* The kernel family the direct algorithm runs for p ("dwconv3x3s1_flat", "dwconv3x3s1",
 * "dwconv3x3s2" or "wmacc"); residual_is_output: a residual stored in place. Plan summaries. */
const char* fc_conv2d_direct_kernel(const fc_conv2d_params* p, int residual_is_output);

/* Two 1x1 convolutions into one output, summed before the activation (ResNet's bottleneck conv3
 * and its projection shortcut): y = act(Wa * xa + Wb * xb + bias), a over xa at stride 1, b
 * over xb at any stride, both with no padding, one group, and a's output geometry, batch and
 * activation. Computed as one GEMM over both inputs' channels, its weights [Wa | Wb] (O x
 * (Ca + Cb), row-major) packed once by fc_conv2d_sum_pack_weights (stamped with
 * fc_conv2d_packed_tile(FC_CONV_GEMM)); y overlaps neither input. fc_conv2d_sum_applies: whether
 * the layers would run as such GEMMs on their own (not transposed, B packed), where the fused
 * GEMM measured faster. */
int fc_conv2d_sum_applies(const fc_conv2d_params* a, const fc_conv2d_params* b);
size_t fc_conv2d_sum_packed_size(size_t out_channels, size_t in_channels);
void fc_conv2d_sum_pack_weights(size_t out_channels, size_t in_channels, const float* w,
                                float* packed);
int fc_conv2d_sum_packed(const fc_conv2d_params* a, const fc_conv2d_params* b, int packed_tile,
                         const float* packed, const float* bias, const float* xa,
                         const float* xb, float* y);

/* A depth-first chain (src/ops/chain.c): stages[0 .. n-1], each the input of the next (1x1
 * stride-1 layers with algorithm FC_CONV_GEMM, 3x3 depthwise ones with FC_CONV_DIRECT, as
 * fc_conv_chain_applies says; p.batch is ignored), their weights as fc_conv2d_pack_weights
 * packed them, run band by band of the last stage's output rows. x is the first stage's input,
 * y the last one's output (not overlapping x), `residual` (or NULL: only after a 1x1 last
 * stage, not overlapping y) is added in its store. */
#define FC_CHAIN_MAX_STAGES 4
typedef struct fc_chain_stage {
  fc_conv2d_params p;
  int algorithm, packed_tile; /* the packing's stamp: FC_ERROR_STALE if the table changed */
  const float* weights;
  const float* bias;
} fc_chain_stage;
int fc_conv_chain_applies(const fc_conv2d_params* p, int algorithm);
int fc_conv_chain_run(const fc_chain_stage* stages, size_t n, size_t batch, const float* residual,
                      const float* x, float* y);

/* Dense layers with weights (N x K, row-major: out x in) packed once as GEMM B panels:
 * y (M x N) = act(x (M x K) * W^T + bias [+ residual]). */
size_t fc_dense_packed_size(size_t K, size_t N);
int fc_dense_packed_tile(void);
void fc_dense_pack_weights(size_t K, size_t N, const float* w, float* packed);
int fc_dense_f32_packed(size_t M, size_t N, size_t K, int packed_tile, const float* packed,
                        const float* bias, int activation, const float* x, float* y);

typedef struct fc_pool2d_params {
  size_t planes, in_h, in_w, out_h, out_w;
  size_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
  size_t pad_top, pad_left, pad_bottom, pad_right;
  int count_include_pad;
} fc_pool2d_params;

/* x and y are stacks of planes (N*C planes in NCHW). 0, or FC_ERROR_NOMEM. */
int fc_max_pool2d_f32(const fc_pool2d_params* p, const float* x, float* y);
int fc_avg_pool2d_f32(const fc_pool2d_params* p, const float* x, float* y);
/* The window kernel family a pooling runs ("maxpool2x2", "wmax" or "wmacc"): plan summaries. */
const char* fc_pool2d_kernel(const fc_pool2d_params* p, int is_max);
void fc_global_pool_f32(size_t planes, size_t plane_size, int is_max, const float* x, float* y);

void fc_activation_f32(size_t n, int activation, const float* x, float* y);
void fc_add_f32(size_t n, int activation, const float* a, const float* b, float* y);
void fc_softmax_f32(size_t rows, size_t n, const float* x, float* y);
/* x (outer, channels, inner): y = x * scale[c] + shift[c]. */
void fc_channel_affine_f32(size_t outer, size_t channels, size_t inner, const float* x,
                           const float* scale, const float* shift, float* y);
/* x (outer, channels, inner): local response normalisation across channels. */
void fc_lrn_f32(size_t outer, size_t channels, size_t inner, size_t size, float alpha, float beta,
                float k, const float* x, float* y);

#ifdef __cplusplus
}
#endif
#endif
