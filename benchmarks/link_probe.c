/* Round trip of one cache line between two CPUs: a thread on each passes a counter back and
 * forth. Prints the median of 5 batches of 4000 round trips, in nanoseconds.
 *
 *     cc -O2 -pthread benchmarks/link_probe.c -o link_probe && ./link_probe 0 1
 *
 * On the shared 2-vCPU machines of docs/benchmarks.md it reads about 50-65 ns most of the time
 * and 300-380 ns in the "slow phases", when the host places the two virtual CPUs apart and data
 * one core wrote costs the other several times more. Linux only (CPU affinity). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCHES 5
#define TRIPS 4000

static volatile long counter __attribute__((aligned(64)));

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

/* The far side: answers every odd value with the next even one. */
static void* answer(void* cpu) {
  pin(*(int*)cpu);
  for (long v = 1; v < 2L * BATCHES * TRIPS; v += 2) {
    while (counter != v) continue;
    counter = v + 1;
  }
  return NULL;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  int near = argc > 1 ? atoi(argv[1]) : 0, far = argc > 2 ? atoi(argv[2]) : 1;
  pthread_t thread;
  pin(near);
  counter = 0;
  if (pthread_create(&thread, NULL, answer, &far) != 0) return 1;
  double batch_ns[BATCHES];
  long v = 0;
  for (int b = 0; b < BATCHES; b++) {
    const double start = now_ns();
    for (int i = 0; i < TRIPS; i++, v += 2) {
      counter = v + 1;
      while (counter != v + 2) continue;
    }
    batch_ns[b] = (now_ns() - start) / TRIPS;
  }
  pthread_join(thread, NULL);
  qsort(batch_ns, BATCHES, sizeof batch_ns[0], by_value);
  printf("%.0f\n", batch_ns[BATCHES / 2]);
  return 0;
}
