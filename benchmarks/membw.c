/* STREAM-like memory bandwidth test (the read loop is a SIMD reduction: a scalar one is add-latency bound, not memory bound) (read / copy / triad over arrays far larger than the caches).
 * Build+run via benchmarks/membw.py. Reports best-of-N GB/s (1 GB = 1e9 bytes), as STREAM does.
 *   read:  sum += a[i]            bytes = 8 N        (what decoding does to the weights)
 *   copy:  c[i] = a[i]            bytes = 16 N       (write-allocate traffic not counted, as in STREAM)
 *   triad: a[i] = b[i] + s * c[i] bytes = 24 N
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static double now(void) { return omp_get_wtime(); }

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 64L * 1024 * 1024; /* doubles per array: 512 MiB each */
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    double *a = aligned_alloc(64, n * sizeof(double)), *b = aligned_alloc(64, n * sizeof(double)),
           *c = aligned_alloc(64, n * sizeof(double));
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) { a[i] = 1.0; b[i] = 2.0; c[i] = 0.0; }
    double best_read = 1e30, best_copy = 1e30, best_triad = 1e30, sink = 0;
    for (int r = 0; r < reps; r++) {
        double t = now(), sum = 0;
#pragma omp parallel for simd reduction(+ : sum) schedule(static)
        for (long i = 0; i < n; i++) sum += a[i];
        t = now() - t; if (t < best_read) best_read = t; sink += sum;
        t = now();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) c[i] = a[i];
        t = now() - t; if (t < best_copy) best_copy = t;
        t = now();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) a[i] = b[i] + 3.0 * c[i];
        t = now() - t; if (t < best_triad) best_triad = t;
    }
    printf("{\"threads\": %d, \"array_mib\": %.0f, \"read_gbs\": %.2f, \"copy_gbs\": %.2f, \"triad_gbs\": %.2f, "
           "\"sink\": %g}\n", omp_get_max_threads(), n * 8.0 / (1 << 20), 8.0 * n / best_read / 1e9,
           16.0 * n / best_copy / 1e9, 24.0 * n / best_triad / 1e9, sink);
    return 0;
}
