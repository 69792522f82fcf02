"""One traced address space under one design: the program's calls applied to a model, translated per design.

Owns ``DesignMm``. ``as-run`` applies every call as the program made it (the kernel is the
``pte`` design: markers stay markers) and compares each result with the traced one. ``vma``
does the same on a model whose guard advice becomes ``mprotect(PROT_NONE)``. ``pte`` and
``tree`` also turn the program's own PROT_NONE guard idioms into markers or guard entries:
after each call, every private anonymous PROT_NONE VMA near the changed range that the
guard policy (``analyze.guards.GuardPolicy``) calls a guard (with ``payload``, decommitted
payload too) is made accessible like the neighbour it would merge with and guard-installed; ``guards`` remembers those ranges so a
later ``mprotect`` that opens one removes the guard instead, and ``mremap``/``mprotect(NONE)``
over one first put the PROT_NONE VMA back. Calls issued are counted per kind, as a program
written for the design would make them.
"""

from __future__ import annotations

import errno
from array import array
from collections import Counter

from sparsemm import abi
from sparsemm._ranges import RangeMap
from sparsemm.abi import Madv, MapFlag, MremapFlag, VmFlag
from sparsemm.analyze.guards import GuardPolicy, GuardSide, Role, find_guards
from sparsemm.analyze.maps import MapEntry, MapKind
from sparsemm.model import AddressSpace
from sparsemm.model.designs import GuardShape, design_class, kernel_design, names
from sparsemm.model.brk import BrkState, sys_brk
from sparsemm.model.mlockall import mlockall_def_flags, sys_mlockall, sys_munlockall
from sparsemm.model.vma import VM_SPECIAL
from sparsemm.trace.seed import file_for

__all__ = ["AS_RUN", "trace_designs", "model_design", "DesignMm", "CallResult", "WRITTEN"]

#: The replay of the calls exactly as the program made them, on the kernel's own design.
AS_RUN = "as-run"


def trace_designs() -> tuple[str, ...]:
    """What a trace is replayed under, in report order: as run, then every registered guard
    design (``model.designs.names()``). O(d log d)."""
    return (AS_RUN, *names())


def model_design(design: str) -> str:
    """The model guard design a replay runs on: the kernel's own for as-run. ValueError for
    an unknown design."""
    return kernel_design() if design == AS_RUN else design_class(design).name


def _guards_are_vmas(design: str) -> bool:
    """Is a guard of this model design a VMA of its own (so the program's PROT_NONE guards
    already are the design's, and its markers become mprotect calls)?"""
    return design_class(design).guard_shape is GuardShape.VMA
#: When the replay assumes private writable memory was written (it then has an anon_vma, as
#: after its first write fault, which the trace does not show): "fork" (default) at each fork,
#: for the whole address space, and when an mprotect takes write permission away (a decommit);
#: "eager" also whenever a call makes memory writable; "lazy" never.
WRITTEN = ("fork", "eager", "lazy")

PAGE = abi.PAGE_SIZE
_SHIFT = abi.PAGE_SHIFT
_RWX = abi.PROT_READ | abi.PROT_WRITE | abi.PROT_EXEC
_VM_RWX = int(VmFlag.READ | VmFlag.WRITE | VmFlag.EXEC)
_VM_MAYSHARE, _VM_WRITE = int(VmFlag.MAYSHARE), int(VmFlag.WRITE)
_NOT_CANDIDATE = int(VM_SPECIAL | VmFlag.LOCKED | VmFlag.LOCKONFAULT | VmFlag.HUGETLB | VmFlag.GROWSDOWN
                     | VmFlag.MAYSHARE)
_MAP_FIXED, _MAP_FIXED_NOREPLACE, _MAP_ANON = int(MapFlag.FIXED), int(MapFlag.FIXED_NOREPLACE), int(MapFlag.ANONYMOUS)
_GUARD_INSTALL, _GUARD_REMOVE = int(Madv.GUARD_INSTALL), int(Madv.GUARD_REMOVE)
_MREMAP_FIXED, _MREMAP_MAYMOVE = int(MremapFlag.FIXED), int(MremapFlag.MAYMOVE)

#: Result of one call on the model: None for success, else the errno name.
CallResult = str | None

