/*
 * sparsemm efence: a guard-page allocator loaded with LD_PRELOAD.
 *
 * Owns every block it hands out: each one ends exactly at a guard page (or, with
 * SPARSEMM_EFENCE_UNDERFLOW=1, starts right after one), freed blocks stay guarded in
 * a bounded FIFO quarantine, and a SIGSEGV handler names the block a fault hit.
 * It must not touch memory it did not map, and never calls the real allocator
 * except for the allocations --sample leaves unguarded.  Options and report format:
 * docs/efence.md.
 *
 * Layout.  One PROT_NONE reservation holds a region per size class (slots of
 * 1..256 pages).  A slot is a stride of npages data pages plus one guard page.
 * In markers mode a class region grows by mprotect(RW) + one MADV_GUARD_INSTALL
 * over the new chunk, so every page of it is a guard until handed out; an
 * allocation removes the guard markers from the pages its block covers, a free
 * installs them again (which also discards the contents).  The region stays one
 * read-write VMA however many blocks are live.  In prot_none mode the region stays
 * PROT_NONE and each block's pages are mprotect()ed read-write: two VMAs per live
 * block, which is why that mode stops at vm.max_map_count.  Blocks bigger than a
 * class, or aligned to more than a page, get their own mapping.
 *
 * Locking: one mutex guards the metadata; system calls on a block's own pages run
 * outside it (the block is owned by the caller at that point).  The mutex is taken
 * around fork (pthread_atfork).  The signal handler reads the metadata without the
 * lock: it only reads, and the process is about to die.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

#define API __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))

/* ---- options (environment, read once) ------------------------------------------------ */

enum { MODE_AUTO, MODE_MARKERS, MODE_PROT_NONE };

static struct {
    int mode;               /* MODE_MARKERS or MODE_PROT_NONE once initialised */
    int underflow;          /* guard before the block instead of after it */
    size_t align;           /* minimum alignment of malloc'd blocks (power of two) */
    size_t quarantine;      /* bytes of freed blocks (page-rounded) kept guarded */
    unsigned long sample;   /* guard one allocation in this many (1 = all) */
    int bt_depth;           /* frames kept per allocation and free; 0 = off */
    int abort_on_error;     /* double/invalid free: abort (1) or report and go on (0) */
} opt = {MODE_AUTO, 0, 1, 256u << 20, 1, 0, 1};

/* ---- the arena ------------------------------------------------------------------------ */

static const uint32_t class_pages[] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24,
                                       28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160,
                                       192, 224, 256};
#define NCLASSES ((int)(sizeof class_pages / sizeof class_pages[0]))
#define NONE32 UINT32_MAX
#define MAX_BT 64

enum { ST_NEVER = 0, ST_LIVE, ST_QUARANTINED, ST_FREE };

struct slot {              /* one per slot of a class region */
    uint64_t size;         /* bytes asked for (kept after free, for reports) */
    uint32_t uoff;         /* user pointer - stride start */
    uint32_t next;         /* free list link (ST_FREE) */
    uint32_t state;
    uint32_t pad;
};

struct sclass {
    uintptr_t base;        /* region start */
    size_t stride;         /* bytes: (npages + 1) pages */
    size_t nslots;         /* capacity of the region */
    size_t carved;         /* slots made usable (markers: RW and guard-installed) */
    size_t used;           /* slots handed out at least once (bump index) */
    uint32_t npages;
    uint32_t free_head;
    struct slot *slots;
    void **bt;             /* 2 * bt_depth frames per slot (alloc, free) or NULL */
};

struct large {             /* a block with its own mapping */
    uintptr_t map;
    size_t maplen;
    uintptr_t user;
    size_t size;
    uint32_t state;
    uint32_t next;         /* free list of records */
};

#define LARGE_MAX (1u << 20)
#define HT_BITS 21
#define HT_SIZE (1u << HT_BITS)
#define QCAP (1u << 20)
#define Q_LARGE (1ull << 63)

static size_t page;
static uintptr_t arena_base, arena_end;
static size_t class_span;
static struct sclass classes[NCLASSES];

static struct large *large_rec;
static void **large_bt;
static uint32_t *large_ht;          /* open addressing, linear probing: record index + 1 */
static uint32_t large_hwm, large_free = NONE32;
static _Atomic uintptr_t large_lo = UINTPTR_MAX, large_hi = 0;

static uint64_t *qring;             /* quarantine FIFO */
static size_t qhead, qcount, qbytes;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int init_state;      /* 0 none, 1 arena being set up, 2 arena ready, 3 done */
static _Atomic unsigned long sample_ctr;
static _Atomic int wall_reported;
static TLS int in_internal;         /* set while we call code that may allocate */
static long max_map_count_cached = -1;

static void *(*real_malloc)(size_t);
static void (*real_free)(void *);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void *(*real_memalign)(size_t, size_t);
static size_t (*real_usable)(void *);

/* ---- async-signal-safe output --------------------------------------------------------- */

struct out { char buf[512]; size_t n; };

