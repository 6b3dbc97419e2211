"""A trained generator as an OpenMM force: E_BG(x) = -kT log q(x).

The TorchScript file written by ``export_generator`` loads in ``openmmtorch.TorchForce``
(Reference, CPU and CUDA platforms): its ``forward(positions [n_atoms, 3] nm)`` returns
E_BG in kJ/mol, and OpenMM takes forces from its autograd gradient. It also carries
``sample(n)`` and ``log_prob(x)`` with the generator's density contract, and metadata
(atom count and order, elements, temperature, units, package version) both as scripted
attributes and as a JSON file inside the archive that ``read_metadata`` reads without
running any code.

TorchForce is deprecated upstream in favour of Python-side forces, so
``generator_python_force`` wraps the same module in an ``openmm.PythonForce``, which works
with any torch version and needs no openmm-torch.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import List, Tuple

import numpy as np
import torch
import openmm
from openmm import app, unit

import openmm_cmt
from openmm_cmt.checkpoint import atomic_write_bytes

METADATA_FILE = "openmm_cmt_metadata.json"


class GeneratorEnergy(torch.nn.Module):
    """E_BG(x) = -kT log q(x) in kJ/mol for one conformation, TorchForce-compatible."""

    n_atoms: int
    temperature: float
    kT: float
    elements: List[str]
    atom_names: List[str]
    length_unit: str
    energy_unit: str
    version: str

    def __init__(self, generator: torch.nn.Module, kT: float, elements: List[str], atom_names: List[str], temperature: float):
        super().__init__()
        self.generator = generator
        self.n_atoms = int(generator.n_atoms)
        self.temperature = float(temperature)
        self.kT = float(kT)
        self.elements = list(elements)
        self.atom_names = list(atom_names)
        self.length_unit = "nm"
        self.energy_unit = "kJ/mol"
        self.version = openmm_cmt.__version__

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.reshape(1, self.n_atoms, 3)
        log_q = self.generator.log_prob(x.to(self.param_dtype()))
        return (-self.kT * log_q[0]).to(positions.dtype)

    @torch.jit.export
    def param_dtype(self) -> torch.dtype:
        for p in self.generator.parameters():
            return p.dtype
        return torch.float64

    @torch.jit.export
    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.generator.sample(n)

    @torch.jit.export
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.log_prob(x.to(self.param_dtype()))


def export_generator(generator: torch.nn.Module, molsys, path) -> dict:
    """Script ``generator`` for ``molsys`` (a MolecularSystem) and write it to ``path``.

    Returns the metadata written into the file.
    """
    was_training = generator.training
    generator.eval()
    module = GeneratorEnergy(
        generator, molsys.kT, molsys.elements, [a.name for a in molsys.topology.atoms()], molsys.temperature
    )
    scripted = torch.jit.script(module)
    metadata = {
        "n_atoms": molsys.n_atoms,
        "elements": molsys.elements,
        "atom_names": [a.name for a in molsys.topology.atoms()],
        "masses_dalton": molsys.masses.tolist(),
        "temperature_K": molsys.temperature,
        "kT_kJ_per_mol": molsys.kT,
        "units": {"length": "nm", "energy": "kJ/mol", "log_prob": "nats"},
        "forward": "E_BG(x) = -kT log q(x), positions [n_atoms, 3] in nm",
        "system": molsys.name,
        "openmm_cmt_version": openmm_cmt.__version__,
        "torch_version": torch.__version__,
    }
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: json.dumps(metadata)})
    atomic_write_bytes(path, buffer.getvalue())
    generator.train(was_training)
    return metadata


def read_metadata(path) -> dict:
    """The metadata of an exported file, read from the archive without loading code."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("extra/" + METADATA_FILE):
                    return json.loads(archive.read(name))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a TorchScript archive: {err}") from err
    raise ValueError(f"{path} has no {METADATA_FILE}: not written by openmm_cmt.export_generator")


def check_compatible(metadata: dict, system: openmm.System, topology: app.Topology | None = None) -> None:
    """Raise ValueError unless ``system`` (and ``topology``) has the exported atom count and order."""
    n = system.getNumParticles()
    if n != metadata["n_atoms"]:
        raise ValueError(f"the generator was exported for {metadata['n_atoms']} atoms, the System has {n}")
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)])
    expected = np.array(metadata["masses_dalton"])
    wrong = np.flatnonzero(np.abs(masses - expected) > 1e-3)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(
            f"atom order differs from the exported generator: particle {i} has mass {masses[i]:.3f} Da, "
            f"the generator expects {metadata['elements'][i]} ({expected[i]:.3f} Da); {wrong.size} particles differ"
        )
    if topology is not None:
        elements = [a.element.symbol if a.element is not None else "X" for a in topology.atoms()]
        if elements != metadata["elements"]:
            raise ValueError("topology element order differs from the exported generator's")


def load_generator_force(path, system: openmm.System | None = None, topology=None):
    """An ``openmmtorch.TorchForce`` from an exported file, checked against ``system``."""
    metadata = read_metadata(path)
    if system is not None:
        check_compatible(metadata, system, topology)
    from openmm_cmt._openmmtorch import load_openmmtorch

    openmmtorch = load_openmmtorch()
    return openmmtorch.TorchForce(os.fspath(path))


def generator_python_force(path_or_module, system: openmm.System | None = None) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` adding E_BG(x) = -kT log q(x); needs no openmm-torch."""
    if isinstance(path_or_module, (str, os.PathLike)):
        metadata = read_metadata(path_or_module)
        if system is not None:
            check_compatible(metadata, system)
        module = torch.jit.load(os.fspath(path_or_module), map_location="cpu")
    else:
        module = path_or_module
    energy_unit = unit.kilojoule_per_mole
    force_unit = unit.kilojoule_per_mole / unit.nanometer

    def compute(state):
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        x = torch.tensor(np.asarray(pos), dtype=torch.float64, requires_grad=True)
        energy = module(x)
        (grad,) = torch.autograd.grad(energy, x)
        return float(energy) * energy_unit, (-grad).numpy() * force_unit

    return openmm.PythonForce(compute)
