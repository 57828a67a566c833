"""Keep megatron-core from wrapping its fusion kernels in ``torch.compile`` on CPU.

``megatron.core.jit`` sets ``jit_fuser = torch.compile`` when it is imported, and some 40 megatron
functions are decorated with it as their modules load. Creating those wrappers pulls in TorchDynamo
and Inductor: about 2.2 s of every CPU process's start-up (``python -X importtime``), paid by each
of the ~270 training and evaluation jobs of ``snakemake all_figures``. None of the wrapped functions
runs on CPU, where :func:`mm1.models.megatron_config.required_flags` turns the fusions off, so the loss
curves are unchanged bit for bit.

:func:`install` (called by ``mm1/__init__.py``; this module imports only the standard library, so
it sits at the package's root, below every room) adds an import hook that,
right after ``megatron.core.jit`` has run and only where CUDA is unavailable, calls megatron's own
``disable_jit_fuser()``. The modules that import ``jit_fuser`` afterwards get megatron's no-op
decorator. On a GPU the hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "megatron.core.jit"


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        import torch  # already imported by megatron.core.jit

        if not torch.cuda.is_available():
            module.disable_jit_fuser()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Add the hook once; a no-op if megatron's jit module is already loaded."""
    if TARGET not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
