/* Test programs for sparsemm efence, one per argv[1]; built by tests/test_efence.py.
 * Each prints what it checked to stdout and exits 0, or dies where the test expects. */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wuse-after-free"
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#pragma GCC diagnostic ignored "-Walloc-size-larger-than="
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "check failed line %d: %s\n", __LINE__, #c); exit(90); } } while (0)

static int (*owns_fn)(const void *);
static int owns(const void *p) {
    if (!owns_fn) owns_fn = (int (*)(const void *))dlsym(RTLD_DEFAULT, "sparsemm_efence_owns");
    return owns_fn ? owns_fn(p) : -1;
}
static volatile char sink;
static void poke(char *p) { *(volatile char *)p = 1; }   /* a store the compiler keeps */

static int map_count(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

static void step(const char *s) { printf("%s\n", s); fflush(stdout); }

static int overflow(size_t n, int read) {
    char *volatile p = malloc(n);
    CHECK(p);
    memset(p, 7, n);
    printf("block %p size %zu\n", (void *)p, n);
    step("before");
    if (read) sink = p[n]; else poke(p + n);
    step("after");
    return 0;
}

static int underflow(void) {
    char *volatile p = malloc(100);
    memset(p, 7, 100);
    step("before");
    poke(p - 1);
    step("after");
    return 0;
}

static int uaf(void) {
    char *volatile p = malloc(64);
    memset(p, 7, 64);
    free(p);
    step("before");
    sink = p[10];
    step("after");
    return 0;
}

static int double_free(void) {
    char *p = malloc(32), *keep[1000];
    free(p);
    step("before");
    free(p);                       /* reported; with --on-error continue, ignored */
    char *q = malloc(48);
    free(q + 5);                   /* interior pointer: reported, ignored */
    step("after");
    /* The allocator is intact: 1000 blocks, all distinct and ours, each written whole. */
    for (int i = 0; i < 1000; i++) {
        keep[i] = malloc(32);
        CHECK(keep[i] && keep[i] != p && owns(keep[i]) == 1);
        memset(keep[i], i & 0xff, 32);
    }
    for (int i = 0; i < 1000; i++)
        for (int j = 0; j < 32; j++) CHECK((unsigned char)keep[i][j] == (i & 0xff));
    CHECK(owns(q) == 1);
    free(q);
    for (int i = 0; i < 1000; i++) free(keep[i]);
    step("intact");
    return 0;
}

static int do_realloc(int overflow_after) {
    unsigned char *p = realloc(NULL, 10);
    for (int i = 0; i < 10; i++) p[i] = (unsigned char)i;
    p = realloc(p, 5000);          /* grow: contents kept */
    for (int i = 0; i < 10; i++) CHECK(p[i] == i);
    for (int i = 0; i < 5000; i++) p[i] = (unsigned char)(i * 7);
    p = realloc(p, 3 << 20);       /* into a mapping of its own */
    for (int i = 0; i < 5000; i++) CHECK(p[i] == (unsigned char)(i * 7));
    p[(3 << 20) - 1] = 1;
    p = realloc(p, 100);           /* shrink: contents kept, new end at the guard */
    for (int i = 0; i < 100; i++) CHECK(p[i] == (unsigned char)(i * 7));
    CHECK(malloc_usable_size(p) == 100);
    step("contents kept");
    if (overflow_after) { step("before"); poke((char *)p + 100); step("after"); }
    CHECK(realloc(p, 0) == NULL);  /* glibc: frees, returns NULL */
    return 0;
}

static int alignment(void) {
    void *p;
    size_t aligns[] = {8, 16, 64, 256, 4096, 1 << 16, 1 << 21};
    for (size_t k = 0; k < sizeof aligns / sizeof aligns[0]; k++) {
        size_t a = aligns[k];
        p = memalign(a, 100); CHECK(p && (uintptr_t)p % a == 0); memset(p, 1, 100); free(p);
        CHECK(posix_memalign(&p, a, 1000) == 0 && (uintptr_t)p % a == 0); memset(p, 1, 1000); free(p);
        p = aligned_alloc(a, 3 * a); CHECK(p && (uintptr_t)p % a == 0); memset(p, 1, 3 * a); free(p);
    }
    CHECK(posix_memalign(&p, 24, 10) == EINVAL);
    CHECK(posix_memalign(&p, 4, 10) == EINVAL);
    p = valloc(100); CHECK(p && (uintptr_t)p % 4096 == 0); memset(p, 1, 100); free(p);
    p = pvalloc(100); CHECK(p && (uintptr_t)p % 4096 == 0 && malloc_usable_size(p) == 4096);
    memset(p, 1, 4096); free(p);
    p = memalign(48, 10); CHECK(p && (uintptr_t)p % 64 == 0); free(p);  /* glibc rounds up */
    step("aligned");
    return 0;
}

static int do_calloc(void) {
    for (int round = 0; round < 200; round++) {
        size_t n = 1 + (size_t)round * 37;
        unsigned char *p = calloc(n, 8);
        CHECK(p);
        for (size_t i = 0; i < n * 8; i++) CHECK(p[i] == 0);
        memset(p, 0xAB, n * 8);        /* dirty it: the next calloc of a reused slot must be zero */
        free(p);
    }
    errno = 0;
    CHECK(calloc((size_t)1 << 33, (size_t)1 << 33) == NULL && errno == ENOMEM);   /* wraps */
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    step("zeroed");
    return 0;
}

static int usable(void) {
    for (size_t n = 0; n < 9000; n += 37) {
        char *p = malloc(n);
        CHECK(malloc_usable_size(p) == n);
        free(p);
    }
    char *big = malloc(5 << 20);
    CHECK(malloc_usable_size(big) == (size_t)5 << 20);
    free(big);
    CHECK(malloc_usable_size(NULL) == 0);
    step("usable");
    return 0;
}

static volatile int stop;
static void *churn(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (!stop) {
        char *p = malloc(1 + rand_r(&seed) % 3000);
        p[0] = 1;
        free(p);
    }
    return NULL;
}

static int fork_threads(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < 40; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {                /* the child allocates: the lock must not be held */
            for (int j = 0; j < 100; j++) { char *p = malloc(100 + j); p[99 + j] = 1; free(p); }
            _exit(0);
        }
        int st;
        CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    step("forked");
    return 0;
}

#define LIVE 64
static void *worker(void *arg) {
    uint32_t id = (uint32_t)(uintptr_t)arg, seed = id * 2654435761u;
    uint32_t *blk[LIVE] = {0};
    size_t len[LIVE] = {0};
    for (uint32_t it = 0; it < 6000; it++) {
        int k = (int)(it % LIVE);
        if (blk[k]) {                  /* every word still carries our tag: nobody else had it */
            uint32_t tag = blk[k][0];
            CHECK(tag >> 24 == id);
            for (size_t w = 0; w < len[k]; w++) CHECK(blk[k][w] == tag);
            free(blk[k]);
        }
        seed = seed * 1103515245u + 12345u;
        len[k] = 1 + (seed >> 8) % 1500;
        blk[k] = malloc(len[k] * 4);
        CHECK(blk[k]);
        uint32_t tag = (id << 24) | (it & 0xffffff);
        for (size_t w = 0; w < len[k]; w++) blk[k][w] = tag;
    }
    for (int k = 0; k < LIVE; k++) free(blk[k]);
    return NULL;
}

static int threads(void) {
    pthread_t t[8];
    for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
    step("threads ok");
    return 0;
}

static int sample(void) {
    char *p[1000];
    int guarded = 0, first = -1, other = -1;
    for (int i = 0; i < 1000; i++) {
        p[i] = malloc(100);
        memset(p[i], 1, 100);
        if (owns(p[i]) == 1) { guarded++; if (first < 0) first = i; }
        else if (other < 0) other = i;
    }
    printf("guarded %d\n", guarded);
    poke(p[other] + 100);                /* the system allocator's block: no guard */
    step("unguarded overflow not caught");
    for (int i = 0; i < 1000; i++) if (i != first) free(p[i]);
    step("before");
    poke(p[first] + 100);
    step("after");
    return 0;
}

static int live(long n, long overflow_at) {
    int before = map_count();
    char **p = malloc(n * sizeof *p);
    size_t *len = malloc(n * sizeof *len);
    for (long i = 0; i < n; i++) {
        len[i] = 8 + (size_t)(i * 7919 % 300);
        p[i] = malloc(len[i]);
        if (!p[i]) { printf("malloc failed after %ld blocks\n", i); fflush(stdout); return 1; }
        memset(p[i], (int)(i & 0xff), len[i]);
    }
    printf("live %ld vmas %d (before %d)\n", n, map_count(), before);
    fflush(stdout);
    if (overflow_at >= 0) {
        printf("overflow block %ld size %zu\n", overflow_at, len[overflow_at]);
        step("before");
        poke(p[overflow_at] + len[overflow_at]);
        step("after");
    }
    for (long i = 0; i < n; i++) {
        CHECK((unsigned char)p[i][len[i] - 1] == (i & 0xff));
        free(p[i]);
    }
    step("done");
    return 0;
}

static int zero(void) {
    char *volatile a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b);
    step("before");
    poke(a);
    step("after");
    return 0;
}

