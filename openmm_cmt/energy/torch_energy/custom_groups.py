r"""Custom forces over single particles, particle groups and donor-acceptor pairs.

As OpenMM's API documentation and Reference platform define them:

- CustomExternalForce: :math:`E = \sum_i f(x_i, y_i, z_i; p_i)` over the listed particles;
  ``periodicdistance`` measures between minimum images in the System's default box
  (which OpenMM uses too: the expression makes the force periodic).
- CustomCentroidBondForce: each group's centre is :math:`\sum_k w_k x_k / \sum_k w_k`
  (weights given, or the particle masses when none are); each bond is then a compound
  bond over group centres (``x1, y1, z1, ...``, ``distance(g1, g2)``, ``angle``,
  ``dihedral``, the point functions).
- CustomHbondForce: :math:`E = \sum f` over every (donor, acceptor) pair that is not
  excluded, with ``distance``, ``angle`` and ``dihedral`` of the particles ``d1 d2 d3 a1
  a2 a3`` and the donor's and acceptor's parameters; with a cutoff, pairs whose
  ``d1``-``a1`` distance is at least the cutoff contribute 0 (CutoffPeriodic: minimum
  images in the System's box).
- Periodic CustomCentroidBondForce: group centres of the coordinates as given, then
  minimum images between centres (as OpenMM's Reference platform).
"""

from typing import List

import numpy as np
import openmm
import torch
from torch import Tensor, nn

from openmm_cmt.energy.torch_energy._params import force_box, index_buffer, periodic_box, real_buffer
from openmm_cmt.energy.torch_energy.custom import (
    _compile,
    _globals,
    _param_matrix,
    _rows,
    compound_term,
)
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.energy.torch_energy.geometry import energy_sum, minimum_image
from openmm_cmt.energy.torch_energy.tabulated import tabulated_functions
from openmm_cmt.units import md_value