_MNEMONICS: dict[int, frozenset[str]] = {}


def _mnemonics(flags: int) -> frozenset[str]:
    m = _MNEMONICS.get(flags)
    if m is None:
        m = _MNEMONICS[flags] = frozenset(abi.vmflags_to_mnemonics(flags))
    return m


def _entry(vma) -> MapEntry:
    """A maps entry for a model VMA, for the guard policy (which reads maps entries only)."""
    flags = int(vma.vm_flags)
    shared = bool(flags & _VM_MAYSHARE)
    if vma.vm_file is None:
        kind, path = (MapKind.SHARED_ANON if shared else MapKind.ANON), ""
    else:
        kind, path = MapKind.FILE, vma.vm_file.name
    return MapEntry(vma.vm_start, vma.vm_end, abi.prot_to_perms(flags & _VM_RWX, shared), flags & _VM_RWX, shared,
                    vma.maps_pgoff() << _SHIFT, 0, 0, 0, path, False, kind,
                    vmflags=_mnemonics(flags), vmflags_bits=flags)


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno))


class DesignMm:
    """One address space of the traced run under one design.

    ``mm`` the model; ``guards`` (``pte``/``tree``) page ranges -> the protection they were
    made accessible with when the design turned a PROT_NONE guard VMA into a guard;
    ``brk_state`` the program break; ``def_flags`` the lock bits of ``mlockall(MCL_FUTURE)``;
    ``files`` path -> MemFile; ``calls`` the calls issued, by kind; ``history`` (as-run
    only) the ranges each call changed, to say where a divergence began.
    """

    __slots__ = ("design", "mm", "guards", "brk_state", "def_flags", "files", "calls", "issued", "history",
                 "policy", "written", "converts", "guard_calls", "forks", "fork_vmas", "_guard_cache", "roles")

    def __init__(self, design: str, mm: AddressSpace, files: dict, brk: BrkState, policy: GuardPolicy,
                 written: str = "fork", payload: bool = False):
        self.design = design
        self.mm = mm
        # a design whose guards are no VMAs turns the program's PROT_NONE guards into its own
        self.converts = design != AS_RUN and not _guards_are_vmas(design)
        self.guard_calls = "mprotect" if _guards_are_vmas(model_design(design)) else None
        self.guards = RangeMap() if self.converts else None
        self.brk_state = brk
        self.def_flags = 0
        self.files = files
        self.calls: Counter = Counter()
        self.issued = 0  # sum of calls
        self.history = _History() if design == AS_RUN else None
        self._guard_cache: dict = {}
        self.policy = policy
        if written not in WRITTEN:
            raise ValueError(f"unknown anon_vma assumption {written!r} (choose from {', '.join(WRITTEN)})")
        self.written = written
        #: the policy roles this design turns into its guards: guard pages, and with ``payload``
        #: the decommitted payload too (large PROT_NONE ranges inside used memory)
        self.roles = (Role.GUARD, Role.DECOMMITTED) if payload else (Role.GUARD,)
        self.forks = 0  # fork copies of this address space (kernel time: dup_mmap per VMA)
        self.fork_vmas = 0

    def fork(self) -> "DesignMm":
        """The child's address space after fork (``dup_mmap``): same design state."""
        if self.written != "lazy":
            self._assume_written(0, 1 << 64, always=True)
        child = DesignMm(self.design, self.mm.fork(), dict(self.files), self.brk_state.copy(), self.policy,
                         self.written, Role.DECOMMITTED in self.roles)
        if self.guards is not None:
            child.guards = self.guards.copy()
        if self.history is not None:
            child.history = _History(self.history)
        return child

    @property
    def vmas(self) -> int:
        return self.mm.map_count

    def _count(self, kind: str, n: int = 1) -> None:
        self.calls[kind] += n
        self.issued += n

    def touched(self, lineno: int, start: int, end: int) -> None:
        """Remember that the call at ``lineno`` changed [start, end) (as-run: for divergence reports)."""
        if self.history is not None and end > start:
            self.history.add(lineno, start, end)

    def last_call_on(self, start: int, end: int) -> int | None:
        """The trace line of the last recorded call that changed part of [start, end), or None."""
        return self.history.last_on(start, end) if self.history is not None else None

    # --- what the trace cannot show ---------------------------------------------------------

    def _assume_written(self, start: int, end: int, always: bool = False) -> None:
        """Give every private writable VMA in [start, end) an anon_vma, as its first write fault
        would (``anon_vma_prepare``): in ``eager`` mode after each call that makes memory
        writable; with ``always`` (fork, an mprotect that takes write away) in every mode but
        ``lazy``. The trace shows no faults; anon_vmas decide which neighbours may merge later."""
        if not (always or self.written == "eager") or end <= start:
            return
        mm = self.mm
        for vma in mm.tree.overlapping(start, end):
            if (vma.anon_vma is None and not vma.is_guard_entry
                    and int(vma.vm_flags) & (_VM_WRITE | _VM_MAYSHARE | int(VM_SPECIAL)) == _VM_WRITE):
                mm.anon_vma_prepare(vma)

    # --- the guard policy on the model ------------------------------------------------------

    def _candidate(self, vma) -> bool:
        return (vma is not None and not vma.is_guard_entry and vma.vm_file is None
                and not int(vma.vm_flags) & (_VM_RWX | _NOT_CANDIDATE))

    def _is_guard(self, prev, vma, nxt):
        """(role, side) of the PROT_NONE ``vma`` between ``prev`` and ``nxt`` (model VMAs or
        None) under the policy: the same rule ``analyze`` applies to a maps file. A candidate
        no larger than ``max_guard_bytes`` is never priced, so its verdict depends only on
        which neighbours touch it and their flags: those verdicts are cached."""
        key = None
        if vma.vm_end - vma.vm_start <= self.policy.max_guard_bytes:
            key = (int(vma.vm_flags),
                   int(prev.vm_flags) if prev is not None and not prev.is_guard_entry
                   and prev.vm_end == vma.vm_start and prev.vm_file is None else None,
                   int(nxt.vm_flags) if nxt is not None and not nxt.is_guard_entry
                   and nxt.vm_start == vma.vm_end and nxt.vm_file is None else None)
            if key[1] is None and key[2] is None:
                key = None  # a file neighbour or none: not cached (rare)
            else:
                hit = self._guard_cache.get(key)
                if hit is not None:
                    return hit
        entries = []
        if prev is not None and not prev.is_guard_entry:
            entries.append(_entry(prev))
        entries.append(_entry(vma))
        at = len(entries) - 1
        if nxt is not None and not nxt.is_guard_entry:
            entries.append(_entry(nxt))
        role = find_guards(entries, self.policy).roles[at]
        verdict = (role.role, role.side)
        if key is not None:
            self._guard_cache[key] = verdict
        return verdict

    def reconcile(self, lo: int, hi: int) -> None:
        """Turn every PROT_NONE guard VMA in [lo, hi) into this design's guard (pte/tree)."""
        if not self.converts:
            return
        tree = self.mm.tree
        for vma in tree.overlapping(max(lo, 0), hi):
            if not self._candidate(vma) or tree.find(vma.vm_start) is not vma:
                continue
            prev, nxt = tree.prev(vma), tree.next(vma)
            role, side = self._is_guard(prev, vma, nxt)
            if role in self.roles:
                self._convert(vma, prev if side is not GuardSide.ABOVE else nxt)

    def _convert(self, vma, neighbour) -> bool:
        mm = self.mm
        start, end = vma.vm_start, vma.vm_end
        prot = int(neighbour.vm_flags) & _RWX
        try:
            mm.mprotect(start, end - start, prot)
            mm.madvise(start, end - start, _GUARD_INSTALL)
        except OSError:
            try:
                mm.mprotect(start, end - start, abi.PROT_NONE)
            except OSError:
                pass
            return False
        self.guards.assign(start >> _SHIFT, end >> _SHIFT, prot)
        self._count("guard_install")
        return True

    def _unconvert(self, start: int, end: int) -> None:
        """Put back the PROT_NONE VMAs this design made guards of in [start, end)."""
        if self.guards is None or not self.guards.overlaps(start >> _SHIFT, (end + PAGE - 1) >> _SHIFT):
            return
        for ps, pe, _ in self.guards.items(start >> _SHIFT, (end + PAGE - 1) >> _SHIFT):
            a, b = ps << _SHIFT, pe << _SHIFT
            try:
                self.mm.madvise(a, b - a, _GUARD_REMOVE)
                self.mm.mprotect(a, b - a, abi.PROT_NONE)
            except OSError:
                pass
            self.guards.clear(ps, pe)

    def _forget(self, start: int, end: int) -> None:
        g = self.guards
        if g is not None and end > start:
            first, last = start >> _SHIFT, (end + PAGE - 1) >> _SHIFT
            if g.overlaps(first, last):
                g.clear(first, last)

    # --- the system calls ------------------------------------------------------------------

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, path: str | None, offset: int,
             traced: int | None) -> CallResult:
        """Replay mmap. ``traced`` is the address it returned (None if it failed). A non-fixed
        mapping is placed where the kernel placed it (MAP_FIXED_NOREPLACE there): placement
        is the kernel's choice, and any overlap the model sees is a divergence."""
        mm = self.mm
        self._count("mmap")
        file = None
        if not flags & _MAP_ANON:
            file = file_for(self.files, path if path is not None else f"fd:{fd}")
        if traced is None:
            try:
                got = mm.mmap(addr, length, prot, flags, file, offset)
            except OSError as exc:
                return _errname(exc)
            if not flags & _MAP_FIXED:
                mm.munmap(got, length)  # the kernel refused it: leave no trace of the model's
            return None
        at = traced
        self._forget(at, at + length)
        want = flags if flags & _MAP_FIXED else (flags | _MAP_FIXED_NOREPLACE)
        result = None
        try:
            mm.mmap(at, length, prot, want, file, offset)
        except OSError as exc:
            result = _errname(exc)
            if exc.errno == errno.EEXIST:  # the model has something where the kernel had nothing
                try:
                    mm.mmap(at, length, prot, (flags | _MAP_FIXED) & ~_MAP_FIXED_NOREPLACE, file, offset)
                except OSError as exc2:
                    result = _errname(exc2)
        end = at + abi.page_align(length)
        if self.def_flags:
            self._lock_new(at, end)
        if not (flags & _MAP_FIXED and flags & _MAP_ANON):
            # a loader's MAP_FIXED anonymous mapping is a library's .bss: untouched until used
            self._assume_written(at, end)
        self.reconcile(at - PAGE, end + PAGE)
        return result

    def _lock_new(self, start: int, end: int) -> None:
        try:
            self.mm.mlock(start, end - start, abi.MLOCK_ONFAULT if self.def_flags & int(VmFlag.LOCKONFAULT) else 0)
        except OSError:
            pass

    def munmap(self, addr: int, length: int) -> CallResult:
        self._count("munmap")
        try:
            self.mm.munmap(addr, length)
        except OSError as exc:
            return _errname(exc)
        finally:
            self._forget(addr, addr + abi.page_align(length))
        return None

    def mprotect(self, addr: int, length: int, prot: int) -> CallResult:
        mm = self.mm
        if not prot & abi.PROT_WRITE and self.written != "lazy":
            # memory a program stops writing was written while it could be (a decommit, RELRO)
            self._assume_written(addr, addr + abi.page_align(length), always=True)
        if not self.converts:
            self._count("mprotect")
            try:
                mm.mprotect(addr, length, prot)
            except OSError as exc:
                return _errname(exc)
            finally:
                self._assume_written(addr, addr + abi.page_align(length))
            return None
        end = addr + abi.page_align(length)
        if addr & ~abi.PAGE_MASK or end <= addr:
            self._count("mprotect")
            try:
                mm.mprotect(addr, length, prot)
            except OSError as exc:
                return _errname(exc)
            return None
        if not prot & _RWX:
            if self._guard_directly(addr, end):
                return None
            self._unconvert(addr, end)
            self._count("mprotect")
            try:
                mm.mprotect(addr, length, prot)
            except OSError as exc:
                return _errname(exc)
            finally:
                self.reconcile(addr - PAGE, end + PAGE)
            return None
        # opening the range: remove the guards this design put in it, then set the protection
        pieces = self.guards.items(addr >> _SHIFT, end >> _SHIFT) if self.guards else []
        for ps, pe, _ in pieces:
            try:
                mm.madvise(ps << _SHIFT, (pe - ps) << _SHIFT, _GUARD_REMOVE)
            except OSError:
                pass
            self._count("guard_remove")
        self._forget(addr, end)
        result = None
        if not pieces or self._prot_differs(addr, end, prot & _RWX):
            self._count("mprotect")
            try:
                mm.mprotect(addr, length, prot)
            except OSError as exc:
                result = _errname(exc)
        self._assume_written(addr, end)
        self.reconcile(addr - PAGE, end + PAGE)
        return result

    def _prot_differs(self, start: int, end: int, prot: int) -> bool:
        cursor = start
        for vma in self.mm.tree.overlapping(start, end):
            if vma.vm_start > cursor or vma.is_guard_entry or int(vma.vm_flags) & _RWX != prot:
                return True
            cursor = vma.vm_end
        return cursor < end

    def _guard_directly(self, start: int, end: int) -> bool:
        """mprotect(PROT_NONE) strictly inside one accessible private anonymous VMA, with no
        design guard in or next to it: if the policy calls the PROT_NONE range it would make
        a guard, install the guard instead (one call, no VMA split)."""
        tree = self.mm.tree
        vma = tree.find(start)
        if (vma is None or vma.is_guard_entry or vma.vm_file is not None or not vma.vm_start < start
                or not end < vma.vm_end or not int(vma.vm_flags) & _VM_RWX
                or int(vma.vm_flags) & _NOT_CANDIDATE):
            return False
        g = self.guards
        if g.overlaps((start >> _SHIFT) - 1, (end >> _SHIFT) + 1):
            return False
        flags = int(vma.vm_flags)
        role, _ = self._is_guard(_Piece(vma.vm_start, start, flags), _Piece(start, end, flags & ~_VM_RWX),
                                 _Piece(end, vma.vm_end, flags))
        if role not in self.roles:
            return False
        try:
            self.mm.madvise(start, end - start, _GUARD_INSTALL)
        except OSError:
            return False
        g.assign(start >> _SHIFT, end >> _SHIFT, int(vma.vm_flags) & _RWX)
        self._count("guard_install")
        return True

    def madvise(self, addr: int, length: int, advice: int) -> CallResult:
        mm = self.mm
        if advice == _GUARD_INSTALL:
            self._count(self.guard_calls or "guard_install")
        elif advice == _GUARD_REMOVE:
            self._count(self.guard_calls or "guard_remove")
        else:
            self._count("madvise")
        if advice == _GUARD_REMOVE and self.guards is not None and length:
            end = addr + abi.page_align(length)
            # as run, these ranges are PROT_NONE VMAs with no markers: the remove leaves them be
            cursor = addr
            result = None
            for ps, pe, _ in self.guards.items(addr >> _SHIFT, end >> _SHIFT) + [(end >> _SHIFT, 0, None)]:
                if (ps << _SHIFT) > cursor:
                    try:
                        mm.madvise(cursor, (ps << _SHIFT) - cursor, advice)
                    except OSError as exc:
                        result = result or _errname(exc)
                cursor = max(cursor, pe << _SHIFT)
            return result
        try:
            mm.madvise(addr, length, advice)
        except OSError as exc:
            return _errname(exc)
        return None

    def mremap(self, old: int, old_len: int, new_len: int, flags: int, new_addr: int,
               traced: int | None) -> CallResult:
        """Replay mremap; a move goes where the kernel moved it (MREMAP_FIXED there)."""
        mm = self.mm
        self._count("mremap")
        self._unconvert(old, old + old_len)
        if traced is not None and traced != old and not flags & _MREMAP_FIXED:
            flags, new_addr = flags | _MREMAP_MAYMOVE | _MREMAP_FIXED, traced
        result = None
        try:
            got = mm.mremap(old, old_len, new_len, flags, new_addr)
            if traced is not None and got != traced:
                result = "moved elsewhere"
        except OSError as exc:
            return _errname(exc)
        at = traced if traced is not None else old
        if self.def_flags and new_len > old_len:
            self._lock_new(at, at + abi.page_align(new_len))
        self._assume_written(at, at + abi.page_align(new_len))
        self.reconcile(old - PAGE, old + abi.page_align(old_len) + PAGE)
        self.reconcile(at - PAGE, at + abi.page_align(new_len) + PAGE)
        return result

    def brk(self, requested: int, traced: int | None) -> CallResult:
        """Replay brk; the result is the break (brk reports refusal by returning the old one)."""
        self._count("brk")
        if requested == 0 and traced is not None:
            self.brk_state.brk = traced  # a query: the kernel's value is the truth (attach: unknown before)
            return None
        old = abi.page_align(self.brk_state.brk)
        got = sys_brk(self.mm, self.brk_state, requested, def_flags=self.def_flags)
        new = abi.page_align(got)
        if new < old:
            self._forget(new, old)
        elif new > old:
            self._assume_written(old, new)
        if traced is not None and got != traced:
            return f"brk {got:#x}, kernel {traced:#x}"
        return None

    def mlock(self, addr: int, length: int, flags: int) -> CallResult:
        self._count("mlock")
        try:
            self.mm.mlock(addr, length, flags)
        except OSError as exc:
            return _errname(exc)
        return None

    def munlock(self, addr: int, length: int) -> CallResult:
        self._count("munlock")
        try:
            self.mm.munlock(addr, length)
        except OSError as exc:
            return _errname(exc)
        return None

    def mlockall(self, flags: int) -> CallResult:
        self._count("mlockall")
        try:
            sys_mlockall(self.mm, flags)
        except OSError as exc:
            return _errname(exc)
        self.def_flags = mlockall_def_flags(flags)
        return None

    def munlockall(self) -> CallResult:
        self._count("munlockall")
        sys_munlockall(self.mm)
        self.def_flags = 0
        return None

    def mseal(self, addr: int, length: int, flags: int) -> CallResult:
        self._count("mseal")
        try:
            self.mm.mseal(addr, length, flags)
        except OSError as exc:
            return _errname(exc)
        return None

    def process_madvise(self, ranges: list[tuple[int, int]], advice: int) -> CallResult:
        """Guard advice through process_madvise acts on the caller's own mm (the only target
        the kernel allows for it); other advice changes no VMA and is only counted."""
        self._count("process_madvise")
        if advice not in (_GUARD_INSTALL, _GUARD_REMOVE):
            return None
        for addr, length in ranges:
            err = self.madvise(addr, length, advice)
            self._count("guard_install" if advice == _GUARD_INSTALL else "guard_remove", -1)
            if err is not None:
                return err
        return None

    def exit(self) -> None:
        self.mm.exit()


