r"""GBSAOBCForce: OBC generalized Born (type II) with OpenMM's ACE surface-area term.

Onufriev, Bashford and Case, Proteins 55, 383 (2004), with the HCT pairwise descreening
integral (Hawkins, Cramer and Truhlar, J. Phys. Chem. 100, 19824 (1996)) as OpenMM's
reference platform evaluates it (including Tinker's correction for an atom engulfed by
another's scaled sphere). With :math:`\rho_i = R_i - 0.009` nm and
:math:`s_j = \mathrm{scale}_j \rho_j`, for every ordered pair with
:math:`\rho_i < r + s_j`, :math:`L = \max(\rho_i, |r - s_j|)`, :math:`U = r + s_j`:

.. math::
    I_{ij} = \tfrac12\Big[\frac1L - \frac1U + \frac r4\Big(\frac1{U^2} - \frac1{L^2}\Big)
        + \frac{1}{2r}\ln\frac LU + \frac{s_j^2}{4r}\Big(\frac1{L^2} - \frac1{U^2}\Big)
        + 2\Big(\frac1{\rho_i} - \frac1L\Big)[\rho_i < s_j - r]\Big],

:math:`\psi_i = \rho_i \sum_j I_{ij}`, Born radius
:math:`B_i = 1/(1/\rho_i - \tanh(\psi_i - 0.8\psi_i^2 + 4.85\psi_i^3)/R_i)`. Energy:

.. math::
    E = -\frac{1}{4\pi\epsilon_0}\Big(\frac1{\epsilon_{in}} - \frac1{\epsilon_{out}}\Big)
        \Big[\sum_i \frac{q_i^2}{2B_i} + \sum_{i<j} q_i q_j
        \Big(\frac{1}{f_{ij}} - \frac{[\mathrm{cutoff}]}{r_c}\Big)\Big]
      + 4\pi\gamma \sum_i (R_i + 0.14)^2 (R_i/B_i)^6,

:math:`f_{ij} = \sqrt{r^2 + B_iB_j\exp(-r^2/4B_iB_j)}`, :math:`\gamma` the surface-area
energy. With a cutoff, pairs farther apart than :math:`r_c` are left out of both the
Born sums and the pair energy; CutoffPeriodic measures distances between minimum images
in the System's box.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from openmm_cmt.energy.torch_energy._params import index_buffer, periodic_box, real_buffer
from openmm_cmt.energy.torch_energy.geometry import attach_box, distance, energy_sum
from openmm_cmt.energy.torch_energy.nonbonded import ONE_4PI_EPS0
from openmm_cmt.units import md_value

DIELECTRIC_OFFSET = 0.009  # nm
PROBE_RADIUS = 0.14  # nm
ALPHA, BETA, GAMMA = 1.0, 0.8, 4.85  # OBC type II


class GBSAOBC(nn.Module):
    """OBC2 polar solvation plus ACE non-polar term; see the module docstring.

    Distances are computed once per unordered pair; the Born sums use the ordered-pair
    layout ``[B, N, N-1]`` (partners of atom i in row i), reduced without scatter.
    """

    def __init__(self, charge, radius, scale, prefactor: float, surface_energy: float, cutoff: float, box=None):
        super().__init__()
        attach_box(self, box)
        n = len(charge)
        i, j = np.triu_indices(n, k=1)
        self.register_buffer("i", index_buffer(i))
        self.register_buffer("j", index_buffer(j))
        # ordered pair (a, b), a != b, in row-major [N, N-1] order -> its unordered pair index
        pair_of = np.zeros((n, n), dtype=np.int64)
        pair_of[i, j] = np.arange(len(i))
        pair_of[j, i] = np.arange(len(i))
        # partners of a: 0..n-1 without a (column c holds c for c < a, c + 1 from a on)
        column = np.arange(n - 1)[None, :]
        partner = (column + (column >= np.arange(n)[:, None])).astype(np.int64).reshape(n, n - 1)
        self.register_buffer("ordered", index_buffer(pair_of[np.arange(n)[:, None], partner]))
        rho = radius - DIELECTRIC_OFFSET
        self.register_buffer("radius", real_buffer(radius, charge.dtype))
        self.register_buffer("rho", real_buffer(rho, charge.dtype))
        self.register_buffer("scaled_partner", real_buffer((scale * rho)[partner], charge.dtype))  # s_j, [N, N-1]
        self.register_buffer("charge", charge)
        self.register_buffer("qq", charge[self.i] * charge[self.j])
        self.register_buffer("ace", real_buffer(4 * np.pi * surface_energy * (radius + PROBE_RADIUS) ** 2,
                                                charge.dtype))
        self.alpha, self.beta, self.gamma = ALPHA, BETA, GAMMA
        self.prefactor = float(prefactor)
        self.cutoff = float(cutoff)  # inf: no cutoff
        self.n_atoms = n
        self.work_elements = 40 * n * (n - 1)

    def born_radii(self, r_pair: torch.Tensor) -> torch.Tensor:
        """Born radii [B, N] from the unordered pair distances [B, P]."""
        n = self.n_atoms
        r = r_pair.index_select(1, self.ordered).reshape(r_pair.shape[0], n, n - 1)
        rho = self.rho.unsqueeze(-1)
        s = self.scaled_partner
        upper = r + s
        lower = torch.maximum(rho.expand_as(r), torch.abs(r - s))  # >= rho > 0: finite even when unused
        inv_l, inv_u, inv_r = 1.0 / lower, 1.0 / upper, 1.0 / r
        term = (inv_l - inv_u + 0.25 * r * (inv_u * inv_u - inv_l * inv_l) + 0.5 * inv_r * torch.log(lower / upper)
                + 0.25 * s * s * inv_r * (inv_l * inv_l - inv_u * inv_u))
        term = term + torch.where(rho < s - r, 2.0 * (1.0 / rho - inv_l), torch.zeros_like(r))
        active = rho < upper
        if self.cutoff < float("inf"):
            active = active & (r <= self.cutoff)
        psi = 0.5 * self.rho * torch.where(active, term, torch.zeros_like(r)).sum(-1)
        tanh = torch.tanh(psi * (self.alpha + psi * (-self.beta + self.gamma * psi)))
        return 1.0 / (1.0 / self.rho - tanh / self.radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = distance(x, self.i, self.j, self.box if self.periodic else None)
        born = self.born_radii(r)
        ace = energy_sum(torch.where(born > 0, self.ace * (self.radius / born) ** 6, torch.zeros_like(born)))
        self_energy = energy_sum(0.5 * self.prefactor * self.charge * self.charge / born)
        bb = born.index_select(1, self.i) * born.index_select(1, self.j)
        f = torch.sqrt(r * r + bb * torch.exp(-r * r / (4.0 * bb)))
        pair = self.prefactor * self.qq / f
        if self.cutoff < float("inf"):
            inside = r <= self.cutoff
            pair = torch.where(inside, pair - self.prefactor * self.qq / self.cutoff, torch.zeros_like(pair))
        return ace + self_energy + energy_sum(pair)


def build_gbsa_obc(force, system, dtype):
    method = force.getNonbondedMethod()
    n = force.getNumParticles()
    if n == 0:
        return None
    params = np.array([[md_value(v) for v in force.getParticleParameters(k)] for k in range(n)], dtype=np.float64)
    charge, radius, scale = params.T
    small = np.flatnonzero(radius <= DIELECTRIC_OFFSET)
    if len(small):
        raise ValueError(f"GBSAOBCForce radii must exceed the dielectric offset {DIELECTRIC_OFFSET} nm; "
                         f"particles {small[:10].tolist()} have radii {radius[small[:10]].tolist()}")
    solute, solvent = force.getSoluteDielectric(), force.getSolventDielectric()
    prefactor = -ONE_4PI_EPS0 * (1.0 / solute - 1.0 / solvent) if solute != 0 and solvent != 0 else 0.0
    cutoff = md_value(force.getCutoffDistance()) if method != force.NoCutoff else float("inf")
    box = periodic_box(system, cutoff, "GBSAOBCForce") if method == force.CutoffPeriodic else None
    return GBSAOBC(real_buffer(charge, dtype), radius, scale, prefactor, md_value(force.getSurfaceAreaEnergy()), cutoff,
                   box)