static void out_s(struct out *o, const char *s) {
    while (*s && o->n < sizeof o->buf - 1) o->buf[o->n++] = *s++;
}
static void out_u(struct out *o, unsigned long long v) {
    char t[24]; int i = 0;
    do { t[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i && o->n < sizeof o->buf - 1) o->buf[o->n++] = t[--i];
}
static void out_x(struct out *o, unsigned long long v) {
    char t[20]; int i = 0;
    do { t[i++] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    out_s(o, "0x");
    while (i && o->n < sizeof o->buf - 1) o->buf[o->n++] = t[--i];
}
static void out_line(struct out *o) {   /* writes "sparsemm efence: <text>\n" and resets */
    static const char pfx[] = "sparsemm efence: ";
    char line[sizeof pfx + sizeof o->buf];
    size_t n = sizeof pfx - 1, off = 0;
    memcpy(line, pfx, n);
    memcpy(line + n, o->buf, o->n);
    n += o->n;
    line[n++] = '\n';
    while (off < n) {
        ssize_t w = write(2, line + off, n - off);
        if (w <= 0 && errno != EINTR) break;
        if (w > 0) off += (size_t)w;
    }
    o->n = 0;
}
static void say(const char *s) { struct out o = {.n = 0}; out_s(&o, s); out_line(&o); }

/* ---- options -------------------------------------------------------------------------- */

static int parse_size(const char *v, size_t *out) {
    size_t x = 0;
    if (!*v) return -1;
    for (; *v >= '0' && *v <= '9'; v++) {
        if (x > (SIZE_MAX - 9) / 10) return -1;
        x = x * 10 + (size_t)(*v - '0');
    }
    int shift = 0;
    if (*v == 'k' || *v == 'K') shift = 10, v++;
    else if (*v == 'm' || *v == 'M') shift = 20, v++;
    else if (*v == 'g' || *v == 'G') shift = 30, v++;
    if (*v) return -1;
    if (shift && x > (SIZE_MAX >> shift)) return -1;
    *out = x << shift;
    return 0;
}

static void bad_option(const char *name, const char *val) {
    struct out o = {.n = 0};
    out_s(&o, "ignoring "); out_s(&o, name); out_s(&o, "="); out_s(&o, val);
    out_s(&o, " (bad value; see docs/efence.md)");
    out_line(&o);
}

static void set_option(const char *name, const char *val) {
    size_t x;
    if (!strcmp(name, "MODE")) {
        if (!strcmp(val, "markers")) opt.mode = MODE_MARKERS;
        else if (!strcmp(val, "prot_none")) opt.mode = MODE_PROT_NONE;
        else if (!strcmp(val, "auto")) opt.mode = MODE_AUTO;
        else bad_option("SPARSEMM_EFENCE_MODE", val);
    } else if (!strcmp(name, "UNDERFLOW")) {
        if (!strcmp(val, "0") || !strcmp(val, "1")) opt.underflow = val[0] == '1';
        else bad_option("SPARSEMM_EFENCE_UNDERFLOW", val);
    } else if (!strcmp(name, "ALIGN")) {
        if (parse_size(val, &x) || !x || (x & (x - 1)) || x > 4096) bad_option("SPARSEMM_EFENCE_ALIGN", val);
        else opt.align = x;
    } else if (!strcmp(name, "QUARANTINE")) {
        if (parse_size(val, &x)) bad_option("SPARSEMM_EFENCE_QUARANTINE", val);
        else opt.quarantine = x;
    } else if (!strcmp(name, "SAMPLE")) {
        if (parse_size(val, &x) || !x) bad_option("SPARSEMM_EFENCE_SAMPLE", val);
        else opt.sample = x;
    } else if (!strcmp(name, "BACKTRACE")) {
        if (parse_size(val, &x) || x > MAX_BT) bad_option("SPARSEMM_EFENCE_BACKTRACE", val);
        else opt.bt_depth = (int)x;
    } else if (!strcmp(name, "ON_ERROR")) {
        if (!strcmp(val, "abort")) opt.abort_on_error = 1;
        else if (!strcmp(val, "continue")) opt.abort_on_error = 0;
        else bad_option("SPARSEMM_EFENCE_ON_ERROR", val);
    }
}

static void take_entry(const char *e) {
    static const char pfx[] = "SPARSEMM_EFENCE_";
    if (strncmp(e, pfx, sizeof pfx - 1)) return;
    e += sizeof pfx - 1;
    const char *eq = strchr(e, '=');
    if (!eq || eq - e > 31) return;
    char name[32];
    memcpy(name, e, (size_t)(eq - e));
    name[eq - e] = 0;
    set_option(name, eq + 1);
}

/* The environment is read from /proc/self/environ: malloc can be called (by ld.so
 * or an earlier constructor) before libc has set up environ for getenv. */
static void read_options(void) {
    int fd = open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        extern char **environ;
        for (char **e = environ; e && *e; e++) take_entry(*e);
        return;
    }
    char chunk[4096], entry[256];
    size_t elen = 0;
    int skip = 0;
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) > 0 || (n < 0 && errno == EINTR)) {
        for (ssize_t i = 0; i < n; i++) {
            char c = chunk[i];
            if (c == 0) {
                if (!skip) { entry[elen] = 0; take_entry(entry); }
                elen = 0; skip = 0;
            } else if (!skip) {
                if (elen == sizeof entry - 1) skip = 1; else entry[elen++] = c;
            }
        }
    }
    close(fd);
}

static long max_map_count(void) {
    if (max_map_count_cached >= 0) return max_map_count_cached;
    long v = 65530;
    int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char b[32];
        ssize_t n = read(fd, b, sizeof b - 1);
        if (n > 0) {
            long x = 0;
            for (ssize_t i = 0; i < n && b[i] >= '0' && b[i] <= '9'; i++) x = x * 10 + (b[i] - '0');
            if (x > 0) v = x;
        }
        close(fd);
    }
    return max_map_count_cached = v;
}