class _History:
    """The byte ranges each as-run call changed, in order, as three arrays (24 bytes per call);
    a fork child's starts empty and continues its parent's (up to the fork)."""

    __slots__ = ("lines", "starts", "ends", "parent", "upto")

    def __init__(self, parent: "_History | None" = None):
        self.lines, self.starts, self.ends = array("Q"), array("Q"), array("Q")
        self.parent, self.upto = parent, (len(parent.lines) if parent is not None else 0)

    def add(self, lineno: int, start: int, end: int) -> None:
        self.lines.append(lineno)
        self.starts.append(start & 0xFFFF_FFFF_FFFF_FFFF)
        self.ends.append(end & 0xFFFF_FFFF_FFFF_FFFF)

    def last_on(self, start: int, end: int) -> int | None:
        """O(calls) scan from the newest; runs once per reported divergence."""
        h, upto = self, None
        while h is not None:
            n = len(h.lines) if upto is None else upto
            for i in range(n - 1, -1, -1):
                if h.starts[i] < end and h.ends[i] > start:
                    return h.lines[i]
            h, upto = h.parent, h.upto
        return None


class _Piece:
    """A would-be VMA [vm_start, vm_end) of private anonymous memory with ``flags``: the
    pieces an mprotect would cut, shown to the policy before the model makes them."""

    __slots__ = ("vm_start", "vm_end", "vm_flags", "perms")
    is_guard_entry = False
    vm_file = None

    def __init__(self, start: int, end: int, flags: int):
        self.vm_start, self.vm_end, self.vm_flags = start, end, flags
        self.perms = abi.prot_to_perms(flags & _RWX, False)

    def maps_pgoff(self) -> int:
        return 0