int main(int argc, char **argv) {
    const char *c = argc > 1 ? argv[1] : "";
    if (!strcmp(c, "overflow")) return overflow(argc > 2 ? strtoul(argv[2], 0, 0) : 100, 0);
    if (!strcmp(c, "overflow_read")) return overflow(argc > 2 ? strtoul(argv[2], 0, 0) : 100, 1);
    if (!strcmp(c, "underflow")) return underflow();
    if (!strcmp(c, "uaf")) return uaf();
    if (!strcmp(c, "double_free")) return double_free();
    if (!strcmp(c, "realloc")) return do_realloc(0);
    if (!strcmp(c, "realloc_overflow")) return do_realloc(1);
    if (!strcmp(c, "align")) return alignment();
    if (!strcmp(c, "calloc")) return do_calloc();
    if (!strcmp(c, "usable")) return usable();
    if (!strcmp(c, "fork_threads")) return fork_threads();
    if (!strcmp(c, "threads")) return threads();
    if (!strcmp(c, "sample")) return sample();
    if (!strcmp(c, "live")) return live(strtol(argv[2], 0, 0), argc > 3 ? strtol(argv[3], 0, 0) : -1);
    if (!strcmp(c, "zero")) return zero();
    if (!strcmp(c, "exit")) return atoi(argv[2]);
    if (!strcmp(c, "kill")) { raise(atoi(argv[2])); return 99; }
    if (!strcmp(c, "owns")) { void *volatile p = malloc(10); printf("owns %d\n", owns(p)); return 0; }
    fprintf(stderr, "unknown case %s\n", c);
    return 64;
}
