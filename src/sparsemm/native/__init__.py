"""The real kernel from Python: ctypes bindings, /proc readers and the feature probe."""