/* ---- page operations ------------------------------------------------------------------ */

static int madv(uintptr_t addr, size_t len, int advice) {
    if (!len) return 0;
    for (;;) {
        if (madvise((void *)addr, len, advice) == 0) return 0;
        if (errno != EINTR && errno != EAGAIN) return -1;
    }
}

static int markers_supported(void) {
    void *m = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 0;
    int ok = madvise(m, page, MADV_GUARD_INSTALL) == 0;
    munmap(m, 2 * page);
    return ok;
}

static void report_wall(void) {
    if (atomic_exchange(&wall_reported, 1)) return;
    struct out o = {.n = 0};
    out_s(&o, "out of VMAs: vm.max_map_count (");
    out_u(&o, (unsigned long long)max_map_count());
    out_s(&o, ") reached in prot_none mode, where every live block costs two VMAs; "
              "allocations now fail with ENOMEM (markers mode has no such wall)");
    out_line(&o);
}

/* Make [addr, addr+len) usable by a block: remove guard markers or mprotect RW. */
static int open_pages(uintptr_t addr, size_t len) {
    if (!len) return 0;
    if (opt.mode == MODE_MARKERS) return madv(addr, len, MADV_GUARD_REMOVE);
    if (mprotect((void *)addr, len, PROT_READ | PROT_WRITE) == 0) return 0;
    if (errno == ENOMEM) report_wall();
    return -1;
}

/* Guard [addr, addr+len) again and drop its contents. */
static void close_pages(uintptr_t addr, size_t len) {
    if (!len) return;
    if (opt.mode == MODE_MARKERS) {
        madv(addr, len, MADV_GUARD_INSTALL);
    } else {
        madv(addr, len, MADV_DONTNEED);
        if (mprotect((void *)addr, len, PROT_NONE) && errno == ENOMEM) report_wall();
    }
}

static inline uintptr_t page_down(uintptr_t a) { return a & ~(uintptr_t)(page - 1); }
static inline uintptr_t page_up(uintptr_t a) { return (a + page - 1) & ~(uintptr_t)(page - 1); }

/* ---- initialisation ------------------------------------------------------------------- */

static void *map_meta(size_t len) {
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return m == MAP_FAILED ? NULL : m;
}

static void fatal(const char *what) {
    struct out o = {.n = 0};
    out_s(&o, "cannot start: "); out_s(&o, what); out_s(&o, " failed (errno ");
    out_u(&o, (unsigned long long)errno); out_s(&o, ")");
    out_line(&o);
    _exit(127);
}

/* Phase 1: options, the reservation and the metadata. No allocation happens here. */
static void init_arena(void) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    read_options();
    if (opt.mode != MODE_PROT_NONE) {
        int have = markers_supported();
        if (!have) {
            struct out o = {.n = 0};
            out_s(&o, "this kernel has no guard markers (MADV_GUARD_INSTALL, Linux 6.13+): "
                      "falling back to PROT_NONE guards; every live block costs two VMAs, so the "
                      "program fails at vm.max_map_count (");
            out_u(&o, (unsigned long long)max_map_count());
            out_s(&o, "), about ");
            out_u(&o, (unsigned long long)max_map_count() / 2);
            out_s(&o, " live blocks");
            out_line(&o);
        }
        opt.mode = have ? MODE_MARKERS : MODE_PROT_NONE;
    }
    if (opt.align > page) opt.align = page;
    /* Reserve a region per class; halve the span until the kernel agrees (RLIMIT_AS). */
    void *r = MAP_FAILED;
    for (class_span = (size_t)16 << 30; class_span >= ((size_t)64 << 20); class_span >>= 1) {
        r = mmap(NULL, class_span * NCLASSES, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (r != MAP_FAILED) break;
    }
    if (r == MAP_FAILED) fatal("reserving the arena");
    arena_base = (uintptr_t)r;
    arena_end = arena_base + class_span * NCLASSES;
    size_t meta = 0;
    for (int c = 0; c < NCLASSES; c++) {
        struct sclass *k = &classes[c];
        k->npages = class_pages[c];
        k->stride = (k->npages + 1) * page;
        k->base = arena_base + (size_t)c * class_span;
        k->nslots = class_span / k->stride;
        if (k->nslots > NONE32 - 1) k->nslots = NONE32 - 1;
        k->free_head = NONE32;
        meta += k->nslots * sizeof(struct slot);
        if (opt.mode == MODE_PROT_NONE) k->carved = k->nslots;   /* nothing to prepare */
    }
    char *m = map_meta(meta);
    if (!m) fatal("mapping the slot table");
    for (int c = 0; c < NCLASSES; c++) {
        classes[c].slots = (struct slot *)m;
        m += classes[c].nslots * sizeof(struct slot);
    }
    if (opt.bt_depth) {
        size_t per = 2 * (size_t)opt.bt_depth * sizeof(void *), total = 0;
        for (int c = 0; c < NCLASSES; c++) total += classes[c].nslots * per;
        char *b = map_meta(total + (size_t)LARGE_MAX * per);
        if (!b) fatal("mapping the backtrace table");
        for (int c = 0; c < NCLASSES; c++) {
            classes[c].bt = (void **)b;
            b += classes[c].nslots * per;
        }
        large_bt = (void **)b;
    }
    large_rec = map_meta((size_t)LARGE_MAX * sizeof(struct large));
    large_ht = map_meta((size_t)HT_SIZE * sizeof(uint32_t));
    qring = map_meta((size_t)QCAP * sizeof(uint64_t));
    if (!large_rec || !large_ht || !qring) fatal("mapping the allocator's tables");
}

