"""Build steps pyproject.toml cannot declare: the efence LD_PRELOAD library and the compiled model core.

``build_efence`` compiles ``src/sparsemm/efence/efence.c`` with the system C
compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into
``sparsemm/efence/libsparsemm_efence.so.1``: into the build tree for ``pip install .``,
into the source tree for ``pip install -e .``. A failed compile never fails the
install: the reason is written next to where the library would be
(``libsparsemm_efence.build-error.txt``) and ``sparsemm efence`` prints it. The name
ends in ``.so.1`` so Python's importer never takes the library for an extension
module.

``build_ext`` compiles the model modules listed in ``sparsemm/_compiled.py``
(``COMPILED_MODULES``) with mypyc into extension modules that take precedence over
their ``.py`` files. It never fails the install either: without mypyc, without a C
compiler, or when mypyc rejects the code, it prints why, removes any partial output,
and the pure-Python modules are used (``SPARSEMM_PURE_PYTHON=1`` at install time skips
it on purpose). ``sparsemm --version`` says which build is in use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Command, Distribution, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
EFENCE_DIR = Path("src") / "sparsemm" / "efence"
SOURCE = EFENCE_DIR / "efence.c"
LIB_NAME = "libsparsemm_efence.so.1"  # keep in sync with sparsemm/efence/driver.py
ERROR_NAME = "libsparsemm_efence.build-error.txt"
CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-fvisibility=hidden", "-fno-builtin",
          "-pthread", "-Wall", "-Wextra"]
LIBS = ["-ldl"]


def find_compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` (may hold flags) or the first of cc, gcc, clang."""
    if os.environ.get("CC"):
        cmd = os.environ["CC"].split()
        return cmd if shutil.which(cmd[0]) else None
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def compile_library(out_dir: Path) -> str | None:
    """Compile efence.c into ``out_dir``; return None, or why it could not be built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    error_file = out_dir / ERROR_NAME
    target = out_dir / LIB_NAME
    cc = find_compiler()
    if cc is None:
        reason = "no C compiler found ($CC, cc, gcc and clang are all missing)"
    else:
        partial = out_dir / (LIB_NAME + ".partial")  # renamed into place: a running program
        cmd = [*cc, *CFLAGS, "-o", str(partial), str(HERE / SOURCE), *LIBS]  # keeps its copy
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"{' '.join(cc)} could not run: {exc}"
        else:
            if proc.returncode == 0:
                os.replace(partial, target)
                error_file.unlink(missing_ok=True)
                return None
            partial.unlink(missing_ok=True)
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            reason = f"{' '.join(cc)} failed (exit {proc.returncode}): {tail}"
    target.unlink(missing_ok=True)
    error_file.write_text(reason + "\n")
    return reason


class build_efence(Command):  # noqa: N801 (setuptools command names are lower case)
    """Compile the efence library; never fails the build (see the module docstring)."""

    description = "compile the sparsemm efence LD_PRELOAD library (C)"
    user_options: list = []
    editable_mode = False  # set by setuptools for `pip install -e .`

    def initialize_options(self) -> None:
        self.build_lib = None

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def _out_dir(self) -> Path:
        if self.editable_mode:
            return HERE / EFENCE_DIR
        return Path(self.build_lib) / "sparsemm" / "efence"

    def run(self) -> None:
        reason = compile_library(self._out_dir())
        if reason:
            print(f"warning: sparsemm efence library not built: {reason}; "
                  "everything else in sparsemm works")

    def get_source_files(self) -> list[str]:
        return [str(SOURCE)]

    def get_outputs(self) -> list[str]:
        return [] if self.editable_mode else [str(self._out_dir() / LIB_NAME)]

    def get_output_mapping(self) -> dict[str, str]:
        return {}


def compiled_module_names() -> list[str]:
    """``COMPILED_MODULES`` of ``src/sparsemm/_compiled.py``, read without importing the package."""
    import ast

    tree = ast.parse((HERE / "src" / "sparsemm" / "_compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "COMPILED_MODULES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("src/sparsemm/_compiled.py defines no COMPILED_MODULES")


def mypyc_extensions() -> list:
    """The mypyc extension modules of the compiled core, or [] (with a warning) when they
    cannot be generated: mypyc missing, rejected code, or SPARSEMM_PURE_PYTHON set."""
    if os.environ.get("SPARSEMM_PURE_PYTHON", "").strip().lower() not in ("", "0", "no", "false"):
        print("sparsemm: SPARSEMM_PURE_PYTHON is set: the model core stays pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        print(f"warning: sparsemm model core not compiled: mypyc is not installed ({exc}); "
              "the pure-Python modules are used")
        return []
    paths = [str(Path("src", *name.split(".")).with_suffix(".py")) for name in compiled_module_names()]
    try:
        # only the listed modules are compiled and must type-check; the modules they import
        # are read for their types, their own errors are not this build's concern
        flags = ["--follow-imports=silent", "--ignore-missing-imports"]
        return mypycify([*flags, *paths], opt_level="3", debug_level="0", verbose=False,
                        target_dir=str(Path("build") / "mypyc"))
    except (Exception, SystemExit) as exc:  # mypyc exits on type errors
        print(f"warning: sparsemm model core not compiled: mypyc failed ({exc!r}); "
              "the pure-Python modules are used")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: on any error the partial output is removed
    (a module whose shared mypyc runtime is missing would not import) and the pure-Python
    modules stay in use."""

    def run(self) -> None:
        record = Path(self.get_ext_fullpath("sparsemm._compiled")).parent / "_compiled_sources.json"
        record.unlink(missing_ok=True)
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, a missing compiler, ...
            for out in self.get_outputs():
                Path(out).unlink(missing_ok=True)
            print(f"warning: sparsemm model core not compiled: {exc}; the pure-Python modules are used")
            return
        # what was compiled: sparsemm/_compiled.py loads the .py instead once a source differs
        record.write_text(json.dumps({name: hashlib.sha256(
            (HERE / "src" / Path(*name.split("."))).with_suffix(".py").read_bytes()).hexdigest()
            for name in compiled_module_names()}, indent=1) + "\n")

    def get_outputs(self) -> list[str]:
        outs = super().get_outputs()
        if self.extensions:
            outs.append(str(Path(self.get_ext_fullpath("sparsemm._compiled")).parent / "_compiled_sources.json"))
        return outs


class Build(build):
    sub_commands = [*build.sub_commands, ("build_efence", None)]


class BinaryDistribution(Distribution):
    """The wheel holds a native library, so it is tagged for this platform."""

    def has_ext_modules(self) -> bool:
        return True


if __name__ == "__main__":  # setuptools runs setup.py as __main__; tests import its helpers
    setup(cmdclass={"build": Build, "build_efence": build_efence, "build_ext": OptionalBuildExt},
          distclass=BinaryDistribution, ext_modules=mypyc_extensions())
