"""Bonded terms: harmonic bonds and angles, periodic, Ryckaert-Bellemans and CMAP torsions.

Each class is a TorchScript-able ``nn.Module`` with ``forward(x[B, N, 3]) -> E[B]``
(kJ/mol, float64); each ``build_*`` reads the matching OpenMM force and returns None
when it holds no interactions. A force that uses periodic boundary conditions measures
its geometry between minimum images in the System's box.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from openmm_cmt.energy.torch_energy._params import force_box, index_buffer, real_buffer
from openmm_cmt.energy.torch_energy.geometry import angle, attach_box, dihedral, distance, energy_sum
from openmm_cmt.units import md_value


class HarmonicBond(nn.Module):
    r""":math:`E = \sum_b \tfrac12 k_b (r_b - r_{0,b})^2`."""

    def __init__(self, i, j, length, k, box=None):
        super().__init__()
        attach_box(self, box)
        self.register_buffer("i", i)
        self.register_buffer("j", j)
        self.register_buffer("length", length)
        self.register_buffer("k", k)
        self.work_elements = 4 * len(i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = distance(x, self.i, self.j, self.box if self.periodic else None)
        return energy_sum(0.5 * self.k * (r - self.length) ** 2)


class HarmonicAngle(nn.Module):
    r""":math:`E = \sum_a \tfrac12 k_a (\theta_a - \theta_{0,a})^2`."""

    def __init__(self, i, j, k, theta0, force_constant, box=None):
        super().__init__()
        attach_box(self, box)
        self.register_buffer("i", i)
        self.register_buffer("j", j)
        self.register_buffer("k", k)
        self.register_buffer("theta0", theta0)
        self.register_buffer("force_constant", force_constant)
        self.work_elements = 9 * len(i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = angle(x, self.i, self.j, self.k, self.box if self.periodic else None)
        return energy_sum(0.5 * self.force_constant * (theta - self.theta0) ** 2)


class _Dihedrals(nn.Module):
    """Holds the distinct atom quadruples of a torsion force: each dihedral is computed
    once, however many Fourier terms share it (Amber lists up to four per quadruple)."""

    def __init__(self, quads: np.ndarray, box=None):
        super().__init__()
        attach_box(self, box)
        unique, which = np.unique(quads.reshape(-1, 4), axis=0, return_inverse=True)
        for n, name in enumerate("ijkl"):
            self.register_buffer(name, index_buffer(unique[:, n]))
        self.register_buffer("which", index_buffer(which))

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """Dihedral of every listed torsion, [B, M]."""
        box = self.box if self.periodic else None
        return dihedral(x, self.i, self.j, self.k, self.l, box).index_select(1, self.which)


class PeriodicTorsion(nn.Module):
    r""":math:`E = \sum_t k_t (1 + \cos(n_t \phi_t - \phi_{0,t}))`."""

    def __init__(self, quads: np.ndarray, periodicity, phase, k, box=None):
        super().__init__()
        self.dihedrals = _Dihedrals(quads, box)
        self.register_buffer("periodicity", periodicity)
        self.register_buffer("phase", phase)
        self.register_buffer("k", k)
        self.work_elements = 12 * len(quads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.dihedrals.phi(x)
        return energy_sum(self.k * (1.0 + torch.cos(self.periodicity * phi - self.phase)))


class RBTorsion(nn.Module):
    r"""Ryckaert-Bellemans: :math:`E = \sum_t \sum_{n=0}^5 C_{t,n} \cos^n(\phi_t - \pi)`."""

    def __init__(self, quads: np.ndarray, c, box=None):
        super().__init__()
        self.dihedrals = _Dihedrals(quads, box)
        self.register_buffer("c", c)  # [M, 6]
        self.work_elements = 16 * len(quads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        psi = -torch.cos(self.dihedrals.phi(x))  # cos(phi - pi)
        e = self.c[:, 5]
        for n in range(4, -1, -1):  # Horner
            e = e * psi + self.c[:, n]
        return energy_sum(e)


class CMAPTorsion(nn.Module):
    r"""CMAP correction: a bicubic patch of a periodic energy grid per pair of dihedrals.

    With the angles wrapped to [0, 2 pi), grid spacing :math:`\delta = 2\pi/s`, patch
    :math:`(p, q) = (\lfloor\phi_A/\delta\rfloor, \lfloor\phi_B/\delta\rfloor)` and
    local coordinates :math:`u = \phi_A/\delta - p`, :math:`v = \phi_B/\delta - q`:
    :math:`E = \sum_{m,n=0}^{3} c_{pq,mn} u^m v^n`. The coefficients (see
    ``cmap_coefficients``) are those OpenMM's ``CMAPTorsionForceImpl`` derives.
    """

    def __init__(self, quads_a: np.ndarray, quads_b: np.ndarray, patch_offset, size, coefficients, box=None):
        super().__init__()
        self.dihedrals_a = _Dihedrals(quads_a, box)
        self.dihedrals_b = _Dihedrals(quads_b, box)
        self.register_buffer("patch_offset", patch_offset)  # [M] int64: first patch of the torsion's map
        self.register_buffer("size", size)  # [M] int64 grid points per angle
        self.register_buffer("coefficients", coefficients)  # [patches, 4, 4]
        self.work_elements = 80 * len(quads_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        two_pi = 2.0 * math.pi
        delta = two_pi / self.size.to(x.dtype)
        a = torch.remainder(self.dihedrals_a.phi(x), two_pi) / delta
        b = torch.remainder(self.dihedrals_b.phi(x), two_pi) / delta
        top = self.size - 1
        p = torch.minimum(a.floor().to(torch.int64), top)
        q = torch.minimum(b.floor().to(torch.int64), top)
        c = self.coefficients[self.patch_offset + p * self.size + q]  # [B, M, 4, 4]
        u = a - p.to(a.dtype)
        v = b - q.to(b.dtype)
        # Horner in u of polynomials in v
        e = torch.zeros_like(u)
        for m in range(3, -1, -1):
            row = c[..., m, :]
            poly = ((row[..., 3] * v + row[..., 2]) * v + row[..., 1]) * v + row[..., 0]
            e = e * u + poly
        return energy_sum(e)


def _periodic_spline_slopes(y: np.ndarray, h: float) -> np.ndarray:
    """First derivatives at the knots of the C2 periodic cubic splines through the rows
    of ``y`` ([K, n], uniform spacing ``h``): solve the cyclic system
    :math:`M_{j-1} + 4M_j + M_{j+1} = 6(y_{j+1} - 2y_j + y_{j-1})/h^2` for the second
    derivatives, then :math:`y'_j = (y_{j+1}-y_j)/h - h(2M_j + M_{j+1})/6`."""
    n = y.shape[-1]
    eye = np.eye(n)
    cyclic = 4 * eye + np.roll(eye, 1, axis=1) + np.roll(eye, -1, axis=1)
    nxt, prv = np.roll(y, -1, axis=-1), np.roll(y, 1, axis=-1)
    curvature = np.linalg.solve(cyclic, (6.0 * (nxt - 2 * y + prv) / h**2).T).T
    return (nxt - y) / h - h * (2 * curvature + np.roll(curvature, -1, axis=-1)) / 6.0


def _bicubic_inverse() -> np.ndarray:
    """Maps the 16 corner data of a unit patch to its 16 coefficients c[m*4+n] of
    u^m v^n. Corner data: values, d/du, d/dv, d2/dudv, each at (0,0), (1,0), (1,1), (0,1)."""

    def monomial(power, order, t):  # d^order/dt^order of t^power, order 0 or 1
        if order == 0:
            return t**power
        return power * t ** (power - 1) if power > 0 else 0.0

    rows = []
    for du, dv in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        for u, v in [(0, 0), (1, 0), (1, 1), (0, 1)]:
            rows.append([monomial(m, du, u) * monomial(n, dv, v) for m in range(4) for n in range(4)])
    return np.linalg.inv(np.array(rows, dtype=np.float64))


def cmap_coefficients(size: int, energy: np.ndarray) -> np.ndarray:
    """Bicubic coefficients ``[size*size, 4, 4]`` (patch p*size+q, then u power, v power)
    of a periodic CMAP grid with ``energy[p + size*q]`` at angles (p*delta, q*delta).

    As OpenMM: slopes along each angle and the cross slope (along the first angle of the
    slopes along the second) from periodic cubic splines, then bicubic Hermite patches.
    """
    if size < 3 or len(energy) != size * size:
        raise ValueError(f"a CMAP map needs size >= 3 and size*size energies, got size {size}, {len(energy)} values")
    h = 2 * math.pi / size
    grid = np.asarray(energy, dtype=np.float64).reshape(size, size).T  # grid[p, q]
    d1 = _periodic_spline_slopes(grid.T, h).T  # along p
    d2 = _periodic_spline_slopes(grid, h)  # along q
    d12 = _periodic_spline_slopes(d2.T, h).T
    nxt = lambda g: np.roll(g, -1, axis=0)  # noqa: E731
    nxq = lambda g: np.roll(g, -1, axis=1)  # noqa: E731
    data = []
    for g, scale in [(grid, 1.0), (d1, h), (d2, h), (d12, h * h)]:
        data += [g * scale, nxt(g) * scale, nxq(nxt(g)) * scale, nxq(g) * scale]
    rhs = np.stack(data, axis=-1).reshape(size * size, 16)
    return (rhs @ _bicubic_inverse().T).reshape(size * size, 4, 4)


def build_harmonic_bond(force, system, dtype):
    rows = [force.getBondParameters(n) for n in range(force.getNumBonds())]
    if not rows:
        return None
    return HarmonicBond(
        index_buffer([r[0] for r in rows]),
        index_buffer([r[1] for r in rows]),
        real_buffer([md_value(r[2]) for r in rows], dtype),
        real_buffer([md_value(r[3]) for r in rows], dtype),
        force_box(force, system),
    )


def build_harmonic_angle(force, system, dtype):
    rows = [force.getAngleParameters(n) for n in range(force.getNumAngles())]
    if not rows:
        return None
    return HarmonicAngle(
        *(index_buffer([r[c] for r in rows]) for c in range(3)),
        real_buffer([md_value(r[3]) for r in rows], dtype),
        real_buffer([md_value(r[4]) for r in rows], dtype),
        force_box(force, system),
    )


def build_periodic_torsion(force, system, dtype):
    rows = [force.getTorsionParameters(n) for n in range(force.getNumTorsions())]
    if not rows:
        return None
    return PeriodicTorsion(
        np.array([r[:4] for r in rows], dtype=np.int64),
        real_buffer([r[4] for r in rows], dtype),
        real_buffer([md_value(r[5]) for r in rows], dtype),
        real_buffer([md_value(r[6]) for r in rows], dtype),
        force_box(force, system),
    )


def build_rb_torsion(force, system, dtype):
    rows = [force.getTorsionParameters(n) for n in range(force.getNumTorsions())]
    if not rows:
        return None
    return RBTorsion(
        np.array([r[:4] for r in rows], dtype=np.int64),
        real_buffer([[md_value(c) for c in r[4:10]] for r in rows], dtype),
        force_box(force, system),
    )


def build_cmap_torsion(force, system, dtype):
    if force.getNumTorsions() == 0:
        return None
    offsets, sizes, blocks, start = [], [], [], 0
    for m in range(force.getNumMaps()):
        size, energy = force.getMapParameters(m)
        blocks.append(cmap_coefficients(size, [md_value(e) for e in energy]))
        offsets.append(start)
        sizes.append(size)
        start += size * size
    rows = [force.getTorsionParameters(n) for n in range(force.getNumTorsions())]
    maps = [r[0] for r in rows]
    return CMAPTorsion(
        np.array([r[1:5] for r in rows], dtype=np.int64),
        np.array([r[5:9] for r in rows], dtype=np.int64),
        index_buffer([offsets[m] for m in maps]),
        index_buffer([sizes[m] for m in maps]),
        real_buffer(np.concatenate(blocks), dtype),
        force_box(force, system),
    )
