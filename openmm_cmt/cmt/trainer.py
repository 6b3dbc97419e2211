r"""Training a generator along an annealing path with Constrained Mass Transport.

One annealing step i (``CMTTrainer.step``) with the current model :math:`q_i = q_\theta`:

1. draw ``samples_per_step`` fresh samples :math:`x \sim q_i` without gradient and
   evaluate :math:`\log\tilde p(x)` (each evaluation counted);
2. choose :math:`q_{i+1}\propto q_i^\alpha\tilde p^\beta` along ``path`` from these fresh
   samples (the CMT dual, or a fixed schedule; :mod:`openmm_cmt.cmt.paths`). Only fresh
   samples enter the dual, so its Monte-Carlo estimates are plain averages over
   :math:`q_i` without reweighting noise;
3. push the fresh samples, less the ``drop_top_energy_fraction`` of highest energy, into
   the replay buffer with :math:`\log q_{gen}(x)`, the log density of the model that
   drew them;
4. weight every buffer sample by
   :math:`w(x) = q_{i+1}(x)/q_{gen}(x) = \exp(\alpha\log q_i(x) + \beta\log\tilde p(x)
   - \log Z - \log q_{gen}(x))`, with :math:`q_i` the current model evaluated on the
   buffer. :math:`q_{i+1}` is defined through the current model, so old samples need
   :math:`\log q_i` afresh, while their proposal density stays the one they were drawn
   from (each batch of the buffer is an unbiased importance sample of :math:`q_{i+1}`;
   for fresh samples w is exactly the dual's weight);
5. take ``grad_steps_per_step`` optimiser steps on the importance-weighted forward KL,
   :math:`L = -\sum_{k\in B}\bar w_k\log q_\theta(x_k)` over uniform minibatches B of
   the buffer, :math:`\bar w` self-normalised within the minibatch. (Drawing minibatch
   indices in proportion to the weights instead, unweighted, targets the same objective
   but repeats the heaviest samples in every batch, and a flow soon memorises them: on
   alanine dipeptide its entropy collapsed within three annealing steps.)

``path="reverse-kl"`` replaces 1-5 by ``grad_steps_per_step`` iterations of
reparameterised reverse KL, :math:`E_{q_\theta}[\log q_\theta - \log\tilde p]`, each on
``reverse_kl_batch_size`` fresh samples (by default ``samples_per_step`` spread over
the iterations, so that every path spends the same evaluations per step).

Speed. The forward-KL step (5), the log densities of the buffer (4) and the sampling (1)
go through :class:`openmm_cmt.cmt.compiled.FlowCalls`: ``torch.compile`` with fixed
shapes, each kind checked against the eager flow on its first call, eager fallback
with one warning (``CMTConfig.compile``). Every record carries the seconds spent per
phase, ``phase_s``.

Data parallelism (:mod:`openmm_cmt.cmt.distributed`) overrides the small hooks at the end
of the class (``_shard``, ``_gather_fresh``, ``_own_rows``,
``_minibatch_weights``, ``_tilted_share``, ``_reduce_grads``); in one process they are
identities.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from typing import Callable

import numpy as np
import torch

from openmm_cmt.cmt.buffer import ReplayBuffer
from openmm_cmt.cmt.compiled import COMPILE_MODES, FlowCalls, compile_available
from openmm_cmt.cmt.dual import DualSolution, annealing_step
from openmm_cmt.cmt.paths import PATHS, check_path, make_path
from openmm_cmt.metrics.ess import reverse_ess


@dataclasses.dataclass
class CMTConfig:
    r"""Settings of a CMT run (defaults suit small toy targets).

    Attributes
    ----------
    path
        ``cmt``, ``trust-region``, ``entropy``, ``geometric-linear``,
        ``temperature-ladder``, ``reverse-kl`` or another name in
        ``openmm_cmt.cmt.paths.PATHS`` (:mod:`openmm_cmt.cmt.paths`); the settings
        below that a path does not read are ignored by it.
    eps_tr
        trust-region radius KL(q_{i+1} || q_i) per step, nats.
    eps_ent
        largest entropy drop per step, nats.
    n_steps
        annealing steps of ``run()``.
    samples_per_step
        fresh samples (target evaluations) per annealing step.
    buffer_size
        replay-buffer capacity (samples); equal to ``samples_per_step`` uses fresh
        samples only.
    grad_steps_per_step
        optimiser steps per annealing step.
    batch_size
        minibatch size of the weighted forward-KL steps.
    optimizer
        ``adam`` or ``adamw``.
    lr, weight_decay
        the optimizer's settings.
    lr_schedule
        ``constant`` or ``cosine`` (to zero over n_steps * grad_steps_per_step;
        ``CMTTrainer.learning_rate``).
    grad_clip
        largest gradient norm (None: no clipping).
    drop_top_energy_fraction
        fraction of each step's fresh samples with the highest energy (lowest log p~)
        kept out of the buffer.
    seed
        seeds the trainer's own random stream (``CMTTrainer.rng``), from which it
        draws every sample and minibatch; global RNGs are left alone.
    n_geometric
        length of the geometric-linear schedule (None: n_steps).
    t_high_factor, n_temperatures
        the temperature ladder, T_high = factor * T down to T in n_temperatures
        geometric rungs.
    reverse_kl_batch_size
        samples per reverse-KL iteration (None: samples_per_step spread over the
        step's iterations, the same budget as the other paths).
    ema_decay
        Polyak averaging of the flow parameters (0: off). With ``d > 0`` the model
        :math:`q_i` that draws samples, weighs the buffer and is returned is the
        exponential moving average of the optimised parameters, updated after every
        optimiser step with weight ``1 - d``; the optimiser works on its own copy.
    compile
        ``torch.compile`` the forward-KL step, the buffer's log densities and the
        sampling (:mod:`openmm_cmt.cmt.compiled`): True, False or ``"auto"``: on CUDA
        all three for runs of at least ``AUTO_COMPILE_MIN_GRAD_STEPS`` gradient steps;
        on CPU with a C++ compiler each where it pays for its compilation (about a
        minute each on two cores, BENCHMARKS.md): the forward-KL step for runs of at
        least ``AUTO_COMPILE_MIN_GRAD_STEPS_CPU`` gradient steps, sampling for runs
        that draw at least ``AUTO_COMPILE_MIN_SAMPLES_CPU`` samples, and the buffer's
        log densities once ``AUTO_COMPILE_LOG_PROB_ROWS_CPU`` rows have run eagerly.
    compile_mode
        ``"default"``, or ``"reduce-overhead"`` to replay the compiled calls as CUDA
        graphs on CUDA (no effect on a CPU; :mod:`openmm_cmt.cmt.compiled`).
    fit_order
        order a in [1, 4] of the alpha-divergence :math:`D_a(q_{i+1}\,\|\,q_\theta)`
        that the fit (5) descends. 1 is the forward KL of CMT. At a > 1 every optimiser
        step weighs its minibatch by :math:`(q_{i+1}/q_{gen})(q_{i+1}/q_\theta)^{a-1}`
        with :math:`q_\theta` the model as it is at that step, an importance-sampling
        estimate of the gradient :math:`-E_{q_{i+1}}[(q_{i+1}/q_\theta)^{a-1}\nabla
        \log q_\theta]`. a = 2 is the mass-covering objective of FAB (Midgley et al.,
        ICLR 2023), :math:`\int q_{i+1}^2/q_\theta - 1`, whose minimum maximises the
        importance-sampling ESS of :math:`q_\theta` for :math:`q_{i+1}`: regions where
        the model is too thin weigh more than under the forward KL, at the price of
        heavier-tailed minibatch weights. (Freezing the tilt at :math:`q_i` for the
        whole step instead makes every step a fixed-point map
        :math:`q \mapsto q_{i+1}^a/q^{a-1}`, which oscillates.)
    """

    path: str = "cmt"
    eps_tr: float = 0.5
    eps_ent: float = 1.0
    n_steps: int = 20
    samples_per_step: int = 4096
    buffer_size: int = 16384
    grad_steps_per_step: int = 100
    batch_size: int = 1024
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0
    drop_top_energy_fraction: float = 0.0
    seed: int = 0
    n_geometric: int | None = None
    t_high_factor: float = 4.0
    n_temperatures: int = 5
    reverse_kl_batch_size: int | None = None
    compile: bool | str = "auto"
    compile_mode: str = "default"
    ema_decay: float = 0.0
    fit_order: float = 1.0

    def __post_init__(self):
        check_path(self.path)
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {self.compile!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        for name in ("n_steps", "samples_per_step", "buffer_size", "grad_steps_per_step", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.samples_per_step < 2:
            raise ValueError("samples_per_step must be at least 2 (the dual needs a sample average)")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.drop_top_energy_fraction < 1.0:
            raise ValueError(f"drop_top_energy_fraction must be in [0, 1), got {self.drop_top_energy_fraction}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if PATHS[self.path].reverse_kl and min(self.reverse_kl_batches()) < 2:
            raise ValueError("reverse-kl needs at least 2 samples per iteration (reverse_kl_batch_size)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_decay > 0 and self.path == "reverse-kl":
            raise ValueError("ema_decay applies to the forward-KL paths; reverse-kl takes no average")
        if isinstance(self.fit_order, bool) or not (isinstance(self.fit_order, (int, float)) and 1.0 <= self.fit_order <= 4.0):
            raise ValueError(f"fit_order must be a number in [1, 4] (1: forward KL, 2: FAB's alpha = 2), got {self.fit_order!r}")
        if self.fit_order != 1.0 and self.path == "reverse-kl":
            raise ValueError("fit_order applies to the forward-KL paths; reverse-kl fits by reverse KL")
        for name in ("eps_tr", "eps_ent"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (nats), got {getattr(self, name)}")
        make_path(self)  # the path's own settings

    def reverse_kl_batches(self) -> list[int]:
        """Samples of each reverse-KL iteration of one step: ``reverse_kl_batch_size``, or
        ``samples_per_step`` split as evenly as possible over ``grad_steps_per_step``."""
        if self.reverse_kl_batch_size is not None:
            return [self.reverse_kl_batch_size] * self.grad_steps_per_step
        base, extra = divmod(self.samples_per_step, self.grad_steps_per_step)
        return [base + (k < extra) for k in range(self.grad_steps_per_step)]


#: ``compile="auto"`` compiles runs of at least this many gradient steps in total.
AUTO_COMPILE_MIN_GRAD_STEPS = 2000
#: The same on CPU, where compiling takes minutes and gains less.
AUTO_COMPILE_MIN_GRAD_STEPS_CPU = 4000
#: On CPU, ``"auto"`` compiles sampling for runs that draw at least this many samples:
#: on two cores compiled sampling repaid its 35-45 s of compiling after 1.2M (the
#: ``cpu`` preset's flow) to 3.0M samples (the ``laptop`` one's), BENCHMARKS.md.
AUTO_COMPILE_MIN_SAMPLES_CPU = 3_000_000
#: On CPU, ``"auto"`` compiles the buffer's log densities once this many rows have run
#: eagerly (rent or buy): they are needed only while the trust region binds, for a
#: number of steps not known in advance, and compiling them repaid its 26-33 s after
#: 1.1M-2.0M rows on two cores.
AUTO_COMPILE_LOG_PROB_ROWS_CPU = 1_000_000

#: Keys of a record's ``phase_s``: seconds spent drawing samples, evaluating the target,
#: choosing the next density, updating and reweighting the buffer, fitting the flow,
#: and writing checkpoints (filled in by whoever writes them; 0 here).
PHASES = ("sample", "energy", "dual", "buffer", "fit", "checkpoint")


def make_optimizer(params: list[torch.nn.Parameter], config: CMTConfig) -> torch.optim.Optimizer:
    """Adam or AdamW with ``config``'s settings, as one fused kernel on CPU and CUDA.

    The fused update reads and writes each parameter once per step: for a million
    parameters on a 2-core CPU it takes about 0.8 ms against 5.6-7.7 ms for the
    multi-tensor (``foreach``) one. Elsewhere (another device, or parameters that are
    not floating point) torch's default implementation is used.
    """
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return kind(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


class CMTTrainer:
    """Fits ``flow`` (``sample(n, generator=None) -> (x, log_q)`` drawing from the given
    ``torch.Generator``, ``log_prob(x) -> [B]``; x with any per-sample shape) to
    ``target`` (``log_prob``, ``n_evaluations``) along ``config.path``; see the module
    docstring for one step.

    Attributes
    ----------
    history
        one dict per annealing step: step, path, lam, eta, alpha, beta, kl,
        entropy_drop, ess (of the step weights), log_z, is_final, dual_iterations,
        dual_converged, evaluations (target evaluations so far), loss (mean over the
        step's gradient steps), lr, step_wall_s, wall_s (cumulative), phase_s (seconds
        per phase of ``PHASES``; ``checkpoint`` is 0 unless the caller that writes
        checkpoints adds its time).
    n_evaluations
        target evaluations made by this trainer (survives resume).
    calls
        the flow calls of the hot loops (compiled or eager, ``FlowCalls``).
    path
        the annealing path (:class:`~openmm_cmt.cmt.paths.AnnealingPath`).
    rng
        ``torch.Generator`` on the flow's device, seeded with ``config.seed``: every
        sample and minibatch of the run is drawn from it (saved in checkpoints).
    """

    def __init__(self, flow: torch.nn.Module, target, config: CMTConfig | None = None):
        self.config = config = config or CMTConfig()
        if not (hasattr(target, "log_prob") and hasattr(target, "n_evaluations")):
            raise ValueError("target must have log_prob(x) and n_evaluations (see openmm_cmt.cmt.target)")
        self.flow, self.target = flow, target
        self.path = make_path(config)
        self.rng = torch.Generator(device=self._device()).manual_seed(config.seed)
        params = [p for p in flow.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, config)
        self.total_grad_steps = config.n_steps * config.grad_steps_per_step
        self.buffer = ReplayBuffer(len(self._shard(config.buffer_size)))
        self.calls = FlowCalls(flow, self._compile_plan(), len(self._shard(config.batch_size)),
                               mode=config.compile_mode, tilt=config.fit_order - 1.0)
        self._phase = dict.fromkeys(PHASES, 0.0)
        self.step_index = 0
        self.grad_step_index = 0
        # (optimiser step, schedule progress) from which the cosine schedule runs on to
        # the run's end: (0, 0) until ``retime`` changes a run's length mid-schedule.
        self._lr_anchor = (0, 0.0)
        self.n_evaluations = 0
        self.wall_s = 0.0
        self.history: list[dict] = []
        # The last step's own draws (x, log q_gen, log p~) on this process, for callbacks
        # that look at where the model puts its mass (the sampler's basin trace).
        self.last_draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._init = (1.0, 1.0)
        # With averaging, the flow holds the averaged parameters outside the fit and
        # ``_optimised`` the optimiser's own (the Adam state belongs to those).
        self._optimised = [p.detach().clone() for p in self.calls.params] if config.ema_decay > 0 else None
        self._average: list[torch.Tensor] | None = None

    def _compile_plan(self) -> bool | dict[str, int]:
        """``FlowCalls``' ``enabled``: what to compile, and when (``CMTConfig.compile``)."""
        c = self.config
        if c.compile != "auto":
            return bool(c.compile)
        device = self._device()
        if not compile_available(device):
            return False
        if device.type == "cuda":
            return self.total_grad_steps >= AUTO_COMPILE_MIN_GRAD_STEPS
        plan = {"log_prob": AUTO_COMPILE_LOG_PROB_ROWS_CPU}
        if self.total_grad_steps >= AUTO_COMPILE_MIN_GRAD_STEPS_CPU:
            plan["loss"] = 0
        if c.n_steps * c.samples_per_step >= AUTO_COMPILE_MIN_SAMPLES_CPU:
            plan["sample"] = 0
        return plan

    def _device(self) -> torch.device:
        return next((p.device for p in self.flow.parameters()), torch.device("cpu"))

    @contextlib.contextmanager
    def _timing(self, phase: str):
        """Adds the wall time of the ``with`` block to ``phase`` of the current step.

        On CUDA the device is synchronised at both ends: kernels run asynchronously, and
        without that a phase would be charged for the unfinished work of the one before
        it (the dual, whose first copy to the CPU waits, took the sampling's time)."""
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self._phase[phase] += time.perf_counter() - start

    def _synchronize(self) -> None:
        device = self._device()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # -- target evaluations, counted exactly -------------------------------------------
    def _log_p(self, x: torch.Tensor) -> torch.Tensor:
        with self._timing("energy"):
            before = self.target.n_evaluations
            out = self.target.log_prob(x)
            self.n_evaluations += self.target.n_evaluations - before
            return out.to(torch.float64)

    def _log_q(self, x: torch.Tensor) -> torch.Tensor:
        return self.calls.log_prob(x).to(torch.float64)

    # -- one annealing step --------------------------------------------------------------
    def step(self) -> dict:
        """One annealing step; returns (and appends to ``history``) its record."""
        t0 = time.perf_counter()
        self._phase = dict.fromkeys(PHASES, 0.0)
        if self.path.reverse_kl:
            solution, losses = self._reverse_kl_step()
        else:
            solution, losses = self._annealing_step()
        self._init = (max(solution.lam, 1e-3), max(solution.eta, 1e-3))
        elapsed = time.perf_counter() - t0
        self.wall_s += elapsed
        record = {"step": self.step_index, "path": self.config.path}
        record.update(solution.summary())
        record.pop("entropy")
        record["dual_iterations"] = record.pop("iterations")
        record["dual_converged"] = record.pop("converged")
        record.update(
            reverse_ess=self._reverse_ess,
            evaluations=self.n_evaluations,
            loss=float(np.mean(losses)) if losses else float("nan"),
            lr=self.optimizer.param_groups[0]["lr"],
            step_wall_s=elapsed,
            wall_s=self.wall_s,
            phase_s=dict(self._phase),
        )
        self.history.append(record)
        self.step_index += 1
        return record

    def _annealing_step(self) -> tuple[DualSolution, list[float]]:
        c = self.config
        with self._timing("sample"):
            x, log_q_gen = self.calls.sample(len(self._shard(c.samples_per_step)), self.rng)
        with torch.no_grad():
            log_p = self._log_p(x)
        log_q_gen = log_q_gen.detach().to(torch.float64)
        if not torch.isfinite(log_q_gen).all():
            raise ValueError("the flow returned non-finite log densities for its own samples")
        self.last_draws = (x.detach(), log_q_gen, log_p)
        with self._timing("dual"):
            all_q, all_p = self._gather_fresh(log_q_gen, log_p)
            # How far the current flow is from the target itself, on samples already paid for.
            self._reverse_ess = reverse_ess(all_p - all_q)
            solution = self.path.step(all_q, all_p, self.step_index, init=self._init)
        with self._timing("buffer"):
            n_drop = int(math.floor(c.drop_top_energy_fraction * all_p.shape[0]))
            keep = torch.argsort(all_p, descending=True, stable=True)[: all_p.shape[0] - n_drop].sort().values
            keep = self._own_rows(keep, c.samples_per_step)
            self.buffer.push(x[keep], log_q_gen[keep], log_p[keep])
            log_w = self.buffer_log_weights(solution, n_fresh=min(keep.numel(), len(self.buffer)))
        with self._timing("fit"):
            losses = self._fit(self.buffer.x, log_w)
        return solution, losses

    def _fit(self, buf_x: torch.Tensor, log_w: torch.Tensor) -> list[float]:
        """``grad_steps_per_step`` optimiser steps of the importance-weighted forward KL on
        uniform minibatches of the buffer (reshuffled when fewer than a full minibatch
        remain, so every minibatch has the same size); returns the losses."""
        with self._optimised_parameters():
            return self._fit_steps(buf_x, log_w)

    @contextlib.contextmanager
    def _optimised_parameters(self):
        """Puts the optimiser's parameters into the flow for the ``with`` block and the
        (updated) average back after it; nothing to do without averaging."""
        if self._optimised is None:
            yield
            return
        average = [p.detach().clone() for p in self.calls.params]
        with torch.no_grad():
            for p, q in zip(self.calls.params, self._optimised):
                p.copy_(q)
        self._average = average
        try:
            yield
        finally:
            with torch.no_grad():
                for p, q, a in zip(self.calls.params, self._optimised, average):
                    q.copy_(p)
                    p.copy_(a)
            self._average = None

    def _fit_steps(self, buf_x: torch.Tensor, log_w: torch.Tensor) -> list[float]:
        c = self.config
        losses = []
        n = buf_x.shape[0]
        batch_size = len(self._shard(c.batch_size))
        order = self._permutation(n)
        cursor = 0
        for _ in range(c.grad_steps_per_step):
            if cursor + min(batch_size, n) > n:
                order, cursor = self._permutation(n), 0
            idx = order[cursor : cursor + batch_size]
            cursor += idx.numel()
            weights = self._minibatch_weights(log_w[idx])
            loss, grads = self.calls.loss_and_grads(buf_x[idx], weights)
            if self.calls.tilt:
                loss, grads = self._tilted_share(loss, grads, self.calls.log_mass)
            losses.append(self._apply(loss, grads))
        return losses

    def _permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.rng, device=self.rng.device)

    def buffer_log_weights(self, solution: DualSolution, n_fresh: int = 0) -> torch.Tensor:
        """a log q_{i+1}(x) - log q_gen(x) for every buffer sample at ``fit_order`` a,
        with q_i the current model (unnormalised over the buffer; minibatches
        self-normalise): the forward-KL weight q_{i+1}/q_gen at a = 1. At a > 1 the loss
        divides by the fitted model's own density to the power a - 1 (``FlowCalls``'
        ``tilt``). At the target (alpha = 0) the current model drops out and is not
        evaluated.

        The last ``n_fresh`` rows of the buffer must have been drawn by the current
        model: their log q_i is the log q_gen stored with them, so only the older rows
        go through the flow (a quarter less work with a buffer of four steps, and none
        in the first step)."""
        buffer = self.buffer
        if not (isinstance(n_fresh, int) and 0 <= n_fresh <= len(buffer)):
            raise ValueError(f"n_fresh must be an integer in [0, {len(buffer)}] (rows of the buffer), got {n_fresh!r}")
        if solution.alpha == 0.0:
            log_q_i = torch.zeros_like(buffer.log_p)
        else:
            old = len(buffer) - n_fresh
            log_q_i = torch.cat([self._log_q(buffer.x[:old]), buffer.log_q[old:]]) if old else buffer.log_q
        return self.config.fit_order * solution.log_density(log_q_i, buffer.log_p) - buffer.log_q

    def _reverse_kl_step(self) -> tuple[DualSolution, list[float]]:
        c = self.config
        losses, solution = [], None
        for batch in c.reverse_kl_batches():
            with self._timing("sample"):
                x, log_q = self.flow.sample(len(self._shard(batch)), generator=self.rng)
            log_p = self._log_p(x)
            log_q = log_q.to(torch.float64)
            if solution is None:
                self.last_draws = (x.detach(), log_q.detach(), log_p.detach())
                # Diagnostics of the model at the start of the step, on samples already paid for.
                with self._timing("dual"):
                    solution = annealing_step(*self._gather_fresh(log_q.detach(), log_p.detach()), 0.0, 1.0)
                    self._reverse_ess = solution.ess
            with self._timing("fit"):
                losses.append(self._optimise((log_q - log_p).sum() / batch))
        return solution, losses

    def _optimise(self, loss: torch.Tensor) -> float:
        self._check_finite(loss)
        grads = torch.autograd.grad(loss, self.calls.params, allow_unused=True)
        return self._apply(loss.detach(), grads)

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise ValueError(f"non-finite training loss at annealing step {self.step_index}: {float(loss)}")

    def _apply(self, loss: torch.Tensor, grads) -> float:
        """One optimiser step with the gradient ``grads`` (one per trainable parameter)."""
        loss, grads = self._reduce_grads(loss, grads)
        self._check_finite(loss)
        for p, g in zip(self.calls.params, grads):
            p.grad = g
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.calls.params, self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.grad_step_index)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._optimised is not None and self._average is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self._average, [p.detach() for p in self.calls.params], 1.0 - self.config.ema_decay)
        self.grad_step_index += 1
        return float(loss)

    # -- data parallelism: identities here, collectives in openmm_cmt.cmt.distributed -----
    def _shard(self, n: int) -> range:
        """The rows of a global batch of ``n`` samples that this process handles."""
        return range(n)

    def _gather_fresh(self, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-sample vectors of this process's fresh samples -> the same over all samples."""
        return values

    def _own_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Indices into a global batch of ``n`` -> those of this process, as local indices."""
        return rows

    def _minibatch_weights(self, log_w: torch.Tensor) -> torch.Tensor:
        """Self-normalised weights of a minibatch from its log-weights."""
        return torch.softmax(log_w, 0)

    def _tilted_share(self, loss: torch.Tensor, grads, log_mass: torch.Tensor):
        """A tilted minibatch loss and gradient (normalised over this process's rows) ->
        their share of the whole minibatch's (``fit_order`` > 1)."""
        return loss, grads

    def _reduce_grads(self, loss: torch.Tensor, grads):
        """The loss and gradient of the whole minibatch from this process's part of them."""
        return loss, grads

    def learning_rate(self, grad_step: int) -> float:
        r"""The learning rate of optimiser step ``grad_step`` (counted from 0 over the run).

        ``constant``: ``lr``. ``cosine``: :math:`\tfrac12\,\mathrm{lr}\,(1 + \cos \pi p)`,
        where the schedule's progress :math:`p` runs linearly from 0 at the first
        optimiser step to 1 at the run's last, :math:`K` = ``n_steps * grad_steps_per_step``,
        and stays 1 (rate zero) after it. A run whose length ``retime`` changed runs from
        its progress :math:`p_0` at that optimiser step :math:`k_0` linearly to 1 at the
        new end: :math:`p = p_0 + (1 - p_0)(k - k_0)/(K - k_0)`. The rate is a function of
        the step and of :math:`(k_0, p_0)`, which checkpoints keep.
        """
        if self.config.lr_schedule == "constant":
            return self.config.lr
        return 0.5 * self.config.lr * (1.0 + math.cos(math.pi * self._progress(grad_step)))

    def _progress(self, grad_step: int) -> float:
        start, done = self._lr_anchor
        span = self.total_grad_steps - start
        if span <= 0:
            return 1.0
        return done + (1.0 - done) * (min(max(grad_step, start), self.total_grad_steps) - start) / span

    def extend(self, n_steps: int) -> None:
        """Make the run ``n_steps`` annealing steps long (more than ``config.n_steps``),
        as resuming a finished run for more steps does.

        The cosine learning-rate schedule then spans the whole longer run from its
        start, so the steps added train at the rate that schedule gives them rather than
        at the zero the shorter one ends on (the rate rises again); steps already taken
        keep the rates they had. A geometric-linear schedule keeps its length
        (``n_geometric`` is pinned to the old ``n_steps``).
        """
        if n_steps <= self.config.n_steps:
            raise ValueError(f"extend needs more than the run's {self.config.n_steps} annealing steps, got {n_steps}")
        self._lr_anchor = (0, 0.0)
        self._set_length(n_steps)

    def retime(self, n_steps: int) -> None:
        """Make the run ``n_steps`` annealing steps long (at least one, and no fewer than
        the steps already taken), as a time budget does, without a jump in the
        learning rate.

        The cosine schedule runs on from where it stands now to zero on the last of
        those steps: the rate stays continuous and only ever falls, whether the run gets
        shorter (it then falls faster) or longer (slower). A geometric-linear schedule
        keeps its length, as in ``extend``.
        """
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < max(1, self.step_index):
            raise ValueError(f"retime needs a whole number of annealing steps from max(1, steps taken = "
                             f"{self.step_index}) on, got {n_steps!r}")
        if n_steps == self.config.n_steps:
            return
        self._lr_anchor = (self.grad_step_index, self._progress(self.grad_step_index))
        self._set_length(n_steps)

    def _set_length(self, n_steps: int) -> None:
        pinned = self.config.n_geometric or self.config.n_steps
        self.config = dataclasses.replace(self.config, n_steps=n_steps, n_geometric=pinned)
        self.total_grad_steps = n_steps * self.config.grad_steps_per_step

    def run(self, n_steps: int | None = None, callback: Callable | None = None) -> list[dict]:
        """Annealing steps until ``n_steps`` (default ``config.n_steps``) have been taken in
        total (a resumed trainer continues where it stopped); more than ``config.n_steps``
        extends the run (``extend``). ``callback(trainer, record)`` runs after each step;
        returning True stops early, and a callback that shortens the run (``retime``)
        ends it at the new length. Returns ``history``."""
        n_steps = self.config.n_steps if n_steps is None else n_steps
        if n_steps > self.config.n_steps:
            self.extend(n_steps)
        while self.step_index < min(n_steps, self.config.n_steps):
            record = self.step()
            if callback is not None and callback(self, record):
                break
        return self.history

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit (tensors and plain python only, so it
        loads with ``torch.load(weights_only=True)``)."""
        return {
            "config": dataclasses.asdict(self.config),
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "step_index": self.step_index,
            "grad_step_index": self.grad_step_index,
            "lr_anchor": list(self._lr_anchor),
            "n_evaluations": self.n_evaluations,
            "wall_s": self.wall_s,
            "init": list(self._init),
            "optimised": None if self._optimised is None else [q.clone() for q in self._optimised],
            "history": [dict(r) for r in self.history],
            "rng": {"rng": self.rng.get_state(), "device": self.rng.device.type},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"]["path"] != self.config.path:
            raise ValueError(f"checkpoint was trained with path {state['config']['path']!r}, not {self.config.path!r}")
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["config"]["n_steps"] != self.config.n_steps:  # the stored run was extended or shortened
            self._set_length(state["config"]["n_steps"])
        self.buffer.load_state_dict(state["buffer"])
        self.step_index = int(state["step_index"])
        self.grad_step_index = int(state["grad_step_index"])
        start, done = state.get("lr_anchor", (0, 0.0))  # absent from checkpoints of earlier versions
        self._lr_anchor = (int(start), float(done))
        self.n_evaluations = int(state["n_evaluations"])
        self.wall_s = float(state["wall_s"])
        self._init = tuple(state["init"])
        if self._optimised is not None:
            if state.get("optimised") is None:
                raise ValueError("checkpoint has no optimised parameters; it was trained without ema_decay")
            for q, saved in zip(self._optimised, state["optimised"]):
                q.copy_(saved)
        self.history = [dict(r) for r in state["history"]]
        self._load_rng(state["rng"])

    def _load_rng(self, saved: dict) -> None:
        # Checkpoints of earlier versions hold the (CPU) minibatch stream as "generator".
        rng_state, device = (saved["rng"], saved["device"]) if "rng" in saved else (saved["generator"], "cpu")
        if device == self.rng.device.type:
            self.rng.set_state(rng_state)
            return
        # A CPU stream cannot continue on CUDA or the reverse; a fresh, reproducible one can.
        warnings.warn(
            f"the checkpoint's random stream belongs to {device}, the trainer runs on {self.rng.device.type}: "
            f"continuing with a stream seeded from (seed, step) = ({self.config.seed}, {self.step_index}), "
            "so the run will not repeat the draws of an uninterrupted one",
            RuntimeWarning, stacklevel=3,
        )
        self.rng.manual_seed(hash((self.config.seed, self.step_index)) % 2**63)
