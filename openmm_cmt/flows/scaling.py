r"""Harmonic scaling of the internal coordinates around the minimum-energy structure.

The prior q_0 of a Boltzmann generator decides how far CMT has to transport mass. With
fixed widths (every bond +-0.04 nm, every angle +-0.6 rad, every improper uniform on the
circle) q_0 is tens of nats of entropy away from the Boltzmann distribution and most of
its samples clash. Here the target itself sets the widths: from the curvature of the
reduced energy u = E/kT along each internal coordinate at the reference structure,

.. math::
    c_i = \partial^2 u / \partial q_i^2 \approx
          \frac{u(q + h e_i) - 2 u(q) + u(q - h e_i)}{h^2},
    \qquad s_i = c_i^{-1/2},

(2D + 1 energy evaluations by central differences, through a reduced-energy callable
that the caller supplies), each bounded coordinate gets
the interval ``ref +- clip(width_factor * s_i, floor, cap)``. ``s_i`` is the width of
the conditional harmonic distribution, which underestimates the marginal width when
coordinates couple, hence the generous ``width_factor`` (support of about ten
conditional standard deviations). Improper dihedrals (a Z-matrix row whose dihedral
reference is bonded to its bond reference: a branch on the same centre) are stiff and
become bounded around their reference value too. Proper torsions stay circular
(uniform), so no rotamer or backbone basin is cut away, except torsions about amide
C-N bonds (the peptide bond): their cis and trans forms are separate isomers (barrier
near 80 kJ/mol) that a simulation at 300 K never interconverts, so, as for a
stereocentre, the generator keeps the isomer of the reference structure. (A curvature
threshold cannot make this choice: with the other ICs held fixed, phi and psi look as
stiff as the peptide bond, because turning them swings a whole branch into clashes.) Stereocentres keep the half-range of
their chirality, intersected with the interval.
"""

from __future__ import annotations

import copy
import math
from typing import List, Tuple

import numpy as np
import torch

from openmm_cmt.flows.coupling import BOUNDED, CIRCULAR

#: (floor, cap) of the half-widths per coordinate type (nm for bonds, rad otherwise).
BOND_RANGE = (0.01, 0.04)
ANGLE_RANGE = (0.1, 0.6)
IMPROPER_RANGE = (0.3, 1.2)
#: Finite-difference steps per coordinate type.
STEPS = {"bond": 1e-4, "angle": 1e-3, "dihedral": 1e-3}


def amide_torsions(transform, bonds: np.ndarray, elements) -> np.ndarray:
    """Indices (into the IC vector) of proper dihedrals about an amide C-N bond, the C
    carrying a carbonyl O (an O with no other bond)."""
    neighbours: dict = {}
    for i, j in bonds:
        neighbours.setdefault(int(i), set()).add(int(j))
        neighbours.setdefault(int(j), set()).add(int(i))

    def carbonyl_carbon(c):
        return elements[c] == "C" and any(
            elements[o] == "O" and len(neighbours.get(o, ())) == 1 for o in neighbours.get(c, ())
        )

    z = transform.zmatrix.cpu().numpy()
    dihedral_idx = transform.dihedral_indices.cpu().numpy()
    out = []
    for k, (a, b, c, d) in enumerate(z[3:]):
        if c not in neighbours.get(int(b), ()) or d not in neighbours.get(int(c), ()):
            continue
        pair = {elements[b], elements[c]}
        if pair == {"C", "N"} and (carbonyl_carbon(b) if elements[b] == "C" else carbonyl_carbon(c)):
            out.append(int(dihedral_idx[k]))
    return np.array(out, dtype=np.int64)


def improper_dihedrals(transform, bonds: np.ndarray) -> np.ndarray:
    """Indices (into the IC vector) of the dihedrals that are impropers: Z-matrix rows
    (a, b, c, d) whose dihedral reference d is bonded to b rather than to c."""
    bonded = {(int(i), int(j)) for i, j in bonds} | {(int(j), int(i)) for i, j in bonds}
    z = transform.zmatrix.cpu().numpy()
    dihedral_idx = transform.dihedral_indices.cpu().numpy()
    out = [int(dihedral_idx[k]) for k, (a, b, c, d) in enumerate(z[3:]) if (d, b) in bonded and (d, c) not in bonded]
    return np.array(out, dtype=np.int64)


