"""A quiet start for the command line: TensorFlow's start-up chatter kept off the terminal.

Importing TensorFlow writes, from C++, straight to file descriptor 2 and before any
setting can stop it (``TF_CPP_MIN_LOG_LEVEL`` no longer does): absl's "All log messages
before absl::InitializeLog()", oneDNN's notice, the CUDA probe. ``install()`` puts a finder
in front of the import system that runs TensorFlow's first import with descriptor 2 sent to
a temporary file, then writes back every line that is not such a log line, so nothing else
printed meanwhile (by carls or another thread) is lost. ``--verbose`` leaves it all.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

CHATTER = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] "  # absl / TSL C++ logging
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)
"""A line of TensorFlow's C++ start-up logging (a fatal one, F, is always shown)."""

QUIET_MODULES = ("tensorflow",)


@contextlib.contextmanager
def stderr_filtered() -> Iterator[None]:
    """Descriptor 2 into a temporary file for the block; its lines written back after it,
    less TensorFlow's C++ log lines (all of them, when the block raises). Where that
    cannot be set up, the block runs as it is."""
    try:
        sys.stderr.flush()
        tmp = tempfile.TemporaryFile()  # noqa: SIM115  # closed by the with below
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tmp:
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2
            yield
            return
        failed = True
        try:
            os.dup2(tmp.fileno(), 2)
            yield
            failed = False
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().splitlines(True)
            kept = lines if failed else [line for line in lines if not CHATTER.match(line)]
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(kept))


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its own loader (resources, reloads): the wrapper is for this once
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with stderr_filtered():
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders give for QUIET_MODULES."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in QUIET_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


_FINDER = _QuietFinder()


def install() -> None:
    """Import TensorFlow quietly from now on (no effect once it is imported)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
