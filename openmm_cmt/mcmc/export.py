r"""A trained generator as an OpenMM force: :math:`E_\mathrm{BG}(x) = -kT \log q(x)`.

``export_generator`` writes a TorchScript file whose ``forward(positions [n_atoms, 3] nm)``
returns :math:`E_\mathrm{BG}` in kJ/mol as a 0-dim tensor, the contract of
``openmmtorch.TorchForce`` (Reference, CPU and CUDA platforms); OpenMM takes the forces
:math:`-\nabla E_\mathrm{BG} = kT \nabla \log q` from its autograd gradient. A System
holding only this force has the Boltzmann distribution :math:`\propto q(x)` (up to the
rigid-motion directions, along which :math:`\log q` is constant). For a generator of a
constrained System (``constraints=HBonds``), :math:`\log q` is a density with respect to the
mass-weighted surface measure of the constraint manifold, the measure on which
constrained MD of a System with the same constraints samples
:math:`e^{-E_\mathrm{BG}/kT}` (:mod:`openmm_cmt.coordinates.constraints`), so the same
holds there; ``check_compatible`` requires those constraints.

The file also carries the generator's density contract as scripted methods
``sample(n) -> (x [n, N, 3] nm, log_q [n])`` and ``log_prob(x [B, N, 3]) -> [B]`` (nats),
and metadata: atom count, order (elements, names, masses), temperature, kT, units and
versions. The metadata sit both in scripted attributes (``metadata_json``) and in a JSON
file inside the archive, which ``read_metadata`` reads without running any code.

TorchForce is deprecated upstream in favour of Python-side forces, so
``generator_python_force`` wraps the same file in an ``openmm.PythonForce``: it works with
any torch version, needs no openmm-torch, and pickles (so the System serialises to XML).
"""

import copy
import io
import json
import os
from typing import List, Optional, Tuple
import zipfile

import numpy as np
import torch
import openmm
from openmm import unit

from openmm_cmt._version import __version__
from openmm_cmt.io import atomic_write_bytes
from openmm_cmt.mcmc.compatibility import check_constraints, generator_constraints

METADATA_FILE = "openmm_cmt_metadata.json"

# Masses differing by more than this (dalton) mean a different atom.
_MASS_TOLERANCE = 1e-3


