/* Memory read bandwidth: THREADS threads each sum their slice of a buffer much larger than the
 * caches; prints the best of RUNS passes in GB/s (1e9 bytes/s). A batch-1 decode step reads
 * every weight once, so bandwidth / model bytes bounds decode tokens/s.
 *
 *   cc -O3 -march=native -pthread bench/membw.c -o membw && ./membw [THREADS] [MIB] [RUNS]
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} slice_t;

static void *reader(void *arg) {
    slice_t *s = arg;
    /* Four independent accumulators so the loop is bound by loads, not by an add chain. */
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= s->n; i += 4) {
        a += s->p[i];
        b ^= s->p[i + 1];
        c += s->p[i + 2];
        d ^= s->p[i + 3];
    }
    for (; i < s->n; i++) a += s->p[i];
    s->sum = a + b + c + d;
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 512;
    int runs = argc > 3 ? atoi(argv[3]) : 5;
    if (threads < 1 || threads > 1024 || mib < 1 || runs < 1) {
        fprintf(stderr, "usage: membw [THREADS>=1] [MIB>=1] [RUNS>=1]\n");
        return 2;
    }
    size_t words = mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *buf = malloc(words * sizeof(uint64_t));
    if (!buf) {
        fprintf(stderr, "cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < words; i++) buf[i] = i * 2654435761u;
    pthread_t tid[1024];
    slice_t sl[1024];
    double best = 0;
    uint64_t check = 0;
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        size_t per = words / threads;
        for (int t = 0; t < threads; t++) {
            sl[t].p = buf + t * per;
            sl[t].n = t == threads - 1 ? words - t * per : per;
            pthread_create(&tid[t], NULL, reader, &sl[t]);
        }
        for (int t = 0; t < threads; t++) {
            pthread_join(tid[t], NULL);
            check += sl[t].sum;
        }
        double gbs = (double)(words * sizeof(uint64_t)) / (now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("%.2f\n", best);
    fprintf(stderr, "membw: %d threads, %zu MiB, best of %d: %.2f GB/s (checksum %llu)\n", threads, mib,
            runs, best, (unsigned long long)(check & 0xff));
    free(buf);
    return 0;
}
