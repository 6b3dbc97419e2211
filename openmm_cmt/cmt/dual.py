r"""One CMT annealing step: the concave dual in (lambda, eta) and its importance weights.

CMT ("Learning Boltzmann Generators via Constrained Mass Transport, ICLR 2026", OpenReview MQmrcX5jnk) picks the next intermediate density as

.. math::
    q_{i+1} = \arg\min_q \mathrm{KL}(q \| p) \quad\text{s.t.}\quad
    \mathrm{KL}(q \| q_i) \le \varepsilon_{tr},\; H(q_i) - H(q) \le \varepsilon_{ent},

whose solution is :math:`q_{i+1} \propto q_i^{\alpha} \tilde p^{\beta}` with
:math:`\alpha = \lambda/(1+\lambda+\eta)`, :math:`\beta = 1/(1+\lambda+\eta)`. The
multipliers maximise the concave dual

.. math::
    g(\lambda, \eta) = -(1+\lambda+\eta)\log Z(\lambda, \eta) - \lambda\varepsilon_{tr}
        + \eta\,(H(q_i) - \varepsilon_{ent}),\qquad
    Z = \mathbb E_{q_i}\big[(\tilde p / q_i^{1+\eta})^{1/(1+\lambda+\eta)}\big].

Sign of the entropy term: the Lagrangian carries :math:`+\eta(H(q_i) - H(q) -
\varepsilon_{ent})`; minimising over q leaves :math:`+\eta(H(q_i) - \varepsilon_{ent})`,
and then :math:`\partial g/\partial\eta = H(q_i) - H(q_{i+1}) - \varepsilon_{ent}` (the
constraint residual), as a dual gradient must be.

Everything is estimated from samples :math:`x_k \sim q_i` with base weights
:math:`w^0_k` (uniform for plain samples). With :math:`a_k = \log q_i(x_k)`,
:math:`b_k = \log\tilde p(x_k)`, :math:`s = 1+\lambda+\eta` and
:math:`f_k = (b_k - (1+\eta)a_k)/s`:

- :math:`\log Z = \mathrm{logsumexp}_k(\log w^0_k + f_k)`; the normalised weights of
  :math:`q_{i+1}/q_i` are :math:`\omega_k = \mathrm{softmax}_k(\log w^0_k + f_k)`;
- :math:`\partial g/\partial\lambda = \sum_k\omega_k r_k - \varepsilon_{tr}` with
  :math:`r_k = f_k - \log Z` (the realised KL), and
  :math:`\partial g/\partial\eta = H + \sum_k\omega_k(a_k + r_k) - \varepsilon_{ent}`, the
  realised entropy drop minus :math:`\varepsilon_{ent}`;
- the Hessian is :math:`-\frac1s\,\mathrm{Cov}_\omega(f, a + f)` (negative semidefinite).

The plug-in dual is exactly the dual of the same problem restricted to the sample
points, hence exactly concave: a projected Newton method with Armijo backtracking on
:math:`\lambda, \eta \ge 0` converges globally. When :math:`\lambda = \eta = 0` is
optimal, :math:`q_{i+1} = p` lies inside both constraints: the final step.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class DualSolution:
    """The next intermediate density :math:`q_{i+1} \\propto q_i^\\alpha \\tilde p^\\beta`
    and what it costs.

    Attributes
    ----------
    lam, eta
        multipliers of the trust-region and entropy constraints.
    alpha, beta
        exponents of q_i and p~ (alpha = lam/(1+lam+eta), beta = 1/(1+lam+eta)).
    log_z
        log Z, so that log q_{i+1} = alpha log q_i + beta log p~ - log_z.
    log_weights
        [N] normalised log-weights of q_{i+1}/q_i on the samples (logsumexp 0;
        they include the base weights of the samples).
    kl
        realised KL(q_{i+1} || q_i) estimate.
    entropy
        H(q_i) estimate.
    entropy_drop
        realised H(q_i) - H(q_{i+1}) estimate.
    ess
        Kish effective sample size of ``log_weights`` as a fraction of N.
    is_final
        q_{i+1} = p (lam = eta = 0).
    iterations, converged
        of the dual solver (0 and True for fixed exponents).
    """

    lam: float
    eta: float
    alpha: float
    beta: float
    log_z: float
    log_weights: torch.Tensor
    kl: float
    entropy: float
    entropy_drop: float
    ess: float
    is_final: bool
    iterations: int = 0
    converged: bool = True

    def log_density(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """log q_{i+1}(x) from log q_i(x) and log p~(x) at any points x."""
        return self.alpha * log_q + self.beta * log_p - self.log_z

    def summary(self) -> dict:
        """Plain-python scalars (no tensors), for histories and logs."""
        d = dataclasses.asdict(self)
        d.pop("log_weights")
        return d


def _check_inputs(log_q, log_p, log_weights):
    # The dual is a small problem: solve it on the CPU whatever device the samples are on.
    log_q = torch.as_tensor(log_q).detach().to("cpu", torch.float64)
    log_p = torch.as_tensor(log_p).detach().to("cpu", torch.float64)
    if log_q.ndim != 1 or log_q.shape != log_p.shape or log_q.numel() < 2:
        raise ValueError(
            "log_q and log_p must be 1-D tensors of equal length >= 2 (one value per sample), "
            f"got shapes {tuple(log_q.shape)} and {tuple(log_p.shape)}"
        )
    if not (torch.isfinite(log_q).all() and torch.isfinite(log_p).all()):
        raise ValueError("log_q and log_p must be finite (regularise energies, e.g. with linlog_cut)")
    if log_weights is None:
        lw0 = torch.full_like(log_q, -math.log(log_q.numel()))
    else:
        lw0 = torch.as_tensor(log_weights).detach().to("cpu", torch.float64)
        if lw0.shape != log_q.shape or torch.isnan(lw0).any() or not torch.isfinite(lw0).any():
            raise ValueError("log_weights must be a [N] tensor of base log-weights with a finite entry")
        lw0 = lw0 - torch.logsumexp(lw0, 0)
    return log_q, log_p, lw0


def _entropy(log_q, lw0):
    w0 = lw0.exp()
    return float(-(w0 * log_q).sum())


class _Dual:
    """The plug-in dual and its derivatives on fixed samples."""

    def __init__(self, log_q, log_p, lw0, eps_tr, eps_ent):
        self.a, self.b, self.lw0 = log_q, log_p, lw0
        self.entropy = _entropy(log_q, lw0)
        self.eps_tr = 0.0 if eps_tr is None else eps_tr
        self.eps_ent = 0.0 if eps_ent is None else eps_ent

    def __call__(self, lam: float, eta: float, derivatives: bool = True):
        s = 1.0 + lam + eta
        f = (self.b - (1.0 + eta) * self.a) / s
        logits = self.lw0 + f
        log_z = torch.logsumexp(logits, 0)
        value = float(-s * log_z) - lam * self.eps_tr + eta * (self.entropy - self.eps_ent)
        if not derivatives:
            return value
        log_w = logits - log_z
        w = log_w.exp()
        r = f - log_z
        kl = float((w * r).sum())
        h_next = -float((w * (self.a + r)).sum())
        drop = self.entropy - h_next
        grad = torch.tensor([kl - self.eps_tr, drop - self.eps_ent], dtype=torch.float64)
        g1, g2 = f, self.a + f
        c1, c2 = g1 - (w * g1).sum(), g2 - (w * g2).sum()
        cov = torch.tensor(
            [[(w * c1 * c1).sum(), (w * c1 * c2).sum()], [(w * c1 * c2).sum(), (w * c2 * c2).sum()]],
            dtype=torch.float64,
        )
        return value, grad, -cov / s, (float(log_z), log_w, kl, drop)


def annealing_step(log_q, log_p, alpha: float, beta: float, log_weights=None, **solver_info) -> DualSolution:
    """The step to :math:`q_{i+1} \\propto q_i^\\alpha \\tilde p^\\beta` for given exponents
    (fixed schedules), with the same estimates as :func:`solve_dual`.

    Requires 0 < beta and 0 <= alpha <= 1 - beta (so that lam, eta >= 0):
    lam = alpha/beta, eta = (1 - alpha - beta)/beta.
    """
    if not (beta > 0 and 0 <= alpha and alpha + beta <= 1 + 1e-12):
        raise ValueError(f"exponents must satisfy beta > 0, alpha >= 0, alpha + beta <= 1; got {alpha}, {beta}")
    log_q, log_p, lw0 = _check_inputs(log_q, log_p, log_weights)
    lam, eta = alpha / beta, max(0.0, (1.0 - alpha - beta) / beta)
    dual = _Dual(log_q, log_p, lw0, None, None)
    _, _, _, (log_z, log_w, kl, drop) = dual(lam, eta)
    return _solution(dual, lam, eta, log_z, log_w, kl, drop, **solver_info)


def _solution(dual, lam, eta, log_z, log_w, kl, drop, iterations=0, converged=True):
    s = 1.0 + lam + eta
    ess = float(torch.exp(-torch.logsumexp(2 * log_w, 0)) / log_w.numel())
    return DualSolution(
        lam=lam, eta=eta, alpha=lam / s, beta=1.0 / s, log_z=log_z, log_weights=log_w, kl=kl,
        entropy=dual.entropy, entropy_drop=drop, ess=ess, is_final=(lam == 0.0 and eta == 0.0),
        iterations=iterations, converged=converged,
    )


def _residual(grad, v, free) -> float:
    """Largest projected-gradient entry: zero exactly at a KKT point of max g, v >= 0."""
    grad = torch.where(free, grad, torch.zeros_like(grad))
    projected = torch.where((v <= 0) & (grad <= 0), torch.zeros_like(grad), grad)
    return float(projected.abs().max())


def solve_dual(
    log_q,
    log_p,
    eps_tr: float | None = 0.5,
    eps_ent: float | None = 1.0,
    log_weights=None,
    init: tuple[float, float] = (1.0, 1.0),
    tol: float = 1e-9,
    max_iter: int = 200,
) -> DualSolution:
    """Maximise the CMT dual over lam, eta >= 0 by projected Newton.

    Parameters
    ----------
    log_q
        [N] log q_i(x_k) of samples x_k ~ q_i.
    log_p
        [N] log p~(x_k), unnormalised target.
    eps_tr
        trust-region radius (nats); None drops that constraint (lam = 0:
        the temperature path).
    eps_ent
        largest entropy drop per step (nats); None drops that constraint
        (eta = 0: the auto-scheduled geometric path).
    log_weights
        optional [N] base log-weights when the x_k are weighted draws of
        q_i (e.g. quadrature points, or reused samples); uniform when None.
    init
        starting (lam, eta), e.g. the previous step's solution.
    tol
        convergence threshold on the projected gradient (the constraint residuals,
        in nats).
    """
    for name, eps in (("eps_tr", eps_tr), ("eps_ent", eps_ent)):
        if eps is not None and not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"{name} must be positive and finite (nats) or None, got {eps}")
    log_q, log_p, lw0 = _check_inputs(log_q, log_p, log_weights)
    dual = _Dual(log_q, log_p, lw0, eps_tr, eps_ent)
    free = torch.tensor([eps_tr is not None, eps_ent is not None])
    if not free.any():
        _, _, _, info = dual(0.0, 0.0)
        return _solution(dual, 0.0, 0.0, *info)

    # The corner first: q_{i+1} = p is optimal iff it satisfies both constraints.
    value, grad, hess, info = dual(0.0, 0.0)
    if bool((grad[free] <= tol).all()):
        return _solution(dual, 0.0, 0.0, *info)

    v = torch.tensor([float(init[0]), float(init[1])], dtype=torch.float64).clamp(min=0.0)
    v[~free] = 0.0
    converged, iterations = False, 0
    for iterations in range(1, max_iter + 1):
        value, grad, hess, info = dual(*v.tolist())
        grad = torch.where(free, grad, torch.zeros_like(grad))
        if _residual(grad, v, free) <= tol:
            converged = True
            break
        # Variables held at their bound by an outward gradient are not moved this step.
        active = free & ~((v <= 0) & (grad <= 0))
        idx = active.nonzero().flatten()
        h = -hess[idx][:, idx]
        ridge = 1e-12 * float(h.diagonal().sum()) + 1e-300
        try:
            step = torch.linalg.solve(h + ridge * torch.eye(len(idx), dtype=torch.float64), grad[idx])
        except RuntimeError:
            step = grad[idx]
        if not (torch.isfinite(step).all() and float(step @ grad[idx]) > 0):
            step = grad[idx]  # degenerate curvature: fall back to steepest ascent
        direction = torch.zeros(2, dtype=torch.float64)
        direction[idx] = step
        # Growth of at most 10x (1 + v) per iteration keeps a flat dual from throwing
        # the iterate to 1e300 before backtracking can act.
        limit = float((10.0 * (1.0 + v[idx]) / direction[idx].abs()).min())
        t = min(1.0, limit)
        accepted = False
        for _ in range(80):
            trial = (v + t * direction).clamp(min=0.0)
            trial_value = dual(*trial.tolist(), derivatives=False)
            if math.isfinite(trial_value) and trial_value >= value + 1e-4 * float(grad @ (trial - v)):
                accepted = True
                break
            # Near the optimum g is flat below float64 resolution; there a step that keeps
            # g within rounding and shrinks the constraint residuals is progress.
            if math.isfinite(trial_value) and trial_value >= value - 1e-13 * (1.0 + abs(value)):
                if _residual(dual(*trial.tolist())[1], trial, free) < _residual(grad, v, free):
                    accepted = True
                    break
            t *= 0.5
        if not accepted or bool((trial == v).all()):
            # No further ascent at float64 resolution: the iterate is optimal to precision.
            converged = _residual(grad, v, free) <= max(tol, 1e-6)
            break
        v = trial
    lam, eta = (float(v[0]), float(v[1]))
    _, _, _, info = dual(lam, eta)
    return _solution(dual, lam, eta, *info, iterations=iterations, converged=converged)
