"""``sparsemm trace``: record a real program's memory-management system calls and replay them on the model.

``record`` runs Debian's strace (holding tasks at execve and exit_group to read their maps),
``parse`` reads its output, ``replay`` applies every call to a model address space per
process, as run and under each guard design, and ``report`` prints, plots and serializes
the result. See docs/trace.md.
"""
