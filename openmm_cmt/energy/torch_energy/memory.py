"""Peak memory of one conformation through a TorchEnergy module, measured without memory.

The module is copied to PyTorch's ``meta`` device, where tensors have shapes and dtypes
but no storage, and run with forces (forward and ``autograd.grad``) on batches of one and
two conformations. Two figures are recorded per batch: the bytes autograd saves for the
backward pass (through ``saved_tensors_hooks``), which stay alive until the backward pass
frees them, and the largest single tensor any operation produces. The peak with forces is
then about the saved bytes plus a few tensors of the largest size (the forward temporaries
and the gradients the backward pass builds while the saved tensors are still held); the
difference between the two batches is what one more conformation costs. Measured this way
the estimate follows the terms actually compiled (pair lists, tabulated functions, Born
radii), which a per-interaction rule of thumb cannot.
"""

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Tensors of the largest intermediate's size assumed alive on top of the saved ones.
LARGEST_LIVE = 4


class _LargestOutput(TorchDispatchMode):
    """Records the size in bytes of the largest tensor any operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _dry_run(module: torch.nn.Module, n_atoms: int, batch: int, dtype: torch.dtype) -> tuple:
    """(saved bytes, largest tensor bytes) of energies with forces for ``batch`` conformations."""
    saved = []  # a tensor saved by several operations counts once per save: on the safe side

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    x = torch.zeros(batch, n_atoms, 3, device="meta", dtype=dtype, requires_grad=True)
    mode = _LargestOutput()
    # enable_grad: engines are also built inside no_grad blocks (sampling code).
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
        energy = module(x)
        if energy.requires_grad:  # a System without energy terms has nothing to differentiate
            torch.autograd.grad(energy.sum(), x)
    return sum(saved), mode.largest


def bytes_per_conformation(module: torch.nn.Module, n_atoms: int, dtype: torch.dtype) -> int:
    """Estimated peak bytes per conformation of ``module`` with forces, in ``dtype``.

    Parameters
    ----------
    module : torch.nn.Module
        A TorchEnergy (or any module mapping ``[B, n_atoms, 3]`` to ``[B]``).
    n_atoms : int
        Number of atoms.
    dtype : torch.dtype
        Dtype the positions are given in (the module's compute dtype).

    Returns
    -------
    int
        Saved bytes plus ``LARGEST_LIVE`` largest intermediates, per conformation, plus
        the positions, forces and their float64 copies.

    Raises
    ------
    RuntimeError
        When an operation of the module has no meta implementation.
    """
    # Buffers are replaced by meta tensors through deepcopy's memo: no data is copied
    # (the pair tables of a large protein take gigabytes on the GPU).
    memo = {id(t): torch.empty_like(t, device="meta") for t in list(module.buffers()) + list(module.parameters())}
    meta = copy.deepcopy(module, memo).to("meta")
    saved_1, largest_1 = _dry_run(meta, n_atoms, 1, dtype)
    saved_2, largest_2 = _dry_run(meta, n_atoms, 2, dtype)
    per_conformation = (saved_2 - saved_1) + LARGEST_LIVE * max(largest_2 - largest_1, 0)
    return int(per_conformation + 4 * 3 * n_atoms * 8)
