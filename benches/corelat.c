/*
 * corelat: the round-trip time of one cache line bounced between CPU 0 and CPU 1, in ns.
 *
 * Why the HTTP bench runs it around every Range run: on a small VM the host decides where the
 * guest's CPUs run. When both sit on one core complex (sharing an L3) a line crosses between
 * them in ~50-110 ns; when they sit on two, in ~330-400 ns. A server that copies the bytes it
 * serves (Cairn reads, verifies and writes them) hands `wrk` lines that are dirty in the other
 * CPU's cache, and pays for every crossing; nginx's sendfile hands over page-cache pages no CPU
 * has just written. So the Range ratio depends on the placement of the moment, and the bench reports it
 * (docs/performance.md).
 *
 * Build: cc -O2 -pthread benches/corelat.c -o corelat. Prints "<ns>", exits 1 if it cannot pin.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(64) _Atomic long flag;
static const long rounds = 100000;

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* CPU 1: says it is ready (-1), then answers each odd value with the next even one. */
static void *echo(void *arg) {
    (void)arg;
    if (pin(1) != 0) exit(1);
    atomic_store_explicit(&flag, -1, memory_order_release);
    for (long i = 0; i < rounds; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1) {}
        atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

int main(void) {
    pthread_t peer;
    struct timespec a, b;
    /* The peer starts before this thread pins itself, so it need not wait for CPU 0; the clock
       starts once it runs on CPU 1. */
    if (pthread_create(&peer, NULL, echo, NULL) != 0 || pin(0) != 0) return 1;
    while (atomic_load_explicit(&flag, memory_order_acquire) != -1) {}
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < rounds; i++) {
        atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(peer, NULL);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.0f\n", ns / rounds);
    return 0;
}
