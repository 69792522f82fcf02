"""A program that already uses guard markers: sparsemm.Mapping and sparsemm.GuardedHeap.

Prints the VMA count it sees at its peak (without [vsyscall], which is not a VMA).
"""
import sparsemm

with sparsemm.Mapping(256 * 4096) as m:
    for i in range(1, 256, 2):
        m.guard(i * 4096, 4096)
    heap = sparsemm.GuardedHeap()
    bufs = [heap.alloc(100) for _ in range(200)]
    print(sum(1 for line in open("/proc/self/maps") if "[vsyscall]" not in line))
