r"""Many independent copies of one molecule in a single OpenMM System.

A molecule with ``NoCutoff`` forces is copied ``n_copies`` times onto a 3-D grid of
points ``spacing`` nm apart. Every pairwise force gets a ``CutoffNonPeriodic`` cutoff
that is longer than the molecule and shorter than the gap between copies, so that

.. math::
    E_\mathrm{replicated}(x_1, \dots, x_n) = \sum_c E(x_c)

exactly, as long as every copy stays smaller than the cutoff and near its grid point.
One Context then integrates all copies at once: the way to run many
MD chains on one GPU. A Context returns only the total energy, so per-copy energies
come from an energy engine, not from here.
"""

from __future__ import annotations

import math

import numpy as np
import openmm
from openmm import unit

from openmm_cmt import units

#: 1/(4 pi eps0) in kJ nm / (mol e^2), the constant OpenMM's NonbondedForce uses.
ONE_4PI_EPS0 = 138.935456

_COULOMB_LJ = "138.935456*qq/r + 4*eps*((sig/r)^12 - (sig/r)^6)"
_PAIR = _COULOMB_LJ + "; qq=q1*q2; sig=0.5*(sigma1+sigma2); eps=sqrt(epsilon1*epsilon2)"

#: Forces that carry no potential energy and are dropped.
_DROPPED = (openmm.CMMotionRemover,)


