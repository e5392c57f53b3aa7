/* Thread count, fork handling, calls in flight and build facts. OpenMP is optional: without it
 * every driver runs on one thread.
 *
 * Settings here are process-wide and may change while other threads run operator calls, so they
 * are read and written atomically; a call reads the thread count once per parallel region. */
#include <pthread.h>
#include <time.h>

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

/* GNU libgomp keeps its worker threads in a pool created by the first parallel region with more
 * than one thread. fork() copies the pool's bookkeeping but not its threads, so a parallel region
 * in the child waits forever for them. A child forked after a team started therefore runs every
 * operator on its calling thread (a one-thread region never touches the pool). */
static int teams_started = 0;
static int forked_after_teams = 0;
static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void) {
  if (__atomic_load_n(&teams_started, __ATOMIC_RELAXED))
    __atomic_store_n(&forked_after_teams, 1, __ATOMIC_RELAXED);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static void note_team_started(void) {
  if (__atomic_load_n(&teams_started, __ATOMIC_RELAXED)) return;
  /* Registered before the first team exists, so no fork can fall between the two. */
  pthread_once(&fork_handler_once, register_fork_handler);
  __atomic_store_n(&teams_started, 1, __ATOMIC_RELAXED);
}

int fc_forked_single_threaded(void) { return __atomic_load_n(&forked_after_teams, __ATOMIC_RELAXED); }

void fc_set_num_threads(int n) { __atomic_store_n(&num_threads, n > 0 ? n : 0, __ATOMIC_RELAXED); }

int fc_get_num_threads(void) {
#ifdef _OPENMP
  if (fc_forked_single_threaded()) return 1;
  const int n = __atomic_load_n(&num_threads, __ATOMIC_RELAXED);
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

int fc_threads_for(double flops) {
  /* Below about a million flops the fork/join of a parallel region costs more than it saves.
   * Inside a team (a convolution splitting its images, src/ops/conv2d.c) a driver runs on its
   * calling thread: its own region is then an inactive nested one. */
  const int n = fc_get_num_threads();
  if (flops < 1.0e6 || n == 1 || fc_in_team()) return 1;
  note_team_started();
  return n;
}

/* Memory-bound ops (poolings) take as long per float they read or write, when it comes from
 * L3 or memory (a layer's input just written by both cores, a cold output), as the GEMM takes
 * for about this many flops: GoogLeNet's 480-channel 14x14 poolings, 0.85 Mflop, ran on one
 * thread for 0.15-0.2 ms. Weighing their floats so (8-32 measured alike), two threads: the
 * poolings of GoogLeNet at batch 1 x0.70, AlexNet's x0.70, VGG-16's x0.94, MobileNetV2's global
 * pooling x0.75 (Zen 3, two threads, the plans' steps one by one, session 15). */
#define FC_FLOPS_PER_FLOAT_MOVED 16.0

int fc_threads_for_traffic(double flops, double floats) {
  return fc_threads_for(flops + FC_FLOPS_PER_FLOAT_MOVED * floats);
}

int fc_in_team(void) {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return 0;
#endif
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

void fc_run_team(int threads, fc_team_fn body, void* ctx) {
  if (threads <= 1) {
    body(ctx, 0, 1);
    return;
  }
#pragma omp parallel num_threads(threads)
  body(ctx, (size_t)fc_thread_id(), (size_t)fc_thread_count());
}

typedef struct loop_job {
  size_t n;
  fc_task_fn task;
  void* ctx;
} loop_job;

static void loop_share(void* job, size_t id, size_t count) {
  const loop_job* j = (const loop_job*)job;
  size_t begin, end;
  fc_share(j->n, id, count, &begin, &end);
  for (size_t i = begin; i < end; i++) j->task(j->ctx, i);
}

void fc_parallel_for(int threads, size_t n, fc_task_fn task, void* ctx) {
  loop_job job = {n, task, ctx};
  fc_run_team(threads, loop_share, &job);
}

/* Calls in flight: how many threads are inside an operator call right now. The bindings count
 * every call they make with the GIL released, which lets tests prove that several Python threads
 * compute at once; a test may also hold calls at their entry until it has seen them there. */
static int calls_in_flight = 0;
static long long hold_until_ns = 0; /* CLOCK_MONOTONIC deadline of a hold; 0: no hold */

static long long monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

void fc_call_begin(void) {
  __atomic_add_fetch(&calls_in_flight, 1, __ATOMIC_SEQ_CST);
  long long until;
  while ((until = __atomic_load_n(&hold_until_ns, __ATOMIC_ACQUIRE)) != 0 && monotonic_ns() < until) {
    const struct timespec nap = {0, 100000};
    nanosleep(&nap, NULL);
  }
}

void fc_call_end(void) { __atomic_sub_fetch(&calls_in_flight, 1, __ATOMIC_SEQ_CST); }

int fc_calls_in_flight(void) { return __atomic_load_n(&calls_in_flight, __ATOMIC_SEQ_CST); }

void fc_hold_calls(double seconds) {
  const long long until = seconds > 0 ? monotonic_ns() + (long long)(seconds * 1e9) : 0;
  __atomic_store_n(&hold_until_ns, until, __ATOMIC_RELEASE);
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
