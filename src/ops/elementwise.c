/* Elementwise operators, softmax, per-channel affine (inference batch norm) and LRN.
 * Work is split in fixed chunks so results do not depend on the thread count. */
#include <math.h>

#include "fastconv.h"
#include "fc_internal.h"
#include "fc_kernels.h"

#define CHUNK 4096

static void activation_chunk(const fc_vector_config* vk, size_t n, int activation, const float* x,
                             float* y) {
  if (activation == FC_ACT_RELU) {
    vk->vclamp(n, x, y, 0.0f, INFINITY);
  } else if (activation == FC_ACT_RELU6) {
    vk->vclamp(n, x, y, 0.0f, 6.0f);
  } else {
    if (x != y) vk->vclamp(n, x, y, -INFINITY, INFINITY);
    fc_activation_row(n, activation, y);
  }
}

void fc_activation_f32(size_t n, int activation, const float* x, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t chunks = (n + CHUNK - 1) / CHUNK;
  const double cost = activation >= FC_ACT_TANH ? 20.0 : 1.0;
#pragma omp parallel for schedule(static) num_threads(fc_threads_for(cost * n))
  for (size_t i = 0; i < chunks; i++) {
    const size_t start = i * CHUNK;
    activation_chunk(vk, fc_min(CHUNK, n - start), activation, x + start, y + start);
  }
}

void fc_add_f32(size_t n, int activation, const float* a, const float* b, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t chunks = (n + CHUNK - 1) / CHUNK;
  const float lo = fc_act_min(activation), hi = fc_act_max(activation);
#pragma omp parallel for schedule(static) num_threads(fc_threads_for((double)n))
  for (size_t i = 0; i < chunks; i++) {
    const size_t start = i * CHUNK, len = fc_min(CHUNK, n - start);
    vk->vadd(len, a + start, b + start, y + start, lo, hi);
    fc_activation_row(len, activation, y + start);
  }
}

void fc_softmax_f32(size_t rows, size_t n, const float* x, float* y) {
#pragma omp parallel for schedule(static) num_threads(fc_threads_for(20.0 * rows * n))
  for (size_t r = 0; r < rows; r++) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) m = xr[i] > m ? xr[i] : m;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
      yr[i] = expf(xr[i] - m);
      sum += yr[i];
    }
    const float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++) yr[i] *= inv;
  }
}

void fc_channel_affine_f32(size_t outer, size_t channels, size_t inner, const float* x,
                           const float* scale, const float* shift, float* y) {
  const fc_vector_config* vk = fc_vector_config_get();
  const size_t rows = outer * channels;
#pragma omp parallel for schedule(static) num_threads(fc_threads_for((double)rows * inner))
  for (size_t r = 0; r < rows; r++) {
    const size_t c = r % channels;
    vk->vaffine(inner, x + r * inner, scale[c], shift[c], y + r * inner);
  }
}

/* y = x * (k + alpha/size * sum of squares over the channel window)^-beta, the window running
 * from c - floor((size-1)/2) to c + ceil((size-1)/2). Squares are summed in channel order. */
void fc_lrn_f32(size_t outer, size_t channels, size_t inner, size_t size, float alpha, float beta,
                float k, const float* x, float* y) {
  const size_t before = (size - 1) / 2, after = size - 1 - before;
  const size_t rows = outer * channels;
  const size_t chunks = (inner + 255) / 256;
  const float a = alpha / (float)size;
#pragma omp parallel for schedule(static) num_threads(fc_threads_for(30.0 * rows * inner))
  for (size_t t = 0; t < rows * chunks; t++) {
    const size_t r = t / chunks, start = (t % chunks) * 256, len = fc_min(256, inner - start);
    const size_t o = r / channels, c = r % channels;
    const size_t c_lo = c >= before ? c - before : 0, c_hi = fc_min(channels - 1, c + after);
    float sq[256];
    for (size_t i = 0; i < len; i++) sq[i] = 0.0f;
    for (size_t j = c_lo; j <= c_hi; j++) {
      const float* xj = x + (o * channels + j) * inner + start;
      for (size_t i = 0; i < len; i++) sq[i] += xj[i] * xj[i];
    }
    const float* xr = x + r * inner + start;
    float* yr = y + r * inner + start;
    for (size_t i = 0; i < len; i++) yr[i] = xr[i] * powf(k + a * sq[i], -beta);
  }
}
