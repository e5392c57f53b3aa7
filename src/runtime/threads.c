/* Thread count and build facts. OpenMP is optional: without it every driver runs on one thread. */
#include "fastconv.h"
#include "fc_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FC_BUILD_COMPILER
#define FC_BUILD_COMPILER "unknown"
#endif
#ifndef FC_BUILD_FLAGS
#define FC_BUILD_FLAGS "unknown"
#endif

static int num_threads = 0; /* 0: not set, use the OpenMP default (honours OMP_NUM_THREADS) */

void fc_set_num_threads(int n) { num_threads = n > 0 ? n : 0; }

int fc_get_num_threads(void) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  return 1;
#endif
}

int fc_threads_for(double flops) {
  /* Below about a million flops the fork/join of a parallel region costs more than it saves. */
  const int n = fc_get_num_threads();
  if (flops < 1.0e6) return 1;
  return n;
}

int fc_thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int fc_thread_count(void) {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

int fc_openmp_enabled(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

const char* fc_build_compiler(void) { return FC_BUILD_COMPILER; }
const char* fc_build_flags(void) { return FC_BUILD_FLAGS; }
