"""The guard-design contract and registry: ``GuardDesign``, its metadata, ``register``.

Owns what a guard design is (the hooks ``AddressSpace`` calls, the results they return,
the metadata every tool reads) and the one table of registered designs. Adding a design is
one ``@register``-ed subclass; the model, ``opscript``, ``analyze`` and the CLI list, order
and describe designs from here and name none. Knows no particular design.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

from sparsemm.abi import Madv

if TYPE_CHECKING:
    from sparsemm.model.core import MmCore
    from sparsemm.model.vma import Vma

__all__ = ["GuardDesign", "KernelForm", "GuardShape", "GUARD_ADVICE", "register", "unregister",
           "design_class", "make_design", "names", "baseline", "kernel_design", "reproducible",
           "unknown_design_message"]

#: The advice a design handles; no other op reaches a design with an effect.
GUARD_ADVICE = (Madv.GUARD_INSTALL, Madv.GUARD_REMOVE)


class KernelForm(enum.Enum):
    """Whether and how the running kernel can build what a design builds."""

    NATIVE = "native"  # the kernel's own guard regions: the script runs on it as it is
    MPROTECT = "mprotect"  # each guard written as mprotect(PROT_NONE) (workloads.to_vma_design)
    NONE = "none"  # no kernel implements it: model only


class GuardShape(enum.Enum):
    """What a guard is in the address space (how ``analyze``'s plot draws it)."""

    VMA = "vma"  # a VMA of its own (PROT_NONE): a line in /proc/PID/maps
    MARKER = "marker"  # inside the VMA around it (a PTE marker): the VMA stays whole
    ENTRY = "entry"  # no VMA at all (a tree entry): a gap in maps that splits its neighbours


class GuardDesign:
    """One guard design: metadata as class attributes, behaviour as hooks.

    Metadata (every subclass sets them; ``register`` checks):

    - ``name``: the ``--design`` value; ``order``: report order (lower first);
    - ``kernel_form``: a ``KernelForm`` (``NATIVE`` for the kernel's own design, at most one);
    - ``guards_count_toward_max_map_count``: does a guard itself count in ``map_count``?
    - ``guard_shape``: a ``GuardShape``; ``description``: one line for people;
    - ``status_quo``: the design the others are compared with ("saved vs"), at most one.

    Hooks, called by ``AddressSpace`` (``mm``: the ``MmCore`` contract; ``start``/``end``
    bytes, page aligned):

    - ``whole_range`` true: ``guard_range(mm, addr, length, advice)`` takes the guard advice
      as a whole call, before madvise validates anything (the ``vma`` design's mprotect);
    - else the madvise walk calls ``install``/``remove(mm, vma, start, end)`` for each VMA
      (or guard entry) piece ``[start, end)`` of the range; each returns the address the
      walk resumes at (``end``, or beyond when the VMA now covering ``end`` reaches further)
      and raises OSError to stop the walk with that errno;
    - ``on_unmap(start, end)`` / ``on_mprotect(start, end)``: the program unmapped the range
      or set its protection;
    - ``fork()``: the child's design object; ``after_fork(child)``: the child mm is built;
    - ``has_state(mm)``: does the design hold guards in ``mm``? (``set_guard_design``);
    - ``check(mm)``: the design's invariants, ``InvariantError`` if broken (``AddressSpace.check``).

    Designs hold no reference to their mm: hooks get it as an argument.
    """

    name: ClassVar[str]
    order: ClassVar[int]
    kernel_form: ClassVar[KernelForm]
    guards_count_toward_max_map_count: ClassVar[bool]
    guard_shape: ClassVar[GuardShape]
    description: ClassVar[str]
    status_quo: ClassVar[bool] = False
    whole_range: ClassVar[bool] = False

    __slots__ = ()

    def guard_range(self, mm: "MmCore", addr: int, length: int, advice: int) -> None:
        """The whole guard-advice call (``whole_range`` designs only)."""
        raise NotImplementedError(f"guard design {self.name!r} works VMA by VMA")

    def install(self, mm: "MmCore", vma: "Vma", start: int, end: int) -> int:
        """MADV_GUARD_INSTALL on ``[start, end)`` of ``vma``; returns the resume address."""
        raise NotImplementedError(f"guard design {self.name!r} takes whole ranges")

    def remove(self, mm: "MmCore", vma: "Vma", start: int, end: int) -> int:
        """MADV_GUARD_REMOVE on ``[start, end)`` of ``vma``; returns the resume address."""
        raise NotImplementedError(f"guard design {self.name!r} takes whole ranges")

    def on_unmap(self, start: int, end: int) -> None:
        """The program unmapped ``[start, end)`` (munmap, MAP_FIXED, mremap)."""

    def on_mprotect(self, start: int, end: int) -> None:
        """The program set the protection of ``[start, end)``."""

    def fork(self) -> "GuardDesign":
        """The child's design object: this one if the design keeps no state of its own."""
        return self

    def after_fork(self, child: "MmCore") -> None:
        """The child address space is built; adjust what the design keeps in it."""

    def has_state(self, mm: "MmCore") -> bool:
        """Does ``mm`` hold guards of this design? O(1)."""
        return bool(mm.pt.marker_pages() or mm.tree.reserved_count)

    def check(self, mm: "MmCore") -> None:
        """Raise ``InvariantError`` if the design's own invariants do not hold in ``mm``."""


_REGISTRY: dict[str, type[GuardDesign]] = {}
_METADATA = {"name": str, "order": int, "kernel_form": KernelForm,
             "guards_count_toward_max_map_count": bool, "guard_shape": GuardShape,
             "description": str, "status_quo": bool, "whole_range": bool}


def register(cls: type[GuardDesign]) -> type[GuardDesign]:
    """Add ``cls`` to the registry (a class decorator). ValueError for missing or mistyped
    metadata, a name already taken, a second ``status_quo`` or a second ``NATIVE`` design."""
    if not (isinstance(cls, type) and issubclass(cls, GuardDesign)):
        raise ValueError(f"{cls!r} is not a GuardDesign subclass")
    for attr, kind in _METADATA.items():
        if not isinstance(getattr(cls, attr, None), kind):
            raise ValueError(f"guard design {cls.__name__}: {attr} must be a {kind.__name__}")
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"guard design {cls.__name__}: bad name {cls.name!r}")
    if cls.name in _REGISTRY:
        raise ValueError(f"guard design {cls.name!r} is already registered")
    others = _REGISTRY.values()
    if cls.status_quo and any(d.status_quo for d in others):
        raise ValueError(f"guard design {cls.name!r}: there is already a status-quo design")
    if cls.kernel_form is KernelForm.NATIVE and any(d.kernel_form is KernelForm.NATIVE for d in others):
        raise ValueError(f"guard design {cls.name!r}: the kernel already has its native design")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a registered design (tests that register their own). KeyError if unknown."""
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered design names in report order. O(d log d)."""
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n)))


def unknown_design_message(name: str) -> str:
    return f"unknown guard design {name!r} (choose from {', '.join(names())})"


def design_class(name: str) -> type[GuardDesign]:
    """The registered class called ``name``; ValueError naming the choices otherwise. O(1)."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(unknown_design_message(name))
    return cls


def make_design(name: str) -> GuardDesign:
    """A fresh design object for ``name`` (an address space's own); ValueError if unknown."""
    return design_class(name)()


def baseline() -> str | None:
    """The status-quo design, the one the others are compared with (None if none registered)."""
    return next((n for n in names() if _REGISTRY[n].status_quo), None)


def kernel_design() -> str:
    """The design the running kernel implements itself (``KernelForm.NATIVE``): the default
    everywhere a design is not named. LookupError if none is registered."""
    for n in names():
        if _REGISTRY[n].kernel_form is KernelForm.NATIVE:
            return n
    raise LookupError("no registered guard design is the kernel's own")


def reproducible() -> tuple[str, ...]:
    """The designs the running kernel can build (``kernel_form`` not ``NONE``), in report order."""
    return tuple(n for n in names() if _REGISTRY[n].kernel_form is not KernelForm.NONE)