def ic_curvatures(transform, reduced_energy, fixed=None) -> np.ndarray:
    """Diagonal curvature d^2 u / dq_i^2 of the reduced energy at the reference ICs,
    by central differences (2D + 1 evaluations).

    ``reduced_energy``: a callable mapping float64 positions ``[B, n_atoms, 3]`` (nm,
    numpy) to reduced energies u = E/kT ``[B]``, e.g. an energy engine's
    ``reduced_energy``. ``fixed``: optional ``(indices, values)`` of constrained bond
    ICs; the reference point holds them at their values and they get no curvature (``nan``).
    """
    if not callable(reduced_energy):
        raise TypeError(
            "reduced_energy must be a callable mapping positions [B, n_atoms, 3] (nm) to u = E/kT [B], "
            f"got {type(reduced_energy).__name__}"
        )
    t = copy.deepcopy(transform).double()  # the caller's transform keeps its dtype
    ref = t.reference_ic.detach().double().clone()
    dim = ref.numel()
    held = torch.zeros(dim, dtype=torch.bool)
    if fixed is not None and len(fixed[0]):
        idx = torch.as_tensor(np.asarray(fixed[0]), dtype=torch.long)
        ref[idx] = torch.as_tensor(np.asarray(fixed[1]), dtype=torch.float64)
        held[idx] = True
    varied = torch.nonzero(~held).flatten()
    h = torch.full((dim,), STEPS["dihedral"], dtype=torch.float64)
    h[t.bond_indices] = STEPS["bond"]
    h[t.angle_indices] = STEPS["angle"]
    step = torch.diag(h)[varied]
    points = torch.cat([ref[None], ref + step, ref - step])
    with torch.no_grad():
        x, _ = t.to_cartesian(points)
    u = np.asarray(reduced_energy(x.numpy()), dtype=np.float64)
    if u.shape != (points.shape[0],):
        raise ValueError(f"reduced_energy must return shape ({points.shape[0]},), got {u.shape}")
    k = len(varied)
    out = np.full(dim, np.nan)
    out[varied.numpy()] = (u[1 : k + 1] - 2.0 * u[0] + u[k + 1 :]) / h[varied].numpy() ** 2
    return out


def harmonic_scaling(transform, reduced_energy, bonds: np.ndarray, elements, width_factor: float = 10.0, fixed=None) -> Tuple[List[int], torch.Tensor, torch.Tensor]:
    """Kinds, centres and half-widths of every IC (module docstring), float64.

    ``reduced_energy``: the target's u(x) as for :func:`ic_curvatures`.
    ``fixed``: optional ``(indices, values)`` of constrained bond ICs (held at their
    values, not differentiated; their entries are placeholders for the caller to drop).
    """
    if not width_factor > 0:
        raise ValueError(f"width_factor must be positive, got {width_factor}")
    ref = transform.reference_ic.detach().to(torch.float64).cpu()
    curvature = torch.as_tensor(ic_curvatures(transform, reduced_energy, fixed))
    # A non-positive curvature (reference not exactly at a minimum) gets the cap, as do
    # the held ICs (nan).
    s = torch.where(curvature > 0, curvature.clamp(min=1e-12).rsqrt(), torch.full_like(curvature, math.inf))
    half = width_factor * s
    centre = ref.clone()
    kinds = [CIRCULAR] * ref.numel()
    for idx, (lo, hi) in ((transform.bond_indices, BOND_RANGE), (transform.angle_indices, ANGLE_RANGE)):
        idx = idx.cpu()
        half[idx] = half[idx].clamp(lo, hi)
        for i in idx.tolist():
            kinds[i] = BOUNDED
    angles = transform.angle_indices.cpu()
    # Angles stay inside (0, pi): shrink the interval symmetrically where needed.
    margin = 0.05
    half[angles] = torch.minimum(half[angles], torch.minimum(ref[angles] - margin, math.pi - margin - ref[angles]))
    bonds_idx = transform.bond_indices.cpu()
    half[bonds_idx] = torch.minimum(half[bonds_idx], 0.8 * ref[bonds_idx])
    impropers = set(improper_dihedrals(transform, bonds).tolist()) | set(amide_torsions(transform, bonds, elements).tolist())
    chiral = {int(i): k for k, i in enumerate(transform.chiral_dihedrals.cpu().tolist())}
    chiral_bounds = transform.chiral_bounds.detach().to(torch.float64).cpu()
    circular_mask = transform.circular.cpu()
    for i in transform.dihedral_indices.cpu().tolist():
        if i in impropers or i in chiral or not bool(circular_mask[i]):
            w = float(half[i].clamp(*IMPROPER_RANGE))
            lo, hi = -w, w
            if i in chiral:
                # Relative to the reference, the chirality half-range is (low - ref, high - ref).
                lo = max(lo, float(chiral_bounds[chiral[i], 0] - ref[i]))
                hi = min(hi, float(chiral_bounds[chiral[i], 1] - ref[i]))
            centre[i] = ref[i] + 0.5 * (lo + hi)
            half[i] = 0.5 * (hi - lo)
            kinds[i] = BOUNDED
        else:
            centre[i], half[i] = 0.0, 1.0
    return kinds, centre, half