class GeneratorEnergy(torch.nn.Module):
    r""":math:`E_\mathrm{BG}(x) = -kT \log q(x)` in kJ/mol for one conformation.

    ``forward`` takes OpenMM's positions ``[n_atoms, 3]`` (nm, any float dtype), computes in
    the generator's dtype and returns a 0-dim tensor in the dtype of the positions.
    Positions outside the generator's support give ``+inf``.
    """

    n_atoms: int
    temperature: float
    kT: float
    elements: List[str]
    atom_names: List[str]
    metadata_json: str

    def __init__(
        self,
        generator: torch.nn.Module,
        kT: float,
        temperature: float,
        elements: List[str],
        atom_names: List[str],
        metadata_json: str,
    ):
        super().__init__()
        self.generator = generator
        self.n_atoms = int(generator.n_atoms)
        self.temperature = float(temperature)
        self.kT = float(kT)
        self.elements = list(elements)
        self.atom_names = list(atom_names)
        self.metadata_json = metadata_json
        # Follows .to(dtype/device) of the module, so forward can cast its input.
        dtype = next(iter(generator.parameters())).dtype
        self.register_buffer("dtype_probe", torch.zeros((), dtype=dtype))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if positions.dim() != 2 or positions.shape[0] != self.n_atoms or positions.shape[1] != 3:
            raise ValueError(
                "positions must have shape [" + str(self.n_atoms) + ", 3] in nm, got " + str(list(positions.shape))
            )
        x = positions.reshape(1, self.n_atoms, 3).to(self.dtype_probe.dtype)
        log_q = self.generator.log_prob(x)
        return (-self.kT * log_q[0]).to(positions.dtype)

    @torch.jit.export
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, N, 3] nm, log_q [n])`` from the generator (canonical frame), drawn from
        ``generator`` (default: torch's global RNG)."""
        return self.generator.sample(n, generator)

    @torch.jit.export
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)`` in nats, ``[B]`` for ``x [B, N, 3]`` nm."""
        return self.generator.log_prob(x.to(self.dtype_probe.dtype))


def export_generator(generator: torch.nn.Module, molsys, path, dtype: torch.dtype | None = None) -> dict:
    """Script ``generator`` (a ``Generator`` for ``molsys``) and write it to ``path``.

    The file holds a CPU copy in ``dtype`` (default: the generator's); the generator
    itself is not modified. Returns the metadata written into the file.
    """
    n = getattr(generator, "n_atoms", None)
    if n != molsys.n_atoms:
        raise ValueError(f"the generator has {n} atoms, the MolecularSystem {molsys.name!r} has {molsys.n_atoms}")
    elements = list(molsys.elements)
    if list(getattr(generator, "elements", elements)) != elements:
        raise ValueError(f"the generator's element order differs from the MolecularSystem {molsys.name!r}")
    atom_names = [a.name for a in molsys.topology.atoms()]
    module = copy.deepcopy(generator).cpu().eval()
    if dtype is not None:
        module = module.to(dtype)
    param_dtype = next(iter(module.parameters())).dtype
    metadata = {
        "format": "openmm_cmt generator",
        "n_atoms": molsys.n_atoms,
        "elements": elements,
        "atom_names": atom_names,
        "masses_dalton": molsys.masses.tolist(),
        "temperature_K": molsys.temperature,
        "kT_kJ_per_mol": molsys.kT,
        "units": {"length": "nm", "energy": "kJ/mol", "log_prob": "nats"},
        "forward": "E_BG(x) = -kT log q(x) in kJ/mol for positions [n_atoms, 3] in nm",
        "methods": {"sample": "n -> (x [n, n_atoms, 3] nm, log_q [n])", "log_prob": "x [B, n_atoms, 3] nm -> [B] nats"},
        "dtype": str(param_dtype).replace("torch.", ""),
        "constraints": [[i, j, d] for (i, j), d in sorted(generator_constraints(generator).items())],
        "measure": (
            "log_prob is a density modulo rigid motions; with constraints, with respect to the mass-weighted "
            "surface measure of the constraint manifold (what constrained MD samples)"
        ),
        "system": molsys.name,
        "openmm_cmt_version": __version__,
        "torch_version": torch.__version__,
        "openmm_version": openmm.__version__,
    }
    text = json.dumps(metadata)
    wrapper = GeneratorEnergy(module, molsys.kT, molsys.temperature, elements, atom_names, text)
    scripted = torch.jit.script(wrapper)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: text})
    atomic_write_bytes(path, buffer.getvalue())
    return metadata


def read_metadata(path) -> dict:
    """The metadata of an exported file, read from the archive without loading code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported generator not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("extra/" + METADATA_FILE):
                    return json.loads(archive.read(name))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a TorchScript archive: {err}") from err
    raise ValueError(f"{path} has no {METADATA_FILE}: not written by openmm_cmt export_generator")


def check_compatible(metadata: dict, system: openmm.System, topology=None) -> None:
    """Raise ValueError unless ``system`` (and ``topology``, if given) has the exported
    atom count and order (per-particle masses, elements and atom names) and the bond
    constraints the generator holds fixed."""
    n = system.getNumParticles()
    if n != metadata["n_atoms"]:
        raise ValueError(f"the generator was exported for {metadata['n_atoms']} atoms, the System has {n} particles")
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)])
    expected = np.array(metadata["masses_dalton"])
    wrong = np.flatnonzero(np.abs(masses - expected) > _MASS_TOLERANCE)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(
            f"atom order differs from the exported generator: particle {i} has mass {masses[i]:.3f} Da, "
            f"the generator expects {metadata['elements'][i]} ({expected[i]:.3f} Da); {wrong.size} particles differ"
        )
    check_constraints(system, {(int(i), int(j)): float(d) for i, j, d in metadata.get("constraints", [])})
    if topology is not None:
        if topology.getNumAtoms() != n:
            raise ValueError(f"the topology has {topology.getNumAtoms()} atoms, the System {n} particles")
        for i, atom in enumerate(topology.atoms()):
            element = atom.element.symbol if atom.element is not None else "X"
            if element != metadata["elements"][i] or atom.name != metadata["atom_names"][i]:
                raise ValueError(
                    f"atom order differs from the exported generator: atom {i} is {atom.name} ({element}), "
                    f"the generator expects {metadata['atom_names'][i]} ({metadata['elements'][i]})"
                )


