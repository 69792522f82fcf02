"""Op scripts: one format for the model and the kernel (docs/opscript.md)."""