static void resolve_real(void) {
    in_internal++;
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    real_usable = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    in_internal--;
    if (!real_malloc || !real_free || !real_calloc || !real_realloc || !real_memalign) {
        say("--sample: the next allocator's functions were not found; guarding every allocation");
        opt.sample = 1;
    }
}

static void ensure_init(void) {
    if (atomic_load_explicit(&init_state, memory_order_acquire) >= 2) return;
    int expect = 0;
    if (atomic_compare_exchange_strong(&init_state, &expect, 1)) {
        init_arena();
        atomic_store_explicit(&init_state, 2, memory_order_release);
        /* Phase 2 may allocate (dlsym calls calloc): the arena serves it, unsampled. */
        if (opt.sample > 1) resolve_real();
        atomic_store_explicit(&init_state, 3, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&init_state, memory_order_acquire) < 2) sched_yield();
}

/* ---- backtraces ----------------------------------------------------------------------- */

static uintptr_t self_lo, self_hi;   /* our executable segment: frames to leave out */

static int find_self(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size; (void)data;
    uintptr_t me = (uintptr_t)find_self;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (me >= lo && me < hi) { self_lo = lo; self_hi = hi; return 1; }
    }
    return 0;
}

static int capture(void **frames) {   /* frames has bt_depth entries; returns count */
    if (!opt.bt_depth || in_internal) return 0;
    void *tmp[MAX_BT + 8];
    in_internal++;
    int n = backtrace(tmp, opt.bt_depth + 8);
    in_internal--;
    int i = 0, k = 0;
    while (i < n && (uintptr_t)tmp[i] >= self_lo && (uintptr_t)tmp[i] < self_hi) i++;
    for (; i < n && k < opt.bt_depth; i++) frames[k++] = tmp[i];
    return k;
}

static void store_bt(void **dst, void **frames, int n) {
    for (int i = 0; i < opt.bt_depth; i++) dst[i] = i < n ? frames[i] : NULL;
}

static void **slot_bt(struct sclass *k, size_t i, int which) {
    return k->bt ? k->bt + (i * 2 + (size_t)which) * (size_t)opt.bt_depth : NULL;
}
static void **large_bt_of(uint32_t r, int which) {
    return large_bt ? large_bt + ((size_t)r * 2 + (size_t)which) * (size_t)opt.bt_depth : NULL;
}

static void print_bt(const char *title, void **frames) {
    if (!frames) return;
    int n = 0;
    while (n < opt.bt_depth && frames[n]) n++;
    if (!n) return;
    say(title);
    backtrace_symbols_fd(frames, n, 2);   /* writes to the fd, no malloc */
}

/* ---- large blocks (own mapping) ------------------------------------------------------- */

static inline uint32_t ht_hash(uintptr_t p) {
    return (uint32_t)(((uint64_t)p * 0x9E3779B97F4A7C15ull) >> (64 - HT_BITS));
}

static long ht_find(uintptr_t user) {   /* position in large_ht or -1; lock held */
    for (uint32_t h = ht_hash(user);; h = (h + 1) & (HT_SIZE - 1)) {
        uint32_t e = large_ht[h];
        if (!e) return -1;
        if (large_rec[e - 1].user == user) return h;
    }
}

static void ht_insert(uint32_t r) {
    uint32_t h = ht_hash(large_rec[r].user);
    while (large_ht[h]) h = (h + 1) & (HT_SIZE - 1);
    large_ht[h] = r + 1;
}

static void ht_delete(uint32_t pos) {   /* backward-shift deletion keeps probe chains whole */
    uint32_t i = pos;
    large_ht[i] = 0;
    for (uint32_t j = (i + 1) & (HT_SIZE - 1); large_ht[j]; j = (j + 1) & (HT_SIZE - 1)) {
        uint32_t k = ht_hash(large_rec[large_ht[j] - 1].user);
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        large_ht[i] = large_ht[j];
        large_ht[j] = 0;
        i = j;
    }
}

