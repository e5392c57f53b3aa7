/* The only allocator of the C code: 64-byte aligned, so packed panels start on a cache line. */
#include <stdlib.h>

#include "fc_internal.h"

void* fc_alloc(size_t bytes) {
  void* p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
  return p;
}

void fc_free(void* p) { free(p); }
