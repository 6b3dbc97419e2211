r"""The Boltzmann generator of a molecule: prior -> spline flow -> scaled ICs -> positions.

Pipeline (``latent_to_positions``), all maps bijective on their supports:

    z ~ prior                       [B, D], D = 3N - 6 - m, kinds per dimension
    y = flow(z)                     spline coupling flow, same kinds
    ic_free = centre + half_width * y    affine per dimension (identity on circular ones)
    ic = (ic_free, constrained bond lengths)   [B, 3N - 6]
    x = to_cartesian(ic)            ``InternalCoordinateTransform``, canonical frame

For a System with m bond-length constraints (``constraints=HBonds`` or ``AllBonds``),
each constrained bond is a Z-matrix bond held at the System's distance and is not a
flow coordinate (:mod:`openmm_cmt.coordinates.constraints`); without constraints m = 0.

Dimension kinds and the IC scaling (``from_system``, settings in
:class:`~openmm_cmt.flows.config.GeneratorConfig`), around the reference structure
(the MolecularSystem's positions, a minimum):

* bonds: BOUNDED, ``[b_ref - bond_width, b_ref + bond_width]`` (low end at least
  ``b_ref / 5``) mapped to ``[-1, 1]``;
* angles: BOUNDED, ``[a_ref - angle_width, a_ref + angle_width]`` cut to
  ``[ANGLE_MARGIN, pi - ANGLE_MARGIN]`` (never reaching 0 or pi) mapped to ``[-1, 1]``;
* chiral dihedrals (and methyl-permutation impropers): BOUNDED, their half-range
  ``(0, pi)`` or ``(-pi, 0)`` mapped to ``[-1, 1]``, so generated stereocentres keep the
  reference handedness by construction (TA-BG's scheme);
* other dihedrals: CIRCULAR on ``[-pi, pi)``, unscaled.

The prior is uniform on the torus for circular dimensions and (default) a normal of
standard deviation ``prior_sigma`` truncated to ``[-1, 1]`` for bounded ones (TA-BG).

Density contract. With ``log_det_ic(x) = log|d ic / dx|`` from
``InternalCoordinateTransform.to_internal`` (its docstring defines the measure: Cartesian
volume modulo rigid motions, ``dx = exp(-log_det_ic) dt dR d(ic)``),

    log_prob(x) = log p_z(z) + log|det dz/dy| - sum_{bounded} log half_width + log_det_ic(x)

is a density of x with respect to ``dx / (dt dR)``: invariant to rotation and
translation of x. With constraints, the bounded/log_det terms run over the free ICs and

    log_prob(x) = ... + log_det_ic(x) - 0.5 log det G_M(x)

is a density with respect to the mass-weighted surface measure sigma_M of the
constraint manifold (modulo rigid motions), the measure on which constrained MD samples
exp(-u) (derivation in :mod:`openmm_cmt.coordinates.constraints`; ``metric`` computes
0.5 log det G_M). Positions whose constrained bonds deviate from their distances by more
than ``CONSTRAINT_TOLERANCE`` (relative) are outside the support. Therefore, with
u = E / kT,

    w(x) = exp(-u(x) - log_prob(x)),   x ~ sample(n),

are correct (unnormalised) importance weights for the Boltzmann distribution of the
internal degrees of freedom; self-normalised averages need no further factor (the
constant rigid-motion volume cancels). ``sample`` returns positions in the canonical
frame of the transform: the Z-matrix's row-0 atom at the origin, the row-1 atom on the
+x axis, the row-2 atom in the xy-plane with y > 0. Positions outside the support (a
bounded coordinate beyond its interval by more than ``SUPPORT_TOLERANCE`` in scaled
units, a flipped stereocentre, coincident atoms, non-finite values) get
``log_prob = -inf``, never NaN; within the tolerance they are clamped to the boundary.
"""

import dataclasses
import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from openmm_cmt.coordinates.constraints import ConstraintMetric
from openmm_cmt.flows.config import GeneratorConfig
from openmm_cmt.flows.coupling import BOUNDED, CIRCULAR, SplineFlow
from openmm_cmt.flows.priors import IndependentPrior