static void *alloc_large(size_t size, size_t align) {
    if (align < opt.align) align = opt.align;
    size_t extra = align > page ? align : 0;
    if (size > SIZE_MAX / 2 - extra - 4 * page) { errno = ENOMEM; return NULL; }
    size_t maplen = 2 * page + page_up(size) + extra;
    int prot = opt.mode == MODE_MARKERS ? PROT_READ | PROT_WRITE : PROT_NONE;
    void *m = mmap(NULL, maplen, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) { errno = ENOMEM; return NULL; }
    uintptr_t map = (uintptr_t)m, user;
    if (opt.underflow) user = (map + page + align - 1) & ~(uintptr_t)(align - 1);
    else user = (map + maplen - page - size) & ~(uintptr_t)(align - 1);
    uintptr_t lo = page_down(user), hi = page_up(user + size);
    int ok;
    if (opt.mode == MODE_MARKERS)
        ok = madv(map, lo - map, MADV_GUARD_INSTALL) == 0 &&
             madv(hi, map + maplen - hi, MADV_GUARD_INSTALL) == 0;
    else
        ok = open_pages(lo, hi - lo) == 0;
    if (!ok) { munmap(m, maplen); errno = ENOMEM; return NULL; }
    pthread_mutex_lock(&lock);
    uint32_t r;
    if (large_free != NONE32) { r = large_free; large_free = large_rec[r].next; }
    else if (large_hwm < LARGE_MAX) r = large_hwm++;
    else { pthread_mutex_unlock(&lock); munmap(m, maplen); errno = ENOMEM; return NULL; }
    large_rec[r] = (struct large){map, maplen, user, size, ST_LIVE, NONE32};
    ht_insert(r);
    uintptr_t v = atomic_load(&large_lo);
    if (map < v) atomic_store(&large_lo, map);
    v = atomic_load(&large_hi);
    if (map + maplen > v) atomic_store(&large_hi, map + maplen);
    pthread_mutex_unlock(&lock);
    if (large_bt) {
        void *f[MAX_BT];
        int n = capture(f);
        store_bt(large_bt_of(r, 0), f, n);
        store_bt(large_bt_of(r, 1), f, 0);
    }
    return (void *)user;
}

/* ---- slots ---------------------------------------------------------------------------- */

static int class_for(size_t need_pages) {
    for (int c = 0; c < NCLASSES; c++)
        if (class_pages[c] >= need_pages) return c;
    return -1;
}

static inline uintptr_t stride_start(const struct sclass *k, size_t i) { return k->base + i * k->stride; }
static inline uintptr_t data_start(const struct sclass *k, size_t i) {
    return stride_start(k, i) + (opt.underflow ? page : 0);
}
static inline uintptr_t data_end(const struct sclass *k, size_t i) {
    return data_start(k, i) + (size_t)k->npages * page;
}

/* The pages a block needs open: from the page holding its first byte to the page
 * holding its last (a zero-byte block at the guard needs none). */
static inline void block_pages(uintptr_t user, size_t size, uintptr_t *lo, uintptr_t *hi) {
    *lo = page_down(user);
    *hi = page_up(user + size);
    if (*hi < *lo) *hi = *lo;
}

/* Make more slots of class k usable (lock held). Markers: one mprotect that merges
 * with the region's read-write part, and one GUARD_INSTALL over the new chunk. */
static int carve(struct sclass *k) {
    size_t n = ((size_t)2 << 20) / k->stride;
    if (n < 16) n = 16;
    if (n > k->nslots - k->carved) n = k->nslots - k->carved;
    if (!n) return -1;
    uintptr_t a = stride_start(k, k->carved);
    size_t len = n * k->stride;
    if (mprotect((void *)a, len, PROT_READ | PROT_WRITE)) return -1;
    if (madv(a, len, MADV_GUARD_INSTALL)) {
        mprotect((void *)a, len, PROT_NONE);
        return -1;
    }
    k->carved += n;
    return 0;
}

static void *alloc_guarded(size_t size, size_t align) {
    if (align < opt.align) align = opt.align;
    if (align > page || size > (size_t)class_pages[NCLASSES - 1] * page) return alloc_large(size, align);
    /* Overflow mode: the block ends at the slot's end, rounded down to the alignment,
     * so it needs round_up(size, align) bytes of the slot. */
    size_t need = opt.underflow ? size : (size + align - 1) & ~(align - 1);
    size_t need_pages = need ? (need + page - 1) / page : 1;
    int c = class_for(need_pages);
    if (c < 0) return alloc_large(size, align);
    struct sclass *k = &classes[c];
    void *f[MAX_BT];
    int nf = capture(f);
    pthread_mutex_lock(&lock);
    size_t i;
    if (k->free_head != NONE32) {
        i = k->free_head;
        k->free_head = k->slots[i].next;
    } else if (k->used < k->carved || carve(k) == 0) {
        i = k->used++;
    } else {
        pthread_mutex_unlock(&lock);
        return alloc_large(size, align);   /* region full: a mapping of its own */
    }
    uintptr_t user = opt.underflow ? data_start(k, i) : (data_end(k, i) - size) & ~(uintptr_t)(align - 1);
    struct slot *s = &k->slots[i];
    s->size = size;
    s->uoff = (uint32_t)(user - stride_start(k, i));
    s->state = ST_LIVE;
    s->next = NONE32;
    pthread_mutex_unlock(&lock);
    uintptr_t lo, hi;
    block_pages(user, size, &lo, &hi);
    if (open_pages(lo, hi - lo)) {
        pthread_mutex_lock(&lock);   /* give the slot back, still guarded */
        s->state = ST_FREE;
        s->next = k->free_head;
        k->free_head = (uint32_t)i;
        pthread_mutex_unlock(&lock);
        errno = ENOMEM;
        return NULL;
    }
    if (k->bt) {
        store_bt(slot_bt(k, i, 0), f, nf);
        store_bt(slot_bt(k, i, 1), f, 0);
    }
    return (void *)user;
}

/* ---- lookup --------------------------------------------------------------------------- */

struct block {              /* what we know about an address */
    int kind;               /* 0 none, 1 slot, 2 large */
    struct sclass *k;
    size_t i;               /* slot index or large record */
    uintptr_t user;
    size_t size;
    uint32_t state;
};

static inline int in_arena(uintptr_t a) { return a >= arena_base && a < arena_end; }

