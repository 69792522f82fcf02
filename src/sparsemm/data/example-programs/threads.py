"""CPython with many threads: 64 workers allocating and freeing big and small objects.

glibc gives each busy thread a malloc arena (a 64 MiB PROT_NONE reservation grown by
mprotect), big blocks are their own mmaps, and every thread stack has a PROT_NONE guard.
"""
import concurrent.futures
import random


def work(seed: int) -> int:
    rng = random.Random(seed)
    kept = []
    for _ in range(200):
        kept.append(bytearray(rng.choice((64, 4096, 200_000, 1_500_000))))
        kept.append({j: str(j) * 10 for j in range(rng.randrange(50, 500))})
        if len(kept) > 20:
            kept.pop(rng.randrange(len(kept)))
    return sum(len(k) for k in kept)


with concurrent.futures.ThreadPoolExecutor(max_workers=64) as ex:
    print(sum(ex.map(work, range(256))))
