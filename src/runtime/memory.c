/* The only allocator of the C code: 64-byte aligned, so packed panels start on a cache line.
 *
 * Workspaces: operators need large scratch buffers (phase planes, Winograd matrices, packed B
 * panels) on every call. Allocating them per call costs a page fault per 4 KiB touched, up to a
 * sixth of a layer's time, so each thread keeps its buffers, one per slot, and reuses them: a
 * model's steady-state predict allocates nothing here. A buffer only grows (to the largest
 * request of its slot) and is freed when its thread exits. */
#include <pthread.h>
#include <stdlib.h>

#include "fc_internal.h"

void* fc_alloc(size_t bytes) {
  void* p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
  return p;
}

void fc_free(void* p) { free(p); }

typedef struct workspace {
  void* data;
  size_t bytes;
} workspace;

static _Thread_local workspace slots[FC_WS_COUNT];
static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;

static void free_slots(void* thread_slots) {
  workspace* s = (workspace*)thread_slots;
  for (int i = 0; i < FC_WS_COUNT; i++) {
    fc_free(s[i].data);
    s[i].data = NULL;
    s[i].bytes = 0;
  }
}

static void make_exit_key(void) { pthread_key_create(&exit_key, free_slots); }

void* fc_workspace(int slot, size_t bytes) {
  workspace* w = &slots[slot];
  if (w->bytes >= bytes && w->data) return w->data;
  pthread_once(&exit_key_once, make_exit_key);
  pthread_setspecific(exit_key, slots); /* frees this thread's buffers when it exits */
  fc_free(w->data);
  w->data = fc_alloc(bytes);
  w->bytes = w->data ? bytes : 0;
  return w->data;
}
