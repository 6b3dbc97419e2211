r"""OpenMM's tabulated functions as TorchScript-able modules.

A Custom*Force may call tabulated functions by name in its expression. Each kind is
evaluated as OpenMM's Reference platform does (``ReferenceTabulatedFunction.cpp``,
``SplineFitter.cpp``), on the uniform grid :math:`x_k = x_{min} + k (x_{max} - x_{min})/(n-1)`:

- ``Continuous1DFunction``: the cubic spline through the values with second derivatives
  :math:`m_k` from the natural end conditions (:math:`m_0 = m_{n-1} = 0`) or, when
  periodic, from the cyclic system (the first and last values must be equal);
  :math:`f = a y_k + b y_{k+1} + ((a^3 - a) m_k + (b^3 - b) m_{k+1}) h^2/6`,
  :math:`a = (x_{k+1} - t)/h`, :math:`b = 1 - a`.
- ``Continuous2DFunction`` / ``Continuous3DFunction``: on each grid cell the bicubic
  (tricubic) polynomial that matches the value and the first and mixed partial
  derivatives at the cell's corners, the derivatives taken from one-dimensional splines
  along each axis in turn (the construction of Lekien and Marsden, Int. J. Numer. Meth.
  Eng. 63, 455 (2005), as OpenMM builds it). The polynomial is the tensor product of
  cubic Hermite bases, converted to monomial coefficients per cell.
- Outside ``[min, max]`` (on any axis) a continuous function is 0 with zero gradient;
  a periodic one first wraps its arguments into the range.
- ``Discrete1D/2D/3DFunction``: ``values[i + nx (j + ny k)]`` with each argument
  rounded to the nearest integer (halves away from zero) and clamped into the table;
  the gradient is 0.
"""

from typing import List

import numpy as np
import openmm
import torch
from torch import Tensor, nn

from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError

# Cubic Hermite basis -> monomials: [f(0), f(1), f'(0), f'(1)] @ _HERMITE = [c0, c1, c2, c3]
# of c0 + c1 t + c2 t^2 + c3 t^3 (f' in units of the cell width).
_HERMITE = np.array([[1.0, 0.0, -3.0, 2.0],
                     [0.0, 0.0, 3.0, -2.0],
                     [0.0, 1.0, -2.0, 1.0],
                     [0.0, 0.0, -1.0, 1.0]])


def _grid(lo: float, hi: float, n: int) -> np.ndarray:
    # The same float64 expression as OpenMM, so that knots agree bit for bit.
    return np.array([lo + k * (hi - lo) / (n - 1) for k in range(n)], dtype=np.float64)


