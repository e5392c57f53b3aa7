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
static inline vf even_lanes(vf lo, vf hi) { return __builtin_shuffle(lo, hi, (vi)FC_EVEN_LANES); }
static inline vf odd_lanes(vf lo, vf hi) {
  return __builtin_shuffle(lo, hi, (vi)FC_EVEN_LANES + 1);
}

#endif