/* The slot holding address a, or kind 0 (no lock: reads only). */
static struct block find_slot(uintptr_t a) {
    struct block b = {0};
    if (!in_arena(a)) return b;
    struct sclass *k = &classes[(a - arena_base) / class_span];
    size_t i = (a - k->base) / k->stride;
    if (i >= k->used) return b;
    struct slot *s = &k->slots[i];
    b.kind = 1; b.k = k; b.i = i;
    b.user = stride_start(k, i) + s->uoff;
    b.size = s->size;
    b.state = s->state;
    return b;
}

static struct block find_large_containing(uintptr_t a) {   /* linear: reports only */
    struct block b = {0};
    if (!large_rec) return b;
    for (uint32_t r = 0; r < large_hwm; r++) {
        struct large *l = &large_rec[r];
        if (l->state != ST_LIVE && l->state != ST_QUARANTINED) continue;
        if (a >= l->map && a < l->map + l->maplen) {
            b.kind = 2; b.i = r; b.user = l->user; b.size = l->size; b.state = l->state;
            return b;
        }
    }
    return b;
}

/* ---- quarantine ----------------------------------------------------------------------- */

static size_t entry_bytes(uint64_t e) {
    if (e & Q_LARGE) return large_rec[(uint32_t)e].maplen;
    return (size_t)classes[e >> 32].npages * page;
}

/* Lock held. Returns the large mapping to unmap (after unlocking) or 0. */
static void evict_one(uintptr_t *unmap_addr, size_t *unmap_len) {
    uint64_t e = qring[qhead];
    qhead = (qhead + 1) % QCAP;
    qcount--;
    qbytes -= entry_bytes(e);
    if (e & Q_LARGE) {
        uint32_t r = (uint32_t)e;
        struct large *l = &large_rec[r];
        long pos = ht_find(l->user);
        if (pos >= 0) ht_delete((uint32_t)pos);
        *unmap_addr = l->map;
        *unmap_len = l->maplen;
        l->state = ST_NEVER;
        l->next = large_free;
        large_free = r;
    } else {
        struct sclass *k = &classes[e >> 32];
        uint32_t i = (uint32_t)e;
        k->slots[i].state = ST_FREE;     /* still guarded; opened again when reused */
        k->slots[i].next = k->free_head;
        k->free_head = i;
    }
}

static void quarantine_push(uint64_t e) {
    uintptr_t ua[8];
    size_t ul[8];
    int nu = 0;
    pthread_mutex_lock(&lock);
    qring[(qhead + qcount) % QCAP] = e;
    qcount++;
    qbytes += entry_bytes(e);
    while (qcount && (qbytes > opt.quarantine || qcount >= QCAP) && nu < 8) {
        ua[nu] = 0;
        evict_one(&ua[nu], &ul[nu]);
        if (ua[nu]) nu++;
    }
    pthread_mutex_unlock(&lock);
    for (int j = 0; j < nu; j++) munmap((void *)ua[j], ul[j]);
}

/* ---- errors --------------------------------------------------------------------------- */

static const char *state_name(uint32_t st) {
    switch (st) {
    case ST_LIVE: return "live";
    case ST_QUARANTINED: return "freed, in quarantine";
    case ST_FREE: return "freed, out of quarantine";
    default: return "never allocated";
    }
}

static void describe_block(struct out *o, const struct block *b) {
    out_s(o, "the "); out_u(o, b->size); out_s(o, "-byte block at "); out_x(o, b->user);
    out_s(o, " ("); out_s(o, state_name(b->state)); out_s(o, ")");
}

static void **block_bt(const struct block *b, int which) {
    if (b->kind == 1) return slot_bt(b->k, b->i, which);
    if (b->kind == 2) return large_bt_of((uint32_t)b->i, which);
    return NULL;
}

static void free_error(const char *what, uintptr_t p, const struct block *b) {
    struct out o = {.n = 0};
    out_s(&o, what); out_s(&o, " of "); out_x(&o, p);
    if (b && b->kind) {
        out_s(&o, ": ");
        if (p != b->user) {
            out_s(&o, "offset ");
            if (p < b->user) { out_s(&o, "-"); out_u(&o, b->user - p); }
            else out_u(&o, p - b->user);
            out_s(&o, " in ");
        }
        describe_block(&o, b);
    } else {
        out_s(&o, ": not a block of this allocator");
    }
    out_s(&o, opt.abort_on_error ? "; aborting" : "; ignored, the program goes on");
    out_line(&o);
    if (opt.bt_depth) {
        void *f[MAX_BT];
        int n = capture(f);
        if (n) { say("called at:"); backtrace_symbols_fd(f, n, 2); }
        if (b && b->kind) {
            print_bt("block allocated at:", block_bt(b, 0));
            if (b->state != ST_LIVE) print_bt("block freed at:", block_bt(b, 1));
        }
    }
    if (opt.abort_on_error) {
        signal(SIGABRT, SIG_DFL);
        abort();
    }
}

/* ---- free ----------------------------------------------------------------------------- */