#: Closest an angle's interval comes to 0 or pi (rad): the IC map is singular there.
ANGLE_MARGIN = 0.05
#: Scaled coordinates up to this far outside [-1, 1] count as inside (float rounding
#: of a Cartesian round trip) and are clamped; beyond it the density is 0.
SUPPORT_TOLERANCE = 1e-4
#: Relative deviation of a constrained bond from its distance beyond which positions lie
#: off the constraint manifold (density 0). Loose enough for positions written to a PDB
#: file (1e-4 nm rounding on a 0.1 nm X-H bond), tight against unconstrained samples.
CONSTRAINT_TOLERANCE = 5e-3


class Generator(nn.Module):
    """Normalizing flow over the internal coordinates of one molecule (module docstring).

    Build with ``Generator.from_system``. TorchScript-able (``torch.jit.script``). The
    constructor takes the flow, prior, IC transform, per-dimension IC centres and
    half-widths (over the free ICs), temperature, elements and atom names, and for a
    constrained System ``fixed_ics`` (bond indices into the IC vector), ``fixed_values``
    (their lengths, nm) and ``metric`` (a ``ConstraintMetric`` of the same bonds).

    Attributes
    ----------
    n_atoms, dim
        atoms and flow dimensions (3N - 6 minus the constrained bonds).
    n_constraints
        constrained bonds held at fixed lengths.
    fixed_ics, constraint_lengths, constraint_pairs
        their IC indices, distances (nm) and atom pairs.
    metric
        ``ConstraintMetric``, 0.5 log det G_M of the constraints.
    temperature
        K, the MolecularSystem's.
    elements, atom_names
        per atom, in the System's order.
    build_config
        the ``GeneratorConfig`` it was built with, flow size filled in,
        as a dict (rebuild with ``from_system(molsys, GeneratorConfig(**build_config))``,
        then ``load_state_dict``).
    """

    __jit_ignored_attributes__ = ["build_config"]

    n_atoms: int
    dim: int
    n_constraints: int
    temperature: float
    support_tolerance: float
    constraint_tolerance: float
    elements: List[str]
    atom_names: List[str]

    def __init__(
        self,
        flow: SplineFlow,
        prior: IndependentPrior,
        transform: nn.Module,
        ic_centre: torch.Tensor,
        ic_half_width: torch.Tensor,
        temperature: float,
        elements: List[str],
        atom_names: List[str],
        fixed_ics: Optional[torch.Tensor] = None,
        fixed_values: Optional[torch.Tensor] = None,
        metric: Optional[nn.Module] = None,
    ):
        super().__init__()
        n_ic = int(transform.dim)
        fixed = torch.zeros(0, dtype=torch.long)
        if fixed_ics is not None:
            fixed = torch.as_tensor(fixed_ics, dtype=torch.long).cpu()
        values = torch.zeros(0, dtype=torch.float64) if fixed_values is None else torch.as_tensor(fixed_values).cpu()
        if fixed.dim() != 1 or values.shape != fixed.shape:
            raise ValueError("fixed_ics and fixed_values must be 1-D and of the same length")
        is_bond = torch.zeros(n_ic, dtype=torch.bool)
        is_bond[transform.bond_indices.cpu()] = True
        if fixed.numel() and (len(set(fixed.tolist())) != fixed.numel() or not bool(is_bond[fixed].all())):
            raise ValueError("fixed_ics must be distinct bond indices of the IC vector")
        if not bool((values > 0).all()):
            raise ValueError("fixed bond lengths must be positive (nm)")
        free_mask = torch.ones(n_ic, dtype=torch.bool)
        free_mask[fixed] = False
        free = torch.nonzero(free_mask).flatten()
        dim = int(free.numel())
        kinds = flow.kinds
        if prior.dim != dim or flow.dim != dim or ic_centre.shape != (dim,) or ic_half_width.shape != (dim,):
            raise ValueError(
                f"flow, prior and IC scaling must all have {dim} dimensions "
                f"(3N - 6 = {n_ic} minus {fixed.numel()} constrained bonds)"
            )
        if not torch.equal(kinds.cpu(), prior.kinds.cpu()):
            raise ValueError("flow and prior disagree on the dimension kinds")
        if not bool((ic_half_width > 0).all()):
            raise ValueError("IC half-widths must be positive")
        if len(elements) != transform.n_atoms or len(atom_names) != transform.n_atoms:
            raise ValueError(f"elements and atom_names need one entry per atom ({transform.n_atoms})")
        if metric is None:
            metric = ConstraintMetric(torch.zeros(0, 2, dtype=torch.long), torch.ones(int(transform.n_atoms)))
        if int(metric.n_constraints) != fixed.numel():
            raise ValueError(f"the metric has {metric.n_constraints} constraints, fixed_ics {fixed.numel()}")
        self.flow = flow
        self.prior = prior
        self.transform = transform
        self.metric = metric
        self.n_atoms = int(transform.n_atoms)
        self.dim = dim
        self.n_constraints = int(fixed.numel())
        self.temperature = float(temperature)
        self.elements = list(elements)
        self.atom_names = list(atom_names)
        self.build_config: dict = {}
        self.support_tolerance = SUPPORT_TOLERANCE
        self.constraint_tolerance = CONSTRAINT_TOLERANCE
        bounded = kinds == BOUNDED
        self.register_buffer("bounded", bounded)
        # Bounded dihedrals are scaled relative to their centre modulo 2 pi, so that an
        # interval may straddle +-pi.
        is_dihedral = torch.zeros(n_ic, dtype=torch.bool)
        is_dihedral[transform.dihedral_indices.cpu()] = True
        self.register_buffer("wrapped", bounded.cpu() & is_dihedral[free])
        self.register_buffer("ic_centre", ic_centre.to(torch.get_default_dtype()))
        self.register_buffer("ic_half_width", ic_half_width.to(torch.get_default_dtype()))
        # Constraint data are rebuilt from the System, so checkpoints need not carry them.
        # float64 at first, so that a generator moved to float64 holds the exact lengths.
        self.register_buffer("free_ics", free, persistent=False)
        self.register_buffer("fixed_ics", fixed.clone(), persistent=False)
        self.register_buffer("fixed_values", values.to(torch.float64), persistent=False)
        # (ic_free, fixed values) concatenated, then gathered into IC-vector order.
        self.register_buffer("_ic_order", torch.argsort(torch.cat([free, fixed])), persistent=False)
        self.register_buffer("constraint_lengths", values.to(torch.float64), persistent=False)
        self.register_buffer("constraint_pairs", metric.pair_atoms.clone(), persistent=False)

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_system(cls, molsys, config: Optional[GeneratorConfig] = None, *, zmatrix=None) -> "Generator":
        """A fresh generator for ``molsys`` (an ``openmm_cmt.systems.MolecularSystem``).

        Parameters
        ----------
        config
            the architecture and IC scaling (``GeneratorConfig``; default
            ``GeneratorConfig()``).
        zmatrix
            optional ``[N, 4]`` Z-matrix overriding ``build_zmatrix``.

        Raises
        ------
        ValueError
            For a System it would sample wrongly
            (:func:`openmm_cmt.systems.support.check_supported`: periodic, explicit
            solvent, virtual sites, Drude/AMOEBA) and for constraints that are not
            Z-matrix bonds.

        Notes
        -----
        A fresh flow is the identity, so the generator starts as its prior. Its
        ``build_config`` is ``config`` with the flow size filled in, as a dict.
        """
        from openmm_cmt.coordinates import InternalCoordinateTransform
        from openmm_cmt.coordinates.graph import as_molecule_graph
        from openmm_cmt.systems.support import check_supported

        check_supported(molsys.system, molsys.topology)
        config = GeneratorConfig() if config is None else config
        if not isinstance(config, GeneratorConfig):
            raise ValueError(f"config must be a GeneratorConfig, got {type(config).__name__}")
        c = config.sized()
        if zmatrix is None:
            transform = InternalCoordinateTransform.from_topology(
                molsys.topology, molsys.positions, fix_methyl_permutation=c.fix_methyl_permutation
            )
        else:
            transform = InternalCoordinateTransform(
                zmatrix, molsys.positions, as_molecule_graph(molsys.topology), c.fix_methyl_permutation
            )
        fixed, lengths, metric = _constraints_of(molsys, transform)
        if c.scaling == "fixed":
            kinds, centre, half_width = ic_scaling(transform, c.bond_width, c.angle_width)
        elif c.scaling == "harmonic":
            from openmm_cmt.energy.openmm_energy import OpenMMEnergy
            from openmm_cmt.flows.scaling import harmonic_scaling

            graph = as_molecule_graph(molsys.topology)
            # Exact energies in-process: a worker pool would cost more to start than 2D + 1 evaluations.
            with OpenMMEnergy(molsys, platform="Reference", n_workers=0) as engine:
                kinds, centre, half_width = harmonic_scaling(
                    transform, engine.reduced_energy, graph.bonds, graph.elements, c.width_factor, fixed=(fixed, lengths)
                )
        else:
            raise ValueError(f"scaling must be 'fixed' or 'harmonic', got {c.scaling!r}")
        held = set(fixed.tolist())
        free = [i for i in range(transform.dim) if i not in held]
        kinds = [kinds[i] for i in free]
        centre, half_width = centre[free], half_width[free]
        if len(free) < 2:
            raise ValueError(
                f"{molsys.name}: only {len(free)} internal coordinate(s) remain free after {len(fixed)} "
                "constrained bonds; a coupling flow needs at least 2"
            )
        flow = SplineFlow(kinds, c.n_layers, c.hidden, c.depth, c.n_bins, c.masking, c.torsion_shifts, seed=c.seed)
        generator = cls(
            flow,
            IndependentPrior(kinds, bounded=c.prior, sigma=c.prior_sigma),
            transform,
            centre,
            half_width,
            molsys.temperature,
            list(molsys.elements),
            [atom.name for atom in molsys.topology.atoms()],
            torch.as_tensor(fixed),
            torch.as_tensor(lengths),
            metric,
        )
        generator.build_config = dataclasses.asdict(c)
        return generator

    # -- maps ------------------------------------------------------------------------

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.latent_to_positions(z)

    @torch.jit.export
    def latent_to_positions(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Latent ``z [B, D]`` -> (positions ``[B, N, 3]`` nm in the canonical frame,
        ``log_det [B]``) with ``log_prob(x) = prior_log_prob(z) - log_det``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError("latent must have shape [batch, " + str(self.dim) + "], got " + str(list(z.shape)))
        y, logdet_flow = self.flow(z)
        ic = self.ic_centre + self.ic_half_width * y
        ic = torch.where(self.wrapped, torch.remainder(ic + math.pi, 2.0 * math.pi) - math.pi, ic)
        if self.n_constraints > 0:
            fixed = self.fixed_values.to(ic.dtype).expand(ic.shape[0], self.n_constraints)
            ic = torch.cat([ic, fixed], dim=1)[:, self._ic_order]
        x, logdet_ic = self.transform.to_cartesian(ic)
        return x, logdet_flow + self._log_scale() + logdet_ic + self.metric(x)

    @torch.jit.export
    def positions_to_latent(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Positions ``[B, N, 3]`` -> (latent ``z [B, D]``, ``log|dz/dx| [B]``, with
        ``log_prob(x) = prior_log_prob(z) + log_det``). Out-of-support rows get log_det
        ``-inf`` (and a finite placeholder z)."""
        ic, logdet_ic = self.transform.to_internal(x)
        outside = ~torch.isfinite(logdet_ic)
        if self.n_constraints > 0:
            lengths = self.fixed_values.to(ic.dtype)
            deviation = (ic[:, self.fixed_ics] - lengths).abs()
            outside = outside | (deviation > self.constraint_tolerance * lengths).any(1)
            ic = ic[:, self.free_ics]
        y = self.scaled_coordinates(ic)
        outside = outside | (self.bounded & (y.abs() > 1.0 + self.support_tolerance)).any(1)
        outside = outside | ~torch.isfinite(y).all(1)
        # Zero the rejected rows before the flow so that no NaN reaches the gradients.
        y = torch.where(outside.unsqueeze(1), torch.zeros_like(y), y)
        y = torch.where(self.bounded, torch.clamp(y, -1.0, 1.0), y)
        z, logdet_flow = self.flow.inverse(y)
        logdet_x = logdet_ic - self.metric(x)
        logdet = torch.where(outside, torch.zeros_like(logdet_x), logdet_x) + logdet_flow - self._log_scale()
        return z, torch.where(outside, torch.full_like(logdet, -math.inf), logdet)

    @torch.jit.export
    def scaled_coordinates(self, ic: torch.Tensor) -> torch.Tensor:
        """Free internal coordinates ``[B, D]`` -> the flow's data space: the offset from
        ``ic_centre`` (torsions wrapped into ``[-pi, pi)``) over ``ic_half_width``, so that
        bounded dimensions inside their interval lie in ``[-1, 1]``."""
        delta = ic - self.ic_centre
        delta = torch.where(self.wrapped, torch.remainder(delta + math.pi, 2.0 * math.pi) - math.pi, delta)
        return delta / self.ic_half_width

    @torch.jit.export
    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[n, D]`` draws from the prior, from ``generator`` (default: torch's global RNG)."""
        return self.prior.sample(n, generator)

    @torch.jit.export
    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prob(z)

    @torch.jit.export
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, N, 3] nm, log_q [n])``; reparameterised (differentiable w.r.t. the
        flow parameters). Draws from ``generator`` (a ``torch.Generator`` on the
        generator's device; default: torch's global RNG)."""
        z = self.prior.sample(n, generator)
        x, logdet = self.latent_to_positions(z)
        return x, self.prior.log_prob(z) - logdet

    @torch.jit.export
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)`` in nats, ``[B]`` for ``x [B, N, 3]`` nm (module docstring)."""
        z, logdet = self.positions_to_latent(x)
        return self.prior.log_prob(z) + logdet

    def _log_scale(self) -> torch.Tensor:
        return torch.where(self.bounded, torch.log(self.ic_half_width), torch.zeros_like(self.ic_half_width)).sum()

    @torch.jit.unused
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.jit.unused
    def compile_regions(self) -> List[Tuple[nn.Module, str]]:
        """The coupling layers of the spline flow (``SplineFlow.compile_regions``) and
        both directions of the internal-coordinate transform."""
        return self.flow.compile_regions() + [(self.transform, "to_internal"), (self.transform, "to_cartesian")]


