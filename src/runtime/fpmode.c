/* Denormal flushing. Products of tiny activations and weights can be denormal numbers, which
 * some CPUs compute through slow microcode assists; flushing them to zero (x86 MXCSR FTZ and
 * DAZ) keeps every layer at full speed and changes results only below 1.2e-38. The mode is set
 * on each thread of a parallel region for the region's duration and restored after, so neither
 * the caller's thread nor other users of the OpenMP pool see a change. */
#include "fastconv.h"
#include "fc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FC_MXCSR_FLUSH 0x8040u /* FTZ (bit 15) and DAZ (bit 6) */
#define FC_HAVE_MXCSR 1
#endif

static volatile int flush_denormals = 1;

void fc_set_flush_denormals(int enabled) { flush_denormals = enabled != 0; }

int fc_get_flush_denormals(void) { return flush_denormals; }

unsigned fc_fp_enter(void) {
#ifdef FC_HAVE_MXCSR
  const unsigned saved = _mm_getcsr();
  if (flush_denormals) _mm_setcsr(saved | FC_MXCSR_FLUSH);
  return saved;
#else
  return 0;
#endif
}

void fc_fp_exit(unsigned saved) {
#ifdef FC_HAVE_MXCSR
  _mm_setcsr(saved);
#else
  (void)saved;
#endif
}