/* Returns 1 when p was ours (freed or reported), 0 when it belongs to someone else. */
static int free_guarded(void *ptr) {
    uintptr_t p = (uintptr_t)ptr;
    void *f[MAX_BT];
    if (in_arena(p)) {
        int nf = capture(f);
        pthread_mutex_lock(&lock);
        struct block b = find_slot(p);
        if (!b.kind || b.state == ST_NEVER) {
            pthread_mutex_unlock(&lock);
            free_error("invalid free", p, b.kind ? &b : NULL);
            return 1;
        }
        if (p != b.user || b.state != ST_LIVE) {
            pthread_mutex_unlock(&lock);
            free_error(p == b.user ? "double free" : "invalid free", p, &b);
            return 1;
        }
        b.k->slots[b.i].state = ST_QUARANTINED;
        pthread_mutex_unlock(&lock);
        if (b.k->bt) store_bt(slot_bt(b.k, b.i, 1), f, nf);
        uintptr_t lo, hi;
        block_pages(b.user, b.size, &lo, &hi);
        close_pages(lo, hi - lo);
        quarantine_push(((uint64_t)(b.k - classes) << 32) | b.i);
        return 1;
    }
    if (p < atomic_load(&large_lo) || p >= atomic_load(&large_hi)) return 0;
    int nf = capture(f);
    pthread_mutex_lock(&lock);
    long pos = ht_find(p);
    if (pos < 0) {
        struct block b = find_large_containing(p);
        pthread_mutex_unlock(&lock);
        if (!b.kind) return 0;
        free_error(p == b.user ? "double free" : "invalid free", p, &b);
        return 1;
    }
    uint32_t r = large_ht[pos] - 1;
    struct large *l = &large_rec[r];
    if (l->state != ST_LIVE) {
        struct block b = {2, NULL, r, l->user, l->size, l->state};
        pthread_mutex_unlock(&lock);
        free_error("double free", p, &b);
        return 1;
    }
    l->state = ST_QUARANTINED;
    uintptr_t lo, hi;
    block_pages(l->user, l->size, &lo, &hi);
    pthread_mutex_unlock(&lock);
    if (large_bt) store_bt(large_bt_of(r, 1), f, nf);
    close_pages(lo, hi - lo);
    quarantine_push(Q_LARGE | r);
    return 1;
}

/* Size of the live block starting at p, or -1 if p is not one of ours. Reports
 * (like free) a pointer into our memory that is not a live block's start. */
static long long live_size(void *ptr, const char *what) {
    uintptr_t p = (uintptr_t)ptr;
    if (in_arena(p)) {
        struct block b = find_slot(p);
        if (!b.kind || b.state != ST_LIVE || b.user != p) {
            free_error(what, p, b.kind ? &b : NULL);
            return -2;
        }
        return (long long)b.size;
    }
    if (p < atomic_load(&large_lo) || p >= atomic_load(&large_hi)) return -1;
    pthread_mutex_lock(&lock);
    long pos = ht_find(p);
    long long size = -1;
    struct block b = {0};
    if (pos >= 0) {
        struct large *l = &large_rec[large_ht[pos] - 1];
        if (l->state == ST_LIVE) size = (long long)l->size;
        else { b = (struct block){2, NULL, large_ht[pos] - 1, l->user, l->size, l->state}; size = -2; }
    } else {
        b = find_large_containing(p);
        if (b.kind) size = -2;
    }
    pthread_mutex_unlock(&lock);
    if (size == -2) free_error(what, p, &b);
    return size;
}

/* ---- the SIGSEGV report --------------------------------------------------------------- */

static void on_segv(int sig, siginfo_t *si, void *ucv) {
    int saved = errno;
    uintptr_t a = (uintptr_t)si->si_addr;
    struct block b = find_slot(a);
    if (!b.kind || b.state == ST_NEVER) {
        struct block lb = find_large_containing(a);
        if (lb.kind) b = lb;
    }
    const char *access = "access";
#if defined(__x86_64__)
    if (ucv) access = (((ucontext_t *)ucv)->uc_mcontext.gregs[REG_ERR] & 2) ? "write" : "read";
#else
    (void)ucv;
#endif
    struct out o = {.n = 0};
    out_s(&o, sig == SIGBUS ? "SIGBUS: " : "SIGSEGV: ");
    if (b.kind && b.state != ST_NEVER) {
        uintptr_t end = b.user + b.size;
        if (b.state != ST_LIVE) out_s(&o, "use after free: ");
        else if (a >= end) out_s(&o, "heap overflow: ");
        else if (a < b.user) out_s(&o, "heap underflow: ");
        out_s(&o, access); out_s(&o, " at "); out_x(&o, a); out_s(&o, ", ");
        /* Distances count the byte hit: the first byte past the end is 1 byte past it. */
        if (a >= end) { out_u(&o, a - end + 1); out_s(&o, a == end ? " byte past the end of " : " bytes past the end of "); }
        else if (a < b.user) { out_u(&o, b.user - a); out_s(&o, a + 1 == b.user ? " byte before the start of " : " bytes before the start of "); }
        else out_s(&o, "inside ");
        out_s(&o, "the "); out_u(&o, b.size); out_s(&o, "-byte block at "); out_x(&o, b.user);
        out_s(&o, " (offset ");
        if (a < b.user) { out_s(&o, "-"); out_u(&o, b.user - a); } else out_u(&o, a - b.user);
        out_s(&o, "; "); out_s(&o, state_name(b.state)); out_s(&o, ")");
        out_line(&o);
        print_bt("block allocated at:", block_bt(&b, 0));
        if (b.state != ST_LIVE) print_bt("block freed at:", block_bt(&b, 1));
    } else if (in_arena(a)) {
        out_s(&o, access); out_s(&o, " at "); out_x(&o, a);
        out_s(&o, ": inside the efence arena but in no block (a wild pointer)");
        out_line(&o);
    } else {
        out_s(&o, access); out_s(&o, " at "); out_x(&o, a);
        out_s(&o, ": not in an efence block");
        if (a < page && opt.align < 16)
            out_s(&o, " (address 0 is also what a misaligned SSE access reports: try --align 16)");
        out_line(&o);
    }
    /* Die of the same signal: with the default action restored, returning re-runs the
     * faulting instruction; a signal sent by kill() is raised again instead. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (si->si_code <= 0) raise(sig);
    errno = saved;
}

/* ---- fork ----------------------------------------------------------------------------- */

static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_parent(void) { pthread_mutex_unlock(&lock); }
static void fork_child(void) { pthread_mutex_init(&lock, NULL); }

__attribute__((constructor)) static void efence_ctor(void) {
    ensure_init();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (opt.bt_depth) {   /* backtrace() loads libgcc_s (and allocates) on first use */
        void *f[2];
        in_internal++;
        dl_iterate_phdr(find_self, NULL);
        backtrace(f, 2);
        in_internal--;
    }
}

/* ---- the interface -------------------------------------------------------------------- */

static inline int sampled_out(void) {   /* 1: this allocation goes to the next allocator */
    if (opt.sample <= 1 || in_internal || atomic_load_explicit(&init_state, memory_order_acquire) < 3)
        return 0;
    return atomic_fetch_add_explicit(&sample_ctr, 1, memory_order_relaxed) % opt.sample != 0;
}

API void *malloc(size_t size) {
    ensure_init();
    if (sampled_out()) return real_malloc(size);
    return alloc_guarded(size, 1);
}

API void free(void *p) {
    if (!p) return;
    ensure_init();
    if (free_guarded(p)) return;
    if (real_free && opt.sample > 1) { real_free(p); return; }
    free_error("invalid free", (uintptr_t)p, NULL);
}

API void *calloc(size_t n, size_t size) {
    ensure_init();
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) { errno = ENOMEM; return NULL; }
    if (sampled_out()) return real_calloc(n, size);
    /* Fresh pages, and pages whose guards were removed, read back as zeros. */
    return alloc_guarded(total, 1);
}

