r"""Machine-learned potentials of openmm-ml as TorchEnergy terms.

openmm-ml (1.8, OpenMM 8.x) adds each potential to a System as an ``openmm.PythonForce``
whose computation, a Python function of an OpenMM ``State``, OpenMM calls once per
conformation and keeps pickled in the force. :func:`build_python_force` unpickles that
function and, for the potentials whose model takes batches, returns a term evaluating the
model on a whole batch of conformations:

* ANI (torchani: openmm-ml's ``ani2x`` and ``ani1ccx``, an ensemble or one ``modelIndex``),
  without periodic boundary conditions,

  .. math:: E(x) = E_h \, \mathrm{ANI}(Z, 10\,x_P),

  with :math:`x_P` the positions (nm) of the force's particles (all atoms when it names
  none), :math:`Z` their atomic numbers and :math:`E_h` the hartree in kJ/mol.

Every other computation (ASE calculators, MACE, periodic ANI, ...) raises
``UnsupportedSystemError``, so that ``create_energy`` evaluates such a System with
OpenMMEnergy, one conformation per call. An ML/MM System from openmm-ml's
``createMixedSystem`` compiles whole: its classical forces through their own builders.
"""

from __future__ import annotations

import ctypes
import pickle

import openmm
import torch
from torch import nn

from openmm_cmt.energy.torch_energy._params import index_buffer
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.units import HARTREE_KJ_PER_MOL

#: The ANI computations that :class:`ANITerm` batches, as ``(module, name)``: openmm-ml's
#: own and the one ``openmm_cmt.systems.ml`` substitutes for it (forces per nm), both
#: ``functools.partial(compute, model=, species=, pbc=)``.
#: Larger "sizes" read through the vector's pointers mean the layout is not the one
#: assumed; the bytes are then taken through the public route.
_MAX_DIRECT_BYTES = 1 << 31

ANI_COMPUTATIONS = {
    ("openmmml.models.anipotential", "_computeANI"),
    ("openmm_cmt.systems.ml", "_compute_ani"),
}


class ANITerm(nn.Module):
    r""":math:`E(x) = E_h\,\mathrm{ANI}(Z, 10\,x_P)` in kJ/mol for positions ``[B, N, 3]`` (nm).

    Parameters
    ----------
    model : torch.nn.Module
        A torchani model taking ``(species [B, n], coordinates [B, n, 3] in Angstrom)``
        and returning energies in hartree as its second output.
    species : torch.Tensor
        Atomic numbers of the ``n`` atoms the model sees.
    atoms : list of int
        Their indices among the System's ``N`` particles.
    dtype : torch.dtype
        The dtype the model computes in (openmm-ml's own computation uses float32).
    """

    #: torchani's neighbour lists have value-dependent sizes (no meta tracing, no torch.compile).
    data_dependent_shapes = True

    def __init__(self, model: nn.Module, species: torch.Tensor, atoms, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype).eval().requires_grad_(False)
        self.register_buffer("species", torch.as_tensor(species, dtype=torch.int64).reshape(1, -1).cpu())
        self.register_buffer("atoms", index_buffer(atoms))
        if self.species.shape[1] != self.atoms.shape[0]:
            raise ValueError(f"ANI model over {self.species.shape[1]} species but {self.atoms.shape[0]} atoms")
        self.register_buffer("angstrom_per_nm", torch.tensor(10.0, dtype=dtype))
        self.kj_per_mol_per_hartree = HARTREE_KJ_PER_MOL
        # Measured with forces: about 1 MB saved per conformation of alanine dipeptide
        # (22 atoms, float32, 8-model ensemble), i.e. 2 n^3 elements at the engine's
        # 48 bytes per element; angular terms grow with atom triples.
        self.work_elements = 4 * len(atoms) ** 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angstrom = x.index_select(1, self.atoms).to(self.angstrom_per_nm.dtype) * self.angstrom_per_nm
        species = self.species.expand(x.shape[0], -1)
        energy = self.model((species, angstrom))[1]
        return energy.to(torch.float64) * self.kj_per_mol_per_hartree


def pickled_computation(force: openmm.PythonForce):
    """The computation function of ``force``, unpickled.

    Parameters
    ----------
    force : openmm.PythonForce
        The force; it keeps its function pickled (empty when the function does not pickle).

    Returns
    -------
    callable
        A copy of the function the force calls.

    Raises
    ------
    UnsupportedSystemError
        When the function was not pickled or does not unpickle here.
    """
    # getPickledFunction hands out the force's std::vector<char> as an opaque SWIG
    # pointer. Its public byte routes (XmlSerializer, PythonForceProxy.hexEncode) hex-encode
    # at seconds per megabyte, a minute for ANI-2x's eight networks; the vector's first two
    # words are its begin and end pointers (libstdc++, libc++ and MSVC alike).
    vector = force.getPickledFunction()
    begin, end = (ctypes.c_void_p * 2).from_address(int(vector))
    size = (end or 0) - (begin or 0)
    if 0 < size < _MAX_DIRECT_BYTES and ctypes.string_at(begin, 1) == pickle.PROTO:
        data = ctypes.string_at(begin, size)
    else:  # an empty function, or not the layout assumed: the public route decides
        data = bytes.fromhex(openmm.PythonForceProxy.hexEncode(vector))
        if not data:
            raise UnsupportedSystemError("PythonForce whose computation function could not be pickled")
    try:
        return pickle.loads(data)
    except Exception as err:
        raise UnsupportedSystemError(f"PythonForce whose computation function does not unpickle here ({err})") from None


def build_python_force(force: openmm.PythonForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    """The batched term of an openmm-ml ``PythonForce``: an :class:`ANITerm` for ANI.

    Parameters
    ----------
    force : openmm.PythonForce
        A force of ``system``.
    system : openmm.System
        Its System.
    dtype : torch.dtype
        Compute dtype of the term.

    Returns
    -------
    ANITerm
        The model of the force, on the force's particles.

    Raises
    ------
    UnsupportedSystemError
        For a computation without a batched form (anything but non-periodic ANI) or one
        that does not unpickle.
    """
    compute = pickled_computation(force)
    func = getattr(compute, "func", compute)
    name = (getattr(func, "__module__", None), getattr(func, "__qualname__", type(func).__name__))
    keywords = getattr(compute, "keywords", None) or {}
    if name not in ANI_COMPUTATIONS or not {"model", "species"} <= set(keywords):
        raise UnsupportedSystemError(
            f"PythonForce computing {name[0]}.{name[1]} has no batched form (only openmm-ml's ANI potentials do)"
        )
    if keywords.get("pbc") is not None or force.usesPeriodicBoundaryConditions():
        raise UnsupportedSystemError("PythonForce computing a periodic ANI potential has no batched form")
    atoms = list(force.getParticles()) or list(range(system.getNumParticles()))
    return ANITerm(keywords["model"], keywords["species"], atoms, dtype)