def load_generator(path, system: openmm.System | None = None, topology=None, device="cpu") -> torch.jit.ScriptModule:
    """The scripted module of an exported file (``forward``, ``sample``, ``log_prob``),
    checked against ``system`` and ``topology`` when given."""
    metadata = read_metadata(path)
    if system is not None:
        check_compatible(metadata, system, topology)
    return torch.jit.load(os.fspath(path), map_location=device)


def load_generator_force(path, system: openmm.System | None = None, topology=None):
    """An ``openmmtorch.TorchForce`` adding E_BG from an exported file, checked against
    ``system`` (and ``topology``) when given. Needs openmm-torch."""
    metadata = read_metadata(path)
    if system is not None:
        check_compatible(metadata, system, topology)
    from openmm_cmt._openmmtorch import load_openmmtorch

    openmmtorch = load_openmmtorch()
    return openmmtorch.TorchForce(os.fspath(path))


class GeneratorForceComputation:
    """The ``compute(state) -> (energy, forces)`` of ``generator_python_force``.

    Picklable: it carries the TorchScript archive as bytes and loads it on first use, so a
    System holding the PythonForce serialises with ``XmlSerializer``.
    """

    def __init__(self, archive: bytes):
        self.archive = bytes(archive)
        self._module = None

    @property
    def module(self):
        if self._module is None:
            self._module = torch.jit.load(io.BytesIO(self.archive), map_location="cpu")
        return self._module

    def __call__(self, state):
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        x = torch.tensor(np.asarray(pos), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            energy = self.module(x)
            (grad,) = torch.autograd.grad(energy, x)
        return float(energy.detach()), (-grad).detach().numpy()

    def __getstate__(self):
        return {"archive": self.archive}

    def __setstate__(self, state):
        self.archive = state["archive"]
        self._module = None


def generator_python_force(path_or_module, system: openmm.System | None = None, topology=None) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` adding E_BG(x) = -kT log q(x) (kJ/mol, forces by autograd);
    needs no openmm-torch.

    Parameters
    ----------
    path_or_module
        an exported file, or a scripted ``GeneratorEnergy``.
    system, topology
        checked against the file's metadata when given.
    """
    if isinstance(path_or_module, (str, os.PathLike)):
        metadata = read_metadata(path_or_module)
        if system is not None:
            check_compatible(metadata, system, topology)
        with open(os.fspath(path_or_module), "rb") as f:
            archive = f.read()
    elif isinstance(path_or_module, torch.jit.ScriptModule):
        n = getattr(path_or_module, "n_atoms", None)
        if system is not None and n != system.getNumParticles():
            raise ValueError(f"the generator module has {n} atoms, the System has {system.getNumParticles()} particles")
        buffer = io.BytesIO()
        torch.jit.save(path_or_module, buffer)
        archive = buffer.getvalue()
    else:
        raise TypeError(
            "expected the path of an exported generator or a scripted GeneratorEnergy, got "
            f"{type(path_or_module).__name__} (export a Generator with export_generator first)"
        )
    return openmm.PythonForce(GeneratorForceComputation(archive))
