/* Shared by the kernel sources that are compiled once per ISA (-DFC_ISA=scalar|avx2|avx512f):
 * FC_NAME(base) gives base__<isa>, and the GCC/Clang vector type `vf` (with `vi`, its lanes as
 * integers) is as wide as the ISA's registers, with unaligned load and store. */
#ifndef FC_PORTABLE_SIMD_H
#define FC_PORTABLE_SIMD_H

#include <stdint.h>

#ifndef FC_ISA
#error "compile with -DFC_ISA=scalar|avx2|avx512f"
#endif
#define FC_PASTE2(a, b) a##__##b
#define FC_PASTE(a, b) FC_PASTE2(a, b)
#define FC_NAME(base) FC_PASTE(base, FC_ISA)

#if defined(__AVX512F__)
#define VLEN 16
#elif defined(__AVX__)
#define VLEN 8
#else
#define VLEN 4
#endif

typedef float vf __attribute__((vector_size(VLEN * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VLEN * sizeof(float))));

static inline vf load(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

static inline void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }

/* Columns 2i and 2i + 1 of the 2 * VLEN consecutive columns held in (lo, hi): a stride-2 split
 * in registers (a permute of two vectors). */
#if VLEN == 16
#define FC_EVEN_LANES {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#elif VLEN == 8
#define FC_EVEN_LANES {0, 2, 4, 6, 8, 10, 12, 14}
#else
#define FC_EVEN_LANES {0, 2, 4, 6}
#endif
#if VLEN == 8 && defined(__AVX2__)
/* AVX2: GCC makes each of these two vpermd and a blend; one in-lane vshufps of both vectors and a
 * vpermpd that puts the 64-bit pairs in order is 2 shuffles. A stride-2 split of ResNet-50's
 * 128 x 56 x 56 input into phase planes: 0.214 -> 0.075 ms (Zen 3, a C harness). */
#include <immintrin.h>
static inline vf lanes_in_order(__m256 v) {
  return (vf)_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
}
static inline vf even_lanes(vf lo, vf hi) {
  return lanes_in_order(_mm256_shuffle_ps((__m256)lo, (__m256)hi, 0x88));
}
static inline vf odd_lanes(vf lo, vf hi) {
  return lanes_in_order(_mm256_shuffle_ps((__m256)lo, (__m256)hi, 0xDD));
}
#else
static inline vf even_lanes(vf lo, vf hi) { return __builtin_shuffle(lo, hi, (vi)FC_EVEN_LANES); }
static inline vf odd_lanes(vf lo, vf hi) {
  return __builtin_shuffle(lo, hi, (vi)FC_EVEN_LANES + 1);
}
#endif

/* The inverse of even_lanes / odd_lanes: lanes a0 b0 a1 b1 ... of the first half of a and b
 * (interleave_low), of the second half (interleave_high). */
#if VLEN == 16
#define FC_ZIP_LOW {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#elif VLEN == 8
#define FC_ZIP_LOW {0, 8, 1, 9, 2, 10, 3, 11}
#else
#define FC_ZIP_LOW {0, 4, 1, 5}
#endif
static inline vf interleave_low(vf a, vf b) { return __builtin_shuffle(a, b, (vi)FC_ZIP_LOW); }
static inline vf interleave_high(vf a, vf b) {
  return __builtin_shuffle(a, b, (vi)FC_ZIP_LOW + VLEN / 2);
}

/* Neighbouring columns from two consecutive vectors a, b of a row: shift1 / shift2 are the
 * columns one / two to the right of a's (a moved down, b's first lanes shifted in), and
 * shift_in_last the columns one to the left of b's (a's last lane, then b's first VLEN - 1). */
#if VLEN == 16
#define FC_SHIFT1 {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
#elif VLEN == 8
#define FC_SHIFT1 {1, 2, 3, 4, 5, 6, 7, 8}
#else
#define FC_SHIFT1 {1, 2, 3, 4}
#endif
static inline vf shift1(vf a, vf b) { return __builtin_shuffle(a, b, (vi)FC_SHIFT1); }
static inline vf shift2(vf a, vf b) { return __builtin_shuffle(a, b, (vi)FC_SHIFT1 + 1); }
static inline vf shift_in_last(vf a, vf b) {
  return __builtin_shuffle(a, b, (vi)FC_SHIFT1 + (VLEN - 2));
}

#endif
