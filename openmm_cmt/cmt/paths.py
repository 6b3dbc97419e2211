r"""Annealing paths: which intermediate density the next step targets (one switch, ``path=``).

Every path gives the next density as :math:`q_{i+1} \propto q_i^{\alpha}\tilde p^{\beta}`
relative to the current model :math:`q_i`, so all of them share
:class:`~openmm_cmt.cmt.dual.DualSolution` and the same weighted forward-KL update:

- ``cmt``: trust region and entropy constraint, (alpha, beta) from the 2-D dual (the CMT paper's constrained sub-problem);
- ``trust-region``: eta = 0, the auto-scheduled geometric path of the CMT paper;
- ``entropy``: lambda = 0, the temperature path :math:`q_{i+1}\propto\tilde p^{1/(1+\eta)}`;
- ``geometric-linear``: the fixed schedule :math:`q_{i+1}\propto q_0^{1-b_{i+1}}\tilde p^{b_{i+1}}`,
  :math:`b_i = \min(i/n, 1)`. Taking :math:`q_i = q_0^{1-b_i}\tilde p^{b_i}` (up to its
  normaliser) gives :math:`q_{i+1}\propto q_i^{(1-b_{i+1})/(1-b_i)}\tilde p^{(b_{i+1}-b_i)/(1-b_i)}`,
  which needs only the current model;
- ``temperature-ladder``: TA-BG's fixed ladder, :math:`q_{i+1}\propto\tilde p^{T/T_{i+1}}`
  with temperatures geometric from :math:`T_{high}` down to T, reached by reweighting the
  current model's samples;
- ``reverse-kl``: no intermediate densities; the model is fitted to p directly by
  reparameterised reverse KL. Its step result is the (alpha, beta) = (0, 1) step,
  whose ESS is the reverse ESS of the current model.
"""

from __future__ import annotations

from openmm_cmt.cmt.dual import DualSolution, annealing_step, solve_dual

PATHS = ("cmt", "trust-region", "entropy", "geometric-linear", "temperature-ladder", "reverse-kl")


def check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    return path


def geometric_exponents(index: int, n_schedule: int) -> tuple[float, float]:
    """(alpha, beta) of step ``index`` (0-based) of the linear schedule b_i = min(i/n, 1)."""
    if n_schedule < 1:
        raise ValueError(f"the geometric schedule needs n_schedule >= 1 steps, got {n_schedule}")
    b0, b1 = min(index / n_schedule, 1.0), min((index + 1) / n_schedule, 1.0)
    if b0 >= 1.0:
        return 0.0, 1.0
    return (1.0 - b1) / (1.0 - b0), (b1 - b0) / (1.0 - b0)


def ladder_betas(t_high_factor: float, n_temperatures: int) -> list[float]:
    """Inverse-temperature ratios T/T_k of a geometric ladder from T_high = factor * T to T."""
    if not t_high_factor >= 1.0:
        raise ValueError(f"t_high_factor = T_high / T must be >= 1, got {t_high_factor}")
    if n_temperatures < 1:
        raise ValueError(f"the ladder needs n_temperatures >= 1, got {n_temperatures}")
    if n_temperatures == 1:
        return [1.0]
    return [t_high_factor ** -(1.0 - k / (n_temperatures - 1)) for k in range(n_temperatures)]


def path_step(
    path: str,
    log_q,
    log_p,
    index: int,
    *,
    eps_tr: float = 0.5,
    eps_ent: float = 1.0,
    n_geometric: int = 10,
    t_high_factor: float = 4.0,
    n_temperatures: int = 5,
    init: tuple[float, float] = (1.0, 1.0),
) -> DualSolution:
    """The step from q_i (samples with ``log_q``, ``log_p``) to q_{i+1} along ``path``;
    ``index`` = i counts annealing steps from 0."""
    check_path(path)
    if path == "cmt":
        return solve_dual(log_q, log_p, eps_tr, eps_ent, init=init)
    if path == "trust-region":
        return solve_dual(log_q, log_p, eps_tr, None, init=init)
    if path == "entropy":
        return solve_dual(log_q, log_p, None, eps_ent, init=init)
    if path == "geometric-linear":
        return annealing_step(log_q, log_p, *geometric_exponents(index, n_geometric))
    if path == "temperature-ladder":
        betas = ladder_betas(t_high_factor, n_temperatures)
        return annealing_step(log_q, log_p, 0.0, betas[min(index, len(betas) - 1)])
    return annealing_step(log_q, log_p, 0.0, 1.0)