def _solve_tridiagonal(a: np.ndarray, b: np.ndarray, c: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Thomas algorithm for the tridiagonal system (sub-diagonal ``a``, diagonal ``b``,
    super-diagonal ``c``, all [n]) with right-hand sides ``rhs`` [n, K]."""
    n = len(b)
    gamma = np.zeros(n)
    sol = np.empty_like(rhs)
    beta = b[0]
    sol[0] = rhs[0] / beta
    for i in range(1, n):
        gamma[i] = c[i - 1] / beta
        beta = b[i] - a[i] * gamma[i]
        sol[i] = (rhs[i] - a[i] * sol[i - 1]) / beta
    for i in range(n - 2, -1, -1):
        sol[i] -= gamma[i + 1] * sol[i + 1]
    return sol


def spline_second_derivatives(x: np.ndarray, y: np.ndarray, periodic: bool) -> np.ndarray:
    """Second derivatives [n, K] at the knots ``x`` [n] of the cubic splines through the
    columns of ``y`` [n, K]: natural end conditions, or periodic (``y[0] == y[-1]``)."""
    n = len(x)
    h = np.diff(x)
    slope = np.diff(y, axis=0) / h[:, None]
    if not periodic:
        m = np.zeros_like(y)
        if n > 2:
            a = np.concatenate([[0.0], h[:-1], [0.0]])
            b = np.concatenate([[1.0], 2.0 * (h[:-1] + h[1:]), [1.0]])
            c = np.concatenate([[0.0], h[1:], [0.0]])
            rhs = np.concatenate([np.zeros((1, y.shape[1])), 6.0 * np.diff(slope, axis=0), np.zeros((1, y.shape[1]))])
            m = _solve_tridiagonal(a, b, c, rhs)
        return m
    # Cyclic system over the n-1 distinct knots (knot n-1 is knot 0), solved by
    # Sherman-Morrison on top of two tridiagonal solves.
    size = n - 1
    hp = np.concatenate([[h[-1]], h])  # hp[i] = width of the interval left of knot i
    a = hp[:size].copy()
    c = h[:size].copy()
    b = 2.0 * (hp[:size] + h[:size])
    slope_left = np.concatenate([slope[-1:], slope[:-1]])
    rhs = 6.0 * (slope[:size] - slope_left[:size])
    corner_low, corner_high = a[0], c[size - 1]  # A[0, size-1], A[size-1, 0]
    gamma = -b[0]
    b = b.copy()
    b[0] -= gamma
    b[size - 1] -= corner_low * corner_high / gamma
    y_sol = _solve_tridiagonal(a, b, c, rhs)
    u = np.zeros((size, 1))
    u[0, 0], u[size - 1, 0] = gamma, corner_high
    z = _solve_tridiagonal(a, b, c, u)
    v_last = corner_low / gamma
    scale = (y_sol[0] + v_last * y_sol[size - 1]) / (1.0 + z[0, 0] + v_last * z[size - 1, 0])
    m = y_sol - scale[None, :] * z
    return np.concatenate([m, m[:1]])


def _knot_derivatives(x: np.ndarray, y: np.ndarray, periodic: bool) -> np.ndarray:
    """First derivatives [n, K] of the splines through the columns of ``y`` at the knots."""
    m = spline_second_derivatives(x, y, periodic)
    h = np.diff(x)[:, None]
    out = np.empty_like(y)
    # At knot k < n-1 the spline on [x_k, x_k+1] is used, at the last knot the one before.
    out[:-1] = (y[1:] - y[:-1]) / h + (-2.0 * m[:-1] - m[1:]) * h / 6.0
    out[-1] = (y[-1] - y[-2]) / h[-1] + (m[-2] + 2.0 * m[-1]) * h[-1] / 6.0
    return out


def _axis_derivative(grid: np.ndarray, values: np.ndarray, axis: int, periodic: bool) -> np.ndarray:
    """Derivative along ``axis`` of the splines through ``values`` (an array over the grid)."""
    moved = np.moveaxis(values, axis, 0)
    shape = moved.shape
    d = _knot_derivatives(grid, moved.reshape(shape[0], -1), periodic).reshape(shape)
    return np.moveaxis(d, 0, axis)


def _check_periodic_edges(values: np.ndarray, name: str) -> None:
    for axis in range(values.ndim):
        first = np.take(values, 0, axis=axis)
        last = np.take(values, -1, axis=axis)
        # OpenMM's tolerance for "the same value"
        if np.any(np.abs(first - last) > 1e-15 + 1e-15 * np.abs(last)):
            raise UnsupportedSystemError(f"periodic tabulated function {name!r}: the first and last values along "
                                         f"axis {axis} must be equal")


def cell_coefficients(grids: List[np.ndarray], values: np.ndarray, periodic: bool, name: str = "") -> np.ndarray:
    """Monomial coefficients of the bi/tricubic patch of every grid cell.

    ``values`` is indexed ``[ix, iy(, iz)]``. Returns ``[cells, 4**d]`` with cells in the
    order ``ix + (nx-1) (iy + (ny-1) iz)`` and coefficients ``[p, q(, r)]`` (row-major) of
    :math:`a^p b^q c^r`, a, b, c the positions inside the cell in [0, 1].
    """
    d = values.ndim
    if periodic:
        _check_periodic_edges(values, name)
    widths = [np.diff(g) for g in grids]
    # derivs[mask] = mixed partial derivative over the axes in mask, in units of cell widths
    derivs = {0: values}
    for mask in range(1, 1 << d):
        axis = max(k for k in range(d) if mask >> k & 1)
        derivs[mask] = _axis_derivative(grids[axis], derivs[mask & ~(1 << axis)], axis, periodic)
    cells = [len(g) - 1 for g in grids]
    # corner data H[cells..., (corner or derivative slot) per axis], slot = 2*order + corner
    data = np.empty(tuple(cells) + (4,) * d)
    for mask in range(1 << d):
        for corner in range(1 << d):
            index = []
            slot = []
            scale = np.ones(tuple(cells))
            for k in range(d):
                c = corner >> k & 1
                index.append(slice(c, c + cells[k]))
                order = mask >> k & 1
                slot.append(2 * order + c)
                if order:
                    shape = [1] * d
                    shape[k] = cells[k]
                    scale = scale * widths[k].reshape(shape)
            data[tuple([Ellipsis] + slot)] = derivs[mask][tuple(index)] * scale
    coeff = data
    for k in range(d):
        coeff = np.moveaxis(np.tensordot(coeff, _HERMITE, axes=([d + k], [0])), -1, d + k)
    # cells flattened with x fastest
    coeff = np.transpose(coeff, tuple(range(d - 1, -1, -1)) + tuple(range(d, 2 * d)))
    return np.ascontiguousarray(coeff.reshape(int(np.prod(cells)), 4 ** d))


def _round_half_away(t: Tensor) -> Tensor:
    return torch.where(t >= 0.0, torch.floor(t + 0.5), torch.ceil(t - 0.5))


class _Axis(nn.Module):
    """Locating an argument on one uniform axis: wrap (periodic), range test, cell index
    and position in the cell."""

    def __init__(self, grid: np.ndarray, periodic: bool, dtype):
        super().__init__()
        self.lo = float(grid[0])
        self.hi = float(grid[-1])
        self.n = len(grid)
        self.periodic = periodic
        self.register_buffer("knots", torch.as_tensor(grid, dtype=dtype))

    def forward(self, t: Tensor):
        if self.periodic:
            span = self.hi - self.lo
            s = (t - self.lo) / span
            t = self.lo + span * (s - torch.floor(s))
        inside = (t >= self.lo) & (t <= self.hi)
        step = (self.hi - self.lo) / (self.n - 1)
        cell = torch.clamp(torch.floor((t - self.lo) / step), 0.0, float(self.n - 2))
        cell = torch.where(inside, cell, torch.zeros_like(cell)).to(torch.int64)
        left = self.knots[cell]
        right = self.knots[cell + 1]
        return t, inside, cell, left, right


class Continuous1D(nn.Module):
    """A ``Continuous1DFunction``; ``forward([t])`` has the shape of ``t``."""

    def __init__(self, function: openmm.Continuous1DFunction, dtype=torch.float64, name: str = ""):
        super().__init__()
        values, lo, hi = function.getFunctionParameters()
        values = np.asarray(values, dtype=np.float64)
        periodic = bool(function.getPeriodic())
        if len(values) < (3 if periodic else 2):
            raise UnsupportedSystemError(f"tabulated function {name!r} needs at least {3 if periodic else 2} values")
        if periodic:
            _check_periodic_edges(values, name)
        grid = _grid(lo, hi, len(values))
        m = spline_second_derivatives(grid, values[:, None], periodic)[:, 0]
        self.axis = _Axis(grid, periodic, dtype)
        self.register_buffer("table", torch.as_tensor(np.stack([values[:-1], values[1:], m[:-1], m[1:]], axis=1),
                                                      dtype=dtype))  # [cells, 4]

    def forward(self, args: List[Tensor]) -> Tensor:
        t, inside, cell, left, right = self.axis(args[0])
        h = right - left
        a = (right - t) / h
        b = 1.0 - a
        row = self.table[cell]
        value = (a * row[..., 0] + b * row[..., 1]
                 + ((a * a * a - a) * row[..., 2] + (b * b * b - b) * row[..., 3]) * (h * h / 6.0))
        return torch.where(inside, value, torch.zeros_like(value))


class Continuous2D(nn.Module):
    """A ``Continuous2DFunction``; ``forward([u, v])`` has their broadcast shape."""

    def __init__(self, function: openmm.Continuous2DFunction, dtype=torch.float64, name: str = ""):
        super().__init__()
        nx, ny, values, xmin, xmax, ymin, ymax = function.getFunctionParameters()
        periodic = bool(function.getPeriodic())
        least = 3 if periodic else 2
        if nx < least or ny < least:
            raise UnsupportedSystemError(f"tabulated function {name!r} needs at least {least} points along each axis")
        grids = [_grid(xmin, xmax, nx), _grid(ymin, ymax, ny)]
        table = np.asarray(values, dtype=np.float64).reshape(ny, nx).T
        self.ax = _Axis(grids[0], periodic, dtype)
        self.ay = _Axis(grids[1], periodic, dtype)
        self.nx = nx
        self.register_buffer("coeff", torch.as_tensor(cell_coefficients(grids, table, periodic, name), dtype=dtype))

    def forward(self, args: List[Tensor]) -> Tensor:
        u, v = torch.broadcast_tensors(args[0], args[1])
        u, in_u, cu, lu, ru = self.ax(u)
        v, in_v, cv, lv, rv = self.ay(v)
        a = (u - lu) / (ru - lu)
        b = (v - lv) / (rv - lv)
        c = self.coeff[cu + (self.nx - 1) * cv].unflatten(-1, (4, 4))
        bb = b.unsqueeze(-1)
        inner = ((c[..., 3] * bb + c[..., 2]) * bb + c[..., 1]) * bb + c[..., 0]
        value = ((inner[..., 3] * a + inner[..., 2]) * a + inner[..., 1]) * a + inner[..., 0]
        return torch.where(in_u & in_v, value, torch.zeros_like(value))


class Continuous3D(nn.Module):
    """A ``Continuous3DFunction``; ``forward([u, v, w])`` has their broadcast shape."""

    def __init__(self, function: openmm.Continuous3DFunction, dtype=torch.float64, name: str = ""):
        super().__init__()
        nx, ny, nz, values, xmin, xmax, ymin, ymax, zmin, zmax = function.getFunctionParameters()
        periodic = bool(function.getPeriodic())
        least = 3 if periodic else 2
        if min(nx, ny, nz) < least:
            raise UnsupportedSystemError(f"tabulated function {name!r} needs at least {least} points along each axis")
        grids = [_grid(xmin, xmax, nx), _grid(ymin, ymax, ny), _grid(zmin, zmax, nz)]
        table = np.asarray(values, dtype=np.float64).reshape(nz, ny, nx).transpose(2, 1, 0)
        self.ax = _Axis(grids[0], periodic, dtype)
        self.ay = _Axis(grids[1], periodic, dtype)
        self.az = _Axis(grids[2], periodic, dtype)
        self.nx = nx
        self.ny = ny
        self.register_buffer("coeff", torch.as_tensor(cell_coefficients(grids, table, periodic, name), dtype=dtype))

    def forward(self, args: List[Tensor]) -> Tensor:
        u, v, w = torch.broadcast_tensors(args[0], args[1], args[2])
        u, in_u, cu, lu, ru = self.ax(u)
        v, in_v, cv, lv, rv = self.ay(v)
        w, in_w, cw, lw, rw = self.az(w)
        a = (u - lu) / (ru - lu)
        b = ((v - lv) / (rv - lv)).unsqueeze(-1)
        c = ((w - lw) / (rw - lw)).unsqueeze(-1).unsqueeze(-1)
        k = self.coeff[cu + (self.nx - 1) * (cv + (self.ny - 1) * cw)].unflatten(-1, (4, 4, 4))
        inner = ((k[..., 3] * c + k[..., 2]) * c + k[..., 1]) * c + k[..., 0]  # [..., 4, 4] over (p, q)
        mid = ((inner[..., 3] * b + inner[..., 2]) * b + inner[..., 1]) * b + inner[..., 0]  # [..., 4] over p
        value = ((mid[..., 3] * a + mid[..., 2]) * a + mid[..., 1]) * a + mid[..., 0]
        return torch.where(in_u & in_v & in_w, value, torch.zeros_like(value))


class Discrete(nn.Module):
    """A ``Discrete1D/2D/3DFunction``: table lookup at the rounded, clamped arguments."""

    sizes: List[int]

    def __init__(self, values, sizes: List[int], dtype=torch.float64, name: str = ""):
        super().__init__()
        values = np.asarray(values, dtype=np.float64)
        if len(values) != int(np.prod(sizes)) or len(values) == 0:
            raise UnsupportedSystemError(f"tabulated function {name!r} has {len(values)} values for a table of "
                                         f"shape {sizes}")
        self.sizes = [int(s) for s in sizes]
        self.register_buffer("values", torch.as_tensor(values, dtype=dtype))

    def _index(self, t: Tensor, axis: int) -> Tensor:
        i = torch.clamp(_round_half_away(t.detach()), 0.0, float(self.sizes[axis] - 1))
        return i.to(torch.int64)

    def forward(self, args: List[Tensor]) -> Tensor:
        index = self._index(args[0], 0)  # the sums below broadcast the arguments
        stride = self.sizes[0]
        for axis in range(1, len(args)):
            index = index + stride * self._index(args[axis], axis)
            stride = stride * self.sizes[axis]
        return self.values[index]


#: Number of arguments of each tabulated-function class.
ARITY = {
    "Continuous1DFunction": 1,
    "Continuous2DFunction": 2,
    "Continuous3DFunction": 3,
    "Discrete1DFunction": 1,
    "Discrete2DFunction": 2,
    "Discrete3DFunction": 3,
}


def build_function(function: openmm.TabulatedFunction, name: str, dtype=torch.float64) -> nn.Module:
    """The module evaluating ``function`` (any OpenMM TabulatedFunction)."""
    kind = type(function).__name__
    if kind == "Continuous1DFunction":
        return Continuous1D(function, dtype, name)
    if kind == "Continuous2DFunction":
        return Continuous2D(function, dtype, name)
    if kind == "Continuous3DFunction":
        return Continuous3D(function, dtype, name)
    if kind == "Discrete1DFunction":
        values = function.getFunctionParameters()
        return Discrete(values, [len(values)], dtype, name)
    if kind == "Discrete2DFunction":
        nx, ny, values = function.getFunctionParameters()
        return Discrete(values, [nx, ny], dtype, name)
    if kind == "Discrete3DFunction":
        nx, ny, nz, values = function.getFunctionParameters()
        return Discrete(values, [nx, ny, nz], dtype, name)
    raise UnsupportedSystemError(f"tabulated function {name!r} of class {kind} is not supported")


def tabulated_functions(force, dtype=torch.float64) -> dict:
    """``{name: (module, number of arguments)}`` for the tabulated functions of ``force``.

    ``getTabulatedFunction`` returns the base class in OpenMM's Python API; the concrete
    class is recovered by its own getters.
    """
    out = {}
    if not hasattr(force, "getNumTabulatedFunctions"):
        return out
    for k in range(force.getNumTabulatedFunctions()):
        name = force.getTabulatedFunctionName(k)
        function = force.getTabulatedFunction(k)
        kind = type(function).__name__
        if kind not in ARITY:
            raise UnsupportedSystemError(f"tabulated function {name!r} of class {kind} is not supported")
        out[name] = (build_function(function, name, dtype), ARITY[kind])
    return out