def grid_offsets(n_copies: int, spacing: float = 5.0) -> np.ndarray:
    """Grid points ``[n_copies, 3]`` in nm: the first ``n_copies`` points of the
    smallest cube of side ``ceil(n^(1/3))``, shifted so that the cube is centred on the
    origin (the CPU platform stores coordinates in float32; a long line loses digits)."""
    if n_copies < 1:
        raise ValueError(f"n_copies must be >= 1, got {n_copies}")
    side = max(1, math.ceil(round(n_copies ** (1.0 / 3.0), 9)))
    while side**3 < n_copies:
        side += 1
    idx = np.arange(n_copies)
    ijk = np.stack([idx // (side * side), (idx // side) % side, idx % side], axis=1).astype(np.float64)
    return (ijk - 0.5 * (side - 1)) * spacing


def max_pair_distance(positions: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Largest intramolecular distance of each copy, ``[n_copies]`` nm, for positions
    ``[n_copies, n_atoms, 3]``."""
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    out = np.empty(x.shape[0])
    for s in range(0, x.shape[0], chunk):
        xc = x[s : s + chunk]
        d2 = ((xc[:, :, None, :] - xc[:, None, :, :]) ** 2).sum(-1)
        out[s : s + chunk] = np.sqrt(d2.reshape(xc.shape[0], -1).max(1))
    return out


def check_geometry(positions: np.ndarray, offsets: np.ndarray, spacing: float, cutoff: float) -> None:
    """Raise ValueError unless the replicated energy is exact for ``positions``
    ``[n_copies, n_atoms, 3]`` (absolute, i.e. with the grid offsets added).

    Exact means: every intramolecular pair lies inside the cutoff, and no two copies
    come within the cutoff of each other. For the second, copy ``c`` is bounded by a
    sphere of radius ``s_c`` (its farthest atom) about its grid point; copies ``a, b``
    are safe when ``s_a + s_b + cutoff`` is less than the distance of their grid points.
    """
    x = np.asarray(positions, dtype=np.float64)
    # the diameter is at most twice the largest distance from the centroid: exact
    # pairwise distances only for copies where that bound reaches the cutoff
    radius = np.sqrt(((x - x.mean(axis=1, keepdims=True)) ** 2).sum(-1)).max(1)
    suspect = 2.0 * radius >= cutoff
    extent = float(max_pair_distance(x[suspect]).max()) if suspect.any() else 0.0
    if extent >= cutoff:
        raise ValueError(
            f"a copy spans {extent:.3f} nm, not less than the cutoff {cutoff} nm: replicated energies "
            "would drop intramolecular pairs; increase the cutoff (and the spacing)"
        )
    reach = np.sqrt(((x - offsets[:, None, :]) ** 2).sum(-1)).max(1)
    if 2.0 * reach.max() + cutoff < spacing:
        return
    message = (
        "copies drifted within the cutoff of each other (an atom lies {:.3f} nm from its grid point, "
        f"spacing {spacing} nm, cutoff {cutoff} nm): increase the spacing or re-centre more often"
    ).format(float(reach.max()))
    if 2.0 * reach.max() + cutoff >= 2.0 * spacing:
        raise ValueError(message)
    # Only neighbouring grid points (Chebyshev distance 1) can be too close now.
    ijk = np.rint((offsets - offsets.min(0)) / spacing).astype(int) + 1
    size = tuple(ijk.max(0) + 2)
    grid = np.full(size, -np.inf)
    grid[tuple(ijk.T)] = reach
    inner = grid[1:-1, 1:-1, 1:-1]
    for shift in np.ndindex(3, 3, 3):
        d = np.array(shift) - 1
        if tuple(d) <= (0, 0, 0):  # each unordered pair once
            continue
        other = grid[1 + d[0] : size[0] - 1 + d[0], 1 + d[1] : size[1] - 1 + d[1], 1 + d[2] : size[2] - 1 + d[2]]
        if np.any(inner + other + cutoff >= spacing * np.linalg.norm(d)):
            raise ValueError(message)


def replicate_system(
    system: openmm.System,
    n_copies: int,
    spacing: float = 5.0,
    cutoff: float = 1.5,
    positions=None,
) -> tuple[openmm.System, np.ndarray]:
    """One System holding ``n_copies`` non-interacting copies of ``system``.

    Parameters
    ----------
    system
        a molecule whose pairwise forces use ``NoCutoff``. Supported forces:
        HarmonicBond/Angle, PeriodicTorsion, RBTorsion, CMAPTorsion, CustomBond,
        CustomAngle, CustomTorsion, CustomCompoundBond (copied with index offsets);
        NonbondedForce (becomes a CustomNonbondedForce with Coulomb and Lorentz-
        Berthelot LJ plus a CustomBondForce for its exceptions); CustomNonbonded
        and CustomGBForce (copied term by term); GBSAOBCForce (converted to the
        equivalent CustomGBForce). CMMotionRemover is dropped.
    n_copies
        number of copies; copy ``c`` holds particles ``c*N .. c*N + N-1``.
    spacing
        grid spacing in nm.
    cutoff
        nm, for every pairwise force; must exceed the molecule's extent and be
        below ``spacing`` minus the extent.
    positions
        optional single-molecule positions ``[N, 3]`` nm; when given, the
        geometry is checked with :func:`check_geometry`.

    Returns
    -------
    (replicated_system, offsets) : tuple
        ``offsets [n_copies, 3]`` are the grid points in nm; place copy ``c`` at
        ``x_c + offsets[c]``.
    """
    if not cutoff > 0 or not spacing > cutoff:
        raise ValueError(f"need 0 < cutoff < spacing, got cutoff={cutoff}, spacing={spacing}")
    n = system.getNumParticles()
    offsets = grid_offsets(n_copies, spacing)
    if positions is not None:
        x = units.nanometers(positions)
        if x.shape != (n, 3):
            raise ValueError(f"positions must have shape ({n}, 3), got {x.shape}")
        centred = x - x.mean(0)
        check_geometry(centred[None] + offsets[:1, None, :], offsets[:1], spacing, cutoff)

    out = openmm.System()
    for _ in range(n_copies):
        for i in range(n):
            if system.isVirtualSite(i):
                raise ValueError(f"particle {i} is a virtual site; replicate_system does not support virtual sites")
            out.addParticle(system.getParticleMass(i))
    for c in range(n_copies):
        for k in range(system.getNumConstraints()):
            i, j, d = system.getConstraintParameters(k)
            out.addConstraint(i + c * n, j + c * n, d)
    if system.usesPeriodicBoundaryConditions():
        raise ValueError("replicate_system needs a non-periodic System (NoCutoff forces)")

    for force in system.getForces():
        if isinstance(force, _DROPPED):
            continue
        for new in _replicate_force(force, n, n_copies, cutoff):
            new.setForceGroup(force.getForceGroup())
            out.addForce(new)
    return out, offsets


def _clone(force):
    return openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(force))


# type -> (count, get, add) for forces whose entries are (particles..., parameters...)
_BONDED = {
    openmm.HarmonicBondForce: ("getNumBonds", "getBondParameters", "addBond", 2),
    openmm.HarmonicAngleForce: ("getNumAngles", "getAngleParameters", "addAngle", 3),
    openmm.PeriodicTorsionForce: ("getNumTorsions", "getTorsionParameters", "addTorsion", 4),
    openmm.RBTorsionForce: ("getNumTorsions", "getTorsionParameters", "addTorsion", 4),
    openmm.CustomBondForce: ("getNumBonds", "getBondParameters", "addBond", 2),
    openmm.CustomAngleForce: ("getNumAngles", "getAngleParameters", "addAngle", 3),
    openmm.CustomTorsionForce: ("getNumTorsions", "getTorsionParameters", "addTorsion", 4),
}


def _replicate_force(force, n: int, n_copies: int, cutoff: float) -> list:
    for cls, (count, get, add, n_idx) in _BONDED.items():
        if type(force) is cls:
            new = _clone(force)
            for c in range(1, n_copies):
                for k in range(getattr(force, count)()):
                    entry = list(getattr(force, get)(k))
                    idx = [p + c * n for p in entry[:n_idx]]
                    getattr(new, add)(*idx, *entry[n_idx:])
            return [new]
    if isinstance(force, openmm.CMAPTorsionForce):
        new = _clone(force)
        for c in range(1, n_copies):
            for k in range(force.getNumTorsions()):
                m, *atoms = force.getTorsionParameters(k)
                new.addTorsion(m, *[a + c * n for a in atoms])
        return [new]
    if isinstance(force, openmm.CustomCompoundBondForce):
        new = _clone(force)
        for c in range(1, n_copies):
            for k in range(force.getNumBonds()):
                particles, params = force.getBondParameters(k)
                new.addBond([p + c * n for p in particles], params)
        return [new]
    if isinstance(force, openmm.NonbondedForce):
        return _replicate_nonbonded(force, n, n_copies, cutoff)
    if isinstance(force, openmm.CustomNonbondedForce):
        return [_replicate_custom_nonbonded(force, n, n_copies, cutoff)]
    if isinstance(force, openmm.CustomGBForce):
        return [_replicate_custom_gb(force, n, n_copies, cutoff)]
    if isinstance(force, openmm.GBSAOBCForce):
        return [_replicate_custom_gb(obc_as_custom_gb(force), n, n_copies, cutoff)]
    raise ValueError(
        f"replicate_system does not support {type(force).__name__}; supported: "
        + ", ".join(sorted(c.__name__ for c in _BONDED))
        + ", CMAPTorsionForce, CustomCompoundBondForce, NonbondedForce, CustomNonbondedForce, "
        "CustomGBForce, GBSAOBCForce, CMMotionRemover (dropped)"
    )


def _require_no_cutoff(force, no_cutoff) -> None:
    if force.getNonbondedMethod() != no_cutoff:
        raise ValueError(
            f"{type(force).__name__} must use NoCutoff to be replicated (it uses method "
            f"{force.getNonbondedMethod()})"
        )


def _replicate_nonbonded(force: openmm.NonbondedForce, n: int, n_copies: int, cutoff: float) -> list:
    _require_no_cutoff(force, openmm.NonbondedForce.NoCutoff)
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise ValueError("NonbondedForce parameter offsets are not supported by replicate_system")
    pair = openmm.CustomNonbondedForce(_PAIR)
    for name in ("q", "sigma", "epsilon"):
        pair.addPerParticleParameter(name)
    pair.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    pair.setCutoffDistance(cutoff)
    pair.setUseSwitchingFunction(False)
    pair.setUseLongRangeCorrection(False)
    params = [
        [v.value_in_unit_system(unit.md_unit_system) for v in force.getParticleParameters(i)] for i in range(n)
    ]
    exceptions = []
    for k in range(force.getNumExceptions()):
        i, j, qq, sig, eps = force.getExceptionParameters(k)
        qq, sig, eps = (v.value_in_unit_system(unit.md_unit_system) for v in (qq, sig, eps))
        exceptions.append((i, j, qq, sig, eps))
    pairs14 = openmm.CustomBondForce(_COULOMB_LJ)
    for name in ("qq", "sig", "eps"):
        pairs14.addPerBondParameter(name)
    for c in range(n_copies):
        for p in params:
            pair.addParticle(p)
        for i, j, qq, sig, eps in exceptions:
            pair.addExclusion(i + c * n, j + c * n)
            if qq != 0.0 or eps != 0.0:
                pairs14.addBond(i + c * n, j + c * n, [qq, sig, eps])
    return [pair, pairs14] if pairs14.getNumBonds() else [pair]


def _replicate_custom_nonbonded(force, n: int, n_copies: int, cutoff: float):
    _require_no_cutoff(force, openmm.CustomNonbondedForce.NoCutoff)
    new = _clone(force)
    new.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    new.setCutoffDistance(cutoff)
    new.setUseSwitchingFunction(False)
    _add_copies(force, new, n, n_copies)
    for g in range(force.getNumInteractionGroups()):
        set1, set2 = force.getInteractionGroupParameters(g)
        grow = lambda s: sorted(p + c * n for c in range(n_copies) for p in s)  # noqa: E731
        new.setInteractionGroupParameters(g, grow(set1), grow(set2))
    return new


def _replicate_custom_gb(force, n: int, n_copies: int, cutoff: float):
    _require_no_cutoff(force, openmm.CustomGBForce.NoCutoff)
    new = _clone(force)
    new.setNonbondedMethod(openmm.CustomGBForce.CutoffNonPeriodic)
    new.setCutoffDistance(cutoff)
    _add_copies(force, new, n, n_copies)
    return new


def _add_copies(force, new, n: int, n_copies: int) -> None:
    """Append the particles and exclusions of copies 1..n_copies-1 of a per-particle force."""
    for c in range(1, n_copies):
        for i in range(n):
            new.addParticle(force.getParticleParameters(i))
        for k in range(force.getNumExclusions()):
            i, j = force.getExclusionParticles(k)
            new.addExclusion(i + c * n, j + c * n)


def obc_as_custom_gb(force: openmm.GBSAOBCForce) -> openmm.CustomGBForce:
    r"""The OBC2 generalised-Born model of a ``GBSAOBCForce`` as a ``CustomGBForce``.

    Onufriev, Bashford and Case, Proteins 55, 383 (2004), with OpenMM's constants:
    offset radii :math:`\rho_i = r_i - 0.009`, scaled radii :math:`s_i \rho_i`, Born
    radii :math:`B_i = 1 / (1/\rho_i - \tanh(\psi - 0.8\psi^2 + 4.85\psi^3)/r_i)` with
    :math:`\psi = \rho_i I_i`; the ACE surface term
    :math:`4\pi\gamma (r_i + 0.14)^2 (r_i/B_i)^6`; the Still pair term with
    :math:`f = \sqrt{r^2 + B_i B_j e^{-r^2/(4 B_i B_j)}}`.
    """
    _require_no_cutoff(force, openmm.GBSAOBCForce.NoCutoff)
    pre = ONE_4PI_EPS0 * (1.0 / force.getSoluteDielectric() - 1.0 / force.getSolventDielectric())
    sa = 4.0 * math.pi * force.getSurfaceAreaEnergy().value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2)
    gb = openmm.CustomGBForce()
    for name in ("q", "or", "sr"):
        gb.addPerParticleParameter(name)
    # Descreening integral of sphere j (radius sr2) seen from i (radius or1); the last
    # term applies when i lies inside j's scaled sphere.
    gb.addComputedValue(
        "I",
        "step(r+sr2-or1)*0.5*(1/L-1/U+0.25*(r-sr2^2/r)*(1/(U^2)-1/(L^2))+0.5*log(L/U)/r"
        " + 2*(1/or1-1/L)*step(sr2-r-or1));"
        "U=r+sr2; L=max(or1, D); D=abs(r-sr2)",
        openmm.CustomGBForce.ParticlePairNoExclusions,
    )
    gb.addComputedValue(
        "B",
        "1/(1/or-tanh(psi-0.8*psi^2+4.85*psi^3)/radius); psi=I*or; radius=or+0.009",
        openmm.CustomGBForce.SingleParticle,
    )
    gb.addEnergyTerm(
        f"-0.5*{pre!r}*q^2/B + {sa!r}*(radius+0.14)^2*(radius/B)^6; radius=or+0.009",
        openmm.CustomGBForce.SingleParticle,
    )
    gb.addEnergyTerm(
        f"-{pre!r}*q1*q2/f; f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))",
        openmm.CustomGBForce.ParticlePairNoExclusions,
    )
    for i in range(force.getNumParticles()):
        q, r, s = force.getParticleParameters(i)
        q = q.value_in_unit(unit.elementary_charge)
        rho = r.value_in_unit(unit.nanometer) - 0.009
        gb.addParticle([q, rho, s * rho])
    return gb