def ic_scaling(transform, bond_width: float, angle_width: float) -> Tuple[List[int], torch.Tensor, torch.Tensor]:
    """Kinds, centres and half-widths of every IC (module docstring), float64.

    Needs ``transform.reference_ic`` (a transform built with reference positions).
    """
    reference = transform.reference_ic.detach().to(torch.float64).cpu()
    if reference.numel() != transform.dim:
        raise ValueError("the IC transform needs reference positions to scale the ICs around")
    low = torch.empty_like(reference)
    high = torch.empty_like(reference)
    bonds = transform.bond_indices.cpu()
    angles = transform.angle_indices.cpu()
    dihedrals = transform.dihedral_indices.cpu()
    low[bonds] = torch.maximum(reference[bonds] - bond_width, reference[bonds] / 5.0)
    high[bonds] = reference[bonds] + bond_width
    low[angles] = torch.clamp(reference[angles] - angle_width, min=ANGLE_MARGIN)
    high[angles] = torch.clamp(reference[angles] + angle_width, max=math.pi - ANGLE_MARGIN)
    if bool((low[angles] >= high[angles]).any()):
        raise ValueError("a reference angle lies within ANGLE_MARGIN of 0 or pi; the structure is degenerate")
    low[dihedrals] = -math.pi
    high[dihedrals] = math.pi
    chiral = transform.chiral_dihedrals.cpu()
    if chiral.numel():
        bounds = transform.chiral_bounds.detach().to(torch.float64).cpu()
        low[chiral] = bounds[:, 0]
        high[chiral] = bounds[:, 1]
    circular = transform.circular.cpu()
    kinds = [CIRCULAR if bool(c) else BOUNDED for c in circular]
    centre = torch.where(circular, torch.zeros_like(reference), 0.5 * (low + high))
    half_width = torch.where(circular, torch.ones_like(reference), 0.5 * (high - low))
    return kinds, centre, half_width


def _constraints_of(molsys, transform):
    """(IC indices, lengths, ``ConstraintMetric``) of the System's bond constraints, in
    IC order; raises ValueError for a constraint that is not a Z-matrix bond."""
    from openmm_cmt.coordinates.constraints import constrained_ics, system_constraints

    names = [atom.name for atom in molsys.topology.atoms()]
    fixed, lengths = constrained_ics(transform.zmatrix.cpu().numpy(), system_constraints(molsys.system), names)
    z = transform.zmatrix.cpu().numpy()
    pairs = [(int(z[i + 1, 0]), int(z[i + 1, 1])) for i in fixed.tolist()]  # bond IC i is row i + 1
    return fixed, lengths, ConstraintMetric(np.array(pairs, dtype=np.int64).reshape(-1, 2), molsys.masses)