class CustomExternalTerm(nn.Module):
    r""":math:`E(x) = \sum_i f(x_i, y_i, z_i; p_i)` over the listed particles."""

    def __init__(self, particles: Tensor, params: Tensor, energy):
        super().__init__()
        self.register_buffer("particles", particles)  # [M]
        self.register_buffer("params", params)  # [P + 1, M]; the last row is zeros
        self.energy = energy
        self.work_elements = 8 * int(particles.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        p = x.index_select(1, self.particles)
        e = self.energy([p[:, :, 0], p[:, :, 1], p[:, :, 2]] + _rows(self.params))
        return energy_sum(torch.broadcast_to(e, p.shape[:2]))


class PeriodicDistance(nn.Module):
    """``periodicdistance(x1, y1, z1, x2, y2, z2)``: the distance between the minimum
    images of two points in the System's box, as a tabulated-function-like module."""

    def __init__(self, box):
        super().__init__()
        self.register_buffer("box", torch.as_tensor(box, dtype=torch.float64))

    def forward(self, args: List[Tensor]) -> Tensor:
        d = torch.stack(torch.broadcast_tensors(args[0] - args[3], args[1] - args[4], args[2] - args[5]), dim=-1)
        return torch.linalg.vector_norm(minimum_image(d, self.box), dim=-1)


def build_custom_external(force: openmm.CustomExternalForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    tables = tabulated_functions(force, dtype)
    if force.usesPeriodicBoundaryConditions():  # OpenMM's test: the expression names periodicdistance
        tables["periodicdistance"] = (PeriodicDistance(periodic_box(system, 0.0, "CustomExternalForce")), 6)
    names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
    rows = [force.getParticleParameters(i) for i in range(force.getNumParticles())]
    particles = index_buffer([r[0] for r in rows])
    params = _param_matrix([r[1] for r in rows], len(names), dtype)
    params = torch.cat([params, torch.zeros(1, len(rows), dtype=dtype)])
    energy = _compile(force.getEnergyFunction(), ["x", "y", "z"] + names + ["__particle"], _globals(force),
                      tables=tables)
    return CustomExternalTerm(particles, params, energy)


class CustomCentroidBondTerm(nn.Module):
    """Group centres from weighted particle positions, then a compound bond over them."""

    def __init__(self, atoms: Tensor, group_of: Tensor, weights: Tensor, n_groups: int, bonds: nn.Module):
        super().__init__()
        self.register_buffer("atoms", atoms)  # [K] particles of all groups, concatenated
        self.register_buffer("group_of", group_of)  # [K] their group
        self.register_buffer("weights", weights)  # [K] normalised within each group
        self.n_groups = int(n_groups)
        self.bonds = bonds
        self.work_elements = 6 * int(atoms.shape[0]) + int(bonds.work_elements)

    def forward(self, x: Tensor) -> Tensor:
        weighted = x.index_select(1, self.atoms) * self.weights.unsqueeze(-1)
        centres = torch.zeros(x.shape[0], self.n_groups, 3, dtype=x.dtype, device=x.device)
        return self.bonds(centres.index_add(1, self.group_of, weighted))


def build_custom_centroid_bond(force: openmm.CustomCentroidBondForce, system: openmm.System,
                               dtype: torch.dtype) -> nn.Module:
    atoms: List[int] = []
    group_of: List[int] = []
    weights: List[float] = []
    for g in range(force.getNumGroups()):
        particles, w = force.getGroupParameters(g)
        particles = list(particles)
        w = np.asarray(list(w), dtype=np.float64)
        if len(w) == 0:
            w = np.array([md_value(system.getParticleMass(p)) for p in particles], dtype=np.float64)
        total = w.sum()
        if len(particles) == 0 or total == 0.0:
            raise UnsupportedSystemError(f"group {g} has no particles or zero total weight")
        atoms += particles
        group_of += [g] * len(particles)
        weights += (w / total).tolist()
    k = force.getNumGroupsPerBond()
    names = [force.getPerBondParameterName(i) for i in range(force.getNumPerBondParameters())]
    rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
    groups = index_buffer([list(r[0]) for r in rows]).reshape(len(rows), k).T.contiguous()
    params = _param_matrix([r[1] for r in rows], len(names), dtype)
    bonds = compound_term(force, force.getEnergyFunction(), [f"g{n + 1}" for n in range(k)], groups, params, names,
                          dtype, box=force_box(force, system))
    return CustomCentroidBondTerm(index_buffer(atoms), index_buffer(group_of), real_buffer(weights, dtype),
                                  force.getNumGroups(), bonds)


def build_custom_hbond(force: openmm.CustomHbondForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    method = force.getNonbondedMethod()
    cutoff = md_value(force.getCutoffDistance()) if method != openmm.CustomHbondForce.NoCutoff else 0.0
    box = periodic_box(system, cutoff, "CustomHbondForce") if method == openmm.CustomHbondForce.CutoffPeriodic else None
    donor_names = [force.getPerDonorParameterName(i) for i in range(force.getNumPerDonorParameters())]
    acceptor_names = [force.getPerAcceptorParameterName(i) for i in range(force.getNumPerAcceptorParameters())]
    donors = [force.getDonorParameters(i) for i in range(force.getNumDonors())]
    acceptors = [force.getAcceptorParameters(i) for i in range(force.getNumAcceptors())]
    excluded = {tuple(force.getExclusionParticles(i)) for i in range(force.getNumExclusions())}
    pairs = [(d, a) for d in range(len(donors)) for a in range(len(acceptors)) if (d, a) not in excluded]
    # Slots a1, d1 first (the cutoff is on their distance); unused particles (-1) read
    # particle 0, which an expression that is valid for OpenMM never uses.
    atoms = [[max(acceptors[a][0], 0), max(donors[d][0], 0), max(acceptors[a][1], 0), max(acceptors[a][2], 0),
              max(donors[d][1], 0), max(donors[d][2], 0)] for d, a in pairs]
    params = [list(donors[d][3]) + list(acceptors[a][3]) for d, a in pairs]
    atoms = index_buffer(atoms).reshape(len(pairs), 6).T.contiguous()
    params = _param_matrix(params, len(donor_names) + len(acceptor_names), dtype)
    return compound_term(force, force.getEnergyFunction(), ["a1", "d1", "a2", "a3", "d2", "d3"], atoms, params,
                         donor_names + acceptor_names, dtype, coordinates=False, cutoff=cutoff, box=box)


GROUP_BUILDERS = {
    "CustomExternalForce": build_custom_external,
    "CustomCentroidBondForce": build_custom_centroid_bond,
    "CustomHbondForce": build_custom_hbond,
}
