"""The pure-Python model of a Linux mm: VMAs, their index, and the syscalls that change them."""