API void *realloc(void *p, size_t size) {
    ensure_init();
    if (!p) return malloc(size);
    long long old = live_size(p, "invalid realloc");
    if (old == -2) return NULL;   /* reported (continue mode): leave the pointer alone */
    if (old == -1) {
        if (real_realloc && opt.sample > 1) return real_realloc(p, size);
        free_error("invalid realloc", (uintptr_t)p, NULL);
        return NULL;
    }
    if (size == 0) { free(p); return NULL; }   /* glibc's behaviour */
    /* Always move: the new block ends at its own guard, and stale pointers to the old
     * one fault while it is in quarantine. */
    void *q = malloc(size);
    if (!q) return NULL;
    memcpy(q, p, (size_t)old < size ? (size_t)old : size);
    free(p);
    return q;
}

static void *aligned(size_t align, size_t size) {
    ensure_init();
    if (sampled_out()) return real_memalign(align, size);
    return alloc_guarded(size, align);
}

API void *memalign(size_t align, size_t size) {
    if (align & (align - 1)) {   /* glibc rounds a non-power of two up */
        size_t a = 1;
        while (a < align && a) a <<= 1;
        if (!a) { errno = EINVAL; return NULL; }
        align = a;
    }
    if (!align) align = 1;
    return aligned(align, size);
}

API void *aligned_alloc(size_t align, size_t size) { return memalign(align, size); }

API int posix_memalign(void **out, size_t align, size_t size) {
    if (!align || (align & (align - 1)) || align % sizeof(void *)) return EINVAL;
    int saved = errno;
    void *p = aligned(align, size);
    if (!p) { errno = saved; return ENOMEM; }
    *out = p;
    return 0;
}

API void *valloc(size_t size) {
    ensure_init();
    return aligned(page, size);
}

API void *pvalloc(size_t size) {
    ensure_init();
    if (size > SIZE_MAX - page) { errno = ENOMEM; return NULL; }
    return aligned(page, size ? page_up(size) : page);
}

API size_t malloc_usable_size(void *p) {
    if (!p) return 0;
    ensure_init();
    long long n = live_size(p, "malloc_usable_size");
    if (n >= 0) return (size_t)n;
    if (n == -1 && real_usable && opt.sample > 1) return real_usable(p);
    if (n == -1) free_error("malloc_usable_size", (uintptr_t)p, NULL);
    return 0;
}

/* For tests and tools: 1 when p is the start of a live guarded block. */
API int sparsemm_efence_owns(const void *p) {
    ensure_init();
    uintptr_t a = (uintptr_t)p;
    if (in_arena(a)) {
        struct block b = find_slot(a);
        return b.kind && b.state == ST_LIVE && b.user == a;
    }
    if (a < atomic_load(&large_lo) || a >= atomic_load(&large_hi)) return 0;
    pthread_mutex_lock(&lock);
    long pos = ht_find(a);
    int live = pos >= 0 && large_rec[large_ht[pos] - 1].state == ST_LIVE;
    pthread_mutex_unlock(&lock);
    return live;
}

/* For tests and tools: "markers" or "prot_none". */
API const char *sparsemm_efence_mode(void) {
    ensure_init();
    return opt.mode == MODE_MARKERS ? "markers" : "prot_none";
}
