"""TorchEnergyEngine: a TorchEnergy as an EnergyEngine, with memory-bounded chunks."""

from __future__ import annotations

import shutil
import warnings

import torch

from openmm_cmt.energy.base import EnergyEngine
from openmm_cmt.energy.torch_energy import memory
from openmm_cmt.energy.torch_energy.module import TorchEnergy

#: Default memory budget on CPU, in bytes.
CPU_MEMORY_BUDGET = 1 << 30
#: Default fraction of free GPU memory one chunk may use.
CUDA_MEMORY_FRACTION = 0.5
#: Conformations on which the first compiled call of each kind (energies; energies and
#: forces) is checked against the eager module.
_CHECK_SIZE = 8
#: Relative agreement required of that check: fusion changes rounding, a miscompiled
#: graph (seen: inductor on CPU, torch 2.9, dropped the gradient of a torsion force with
#: a single torsion) is wrong at order 1.
_CHECK_RTOL = {torch.float64: 1e-7, torch.float32: 1e-3}
#: Fallback when the memory dry run fails: live intermediates of the size of a term's
#: largest one, per element of work, with the autograd graph kept.
_LIVE_COPIES = 6


def _compiler_available() -> bool:
    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


class TorchEnergyEngine(EnergyEngine):
    """Batched energies (and autograd forces) of a MolecularSystem with TorchEnergy.

    Parameters
    ----------
    molsys
        a ``MolecularSystem`` (its ``system`` and ``kT`` are used).
    device
        where to compute; None picks CUDA when available, else CPU.
    dtype
        compute dtype, ``torch.float32`` or ``torch.float64``. Energies are
        accumulated and returned in float64 either way.
    compile
        ``True``, ``False`` or ``"auto"`` (``torch.compile`` on CUDA, and on
        CPU when a C++ compiler is found). The first compiled call of each kind
        (energies; energies with forces) is checked against the eager module on a
        few conformations; if compilation fails or disagrees, the engine warns and
        uses the eager module for that kind of call. A module with a term whose
        shapes depend on the positions (``data_dependent_shapes``, e.g. the neighbour
        lists of an ANI term) is never compiled (with a warning for ``True``).
    memory_budget_bytes
        bytes one chunk may use; default 1 GiB on CPU and half of
        the free memory on CUDA. Batches are split into chunks of
        ``chunk_size = budget // bytes_per_conformation`` conformations, the bytes
        per conformation measured by a dry run of the module (``memory``), or
        estimated from the terms' ``work_elements`` when shapes depend on the data.

    Raises
    ------
    UnsupportedSystemError
        When the System cannot be compiled.
    """

    def __init__(self, molsys, device=None, dtype=torch.float64, compile="auto", memory_budget_bytes=None):
        super().__init__(molsys.n_atoms, molsys.kT)
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = TorchEnergy.from_openmm(molsys.system, dtype=dtype, device=self.device)
        dynamic = [name for name, term in zip(self.module.names, self.module.terms)
                   if getattr(term, "data_dependent_shapes", False)]
        # Neither tracing on the meta device nor torch.compile gets past operations whose
        # output shape depends on the values (torch 2.9 crashed compiling torchani).
        self._static_shapes = not dynamic
        if compile == "auto":
            compile = self._static_shapes and (self.device.type == "cuda" or _compiler_available())
        elif compile and dynamic:
            warnings.warn(f"torch.compile skipped: terms {dynamic} have data-dependent shapes; using the eager module",
                          RuntimeWarning, stacklevel=2)
            compile = False
        self._compiled = torch.compile(self.module, dynamic=True) if compile else None
        self._checked = set()  # kinds of call (forces: True/False) whose compiled result was checked
        self._eager_only = set()  # kinds of call for which compilation failed
        if memory_budget_bytes is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                memory_budget_bytes = int(CUDA_MEMORY_FRACTION * free)
            else:
                memory_budget_bytes = CPU_MEMORY_BUDGET
        if memory_budget_bytes <= 0:
            raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
        self.memory_budget_bytes = int(memory_budget_bytes)
        self._bytes_per_conformation = None
        self.chunk_size = max(1, self.memory_budget_bytes // self.bytes_per_conformation())

    @property
    def compiled(self) -> bool:
        """Whether energy-only calls go through ``torch.compile``."""
        return self._compiled is not None and False not in self._eager_only

    @property
    def compiled_forces(self) -> bool:
        """Whether calls with forces go through ``torch.compile``."""
        return self._compiled is not None and True not in self._eager_only

    def bytes_per_conformation(self) -> int:
        """Estimated peak bytes one conformation needs with forces (the larger case) in
        the eager module, from a dry run on the meta device (``memory``): what autograd
        saves plus the largest intermediates. Falls back to a per-interaction rule when
        the dry run fails, and uses that rule without a dry run when a term's shapes
        depend on the data. Computed once."""
        if self._bytes_per_conformation is None:
            try:
                if self._static_shapes:
                    self._bytes_per_conformation = memory.bytes_per_conformation(self.module, self.n_atoms, self.dtype)
            except Exception as err:  # an operation without a meta kernel
                warnings.warn(f"memory dry run failed ({type(err).__name__}: {err}); using a conservative "
                              "per-interaction estimate", RuntimeWarning, stacklevel=2)
            if self._bytes_per_conformation is None:
                itemsize = torch.empty((), dtype=self.dtype).element_size()
                self._bytes_per_conformation = (2 * _LIVE_COPIES * itemsize * self.module.work_elements()
                                                + 64 * self.n_atoms)
        return self._bytes_per_conformation

    def _evaluate(self, fn, x: torch.Tensor, forces: bool):
        if not forces:
            with torch.no_grad():
                return fn(x), None
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            e = fn(x)
            (grad,) = torch.autograd.grad(e.sum(), x)
        return e.detach(), -grad

    def _chunk(self, x: torch.Tensor, forces: bool):
        x = x.to(device=self.device, dtype=self.dtype)
        if self._compiled is not None and forces not in self._eager_only:
            try:
                out = self._evaluate(self._compiled, x, forces)
                if forces not in self._checked:
                    self._check_compiled(x[:_CHECK_SIZE], out, forces)
                    self._checked.add(forces)
                return out
            except Exception as err:  # compilation errors surface at the first (backward) call
                kind = "energies and forces" if forces else "energies"
                warnings.warn(f"torch.compile failed for {kind} ({type(err).__name__}: {err}); using the eager "
                              "module for them", RuntimeWarning, stacklevel=4)
                self._eager_only.add(forces)
        return self._evaluate(self.module, x, forces)

    def _check_compiled(self, x: torch.Tensor, out, forces: bool) -> None:
        """Raise if the compiled module disagrees with the eager one on ``x``."""
        e_ref, f_ref = self._evaluate(self.module, x, forces)
        rtol = _CHECK_RTOL[self.dtype]
        e, f = out[0][: len(x)], None if out[1] is None else out[1][: len(x)]
        finite = torch.isfinite(e_ref)
        if not torch.allclose(e[finite], e_ref[finite], rtol=rtol, atol=rtol):
            raise RuntimeError("compiled energies differ from the eager module's")
        if forces:
            err = torch.linalg.vector_norm((f - f_ref)[finite].flatten(1), dim=1)
            norm = torch.linalg.vector_norm(f_ref[finite].flatten(1), dim=1)
            if bool((err > rtol * (norm + 1.0)).any()):
                raise RuntimeError("compiled forces differ from the eager module's")

    def _energy(self, x: torch.Tensor, forces: bool):
        out_device = x.device
        energies, force_chunks = [], []
        for start in range(0, x.shape[0], self.chunk_size):
            e, f = self._chunk(x[start:start + self.chunk_size], forces)
            energies.append(e.to(device=out_device, dtype=torch.float64))
            if forces:
                force_chunks.append(f.to(device=out_device, dtype=torch.float64))
        if not energies:
            e = torch.zeros(0, dtype=torch.float64, device=out_device)
            f = torch.zeros(0, self.n_atoms, 3, dtype=torch.float64, device=out_device)
        else:
            e = torch.cat(energies)
            f = torch.cat(force_chunks) if forces else None
        if not forces:
            return e
        bad = ~torch.isfinite(e)
        f = torch.where(bad[:, None, None], torch.zeros_like(f), f)
        return e, f

    def term_names(self) -> list[str]:
        return self.module.term_names()
