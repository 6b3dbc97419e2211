r"""``torch.compile`` for the flow calls in the trainer's hot loops, checked against eager.

The trainer makes three kinds of flow calls many times per annealing step:

* ``loss_and_grads(x, w)``: the weighted forward-KL loss :math:`-\sum_k w_k \log q(x_k)`
  of one minibatch and its gradient with respect to the trainable parameters (with
  ``tilt`` t > 0 the weights are first tilted by the model's own density,
  :math:`w_k \propto w_k\, q(x_k)^{-t}`, and renormalised: the gradient of an
  alpha-divergence of order 1 + t, ``CMTConfig.fit_order``);
* ``log_prob(x)``: :math:`\log q` of the whole replay buffer, without gradient;
* ``sample(n, generator)``: fresh samples and their :math:`\log q`, without gradient.

``FlowCalls`` runs each through ``torch.compile`` (Inductor) when asked, with fixed
shapes so that every kind compiles once: the loss only for full minibatches of
``batch_size`` (any other size runs eagerly), ``log_prob`` and sampling in chunks of
``chunk_size`` rows, the last chunk padded to full size and the padding dropped.

A flow that names its blocks (``compile_regions() -> [(module, method name)]``: the
coupling layers of ``openmm_cmt.flows`` and the internal-coordinate transform) can be
compiled region by region (``regional``): each block's method goes through
``torch.compile`` and the glue between blocks (prior, scaling) stays eager. Blocks of
equal shapes share one graph, and Inductor's code generation, which grows faster than
linearly with a graph's size, handles several small graphs instead of one large one. On
one thread of a 2-core CPU this halved the compile time of the laptop flow, with
sampling faster, log densities 7 % slower and the forward-KL step 15 % slower than one
graph; within ``make demo`` (two threads) sampling by region compiled in 70 s instead of
118 s but its annealing steps ran slower (BENCHMARKS.md). On an H200 (the ``gpu`` flow,
minibatch 16,384) the forward-KL step compiled by region trained at 332k samples/s
against 533k as one graph, and sampling and log densities ran 4-7 % slower, for first
calls of 58, 23 and 26 s. Whole graphs stay the default (``REGIONAL_KINDS`` is empty);
``openmm-cmt bench flow --modes compiled-regional`` times the other way.

Sampling is compiled only for flows that split it into a random draw and a
deterministic map (``sample_latent(n, generator)``, ``latent_to_positions(z)``,
``prior_log_prob(z)``, as ``openmm_cmt.flows.Generator`` does): the latent draw stays
eager, so compiled and eager runs consume the random streams identically and draw the
same samples. Other flows sample eagerly.

On CUDA the graphs can also be captured as CUDA graphs (``mode="reduce-overhead"``,
Inductor's CUDA-graph trees), which replays every kernel launch of a call at once, for
the launch-bound small batches of a flow step. A replay writes its outputs into the same
memory as the one before, so ``FlowCalls`` marks each call as a new step
(``torch.compiler.cudagraph_mark_step_begin``) and copies out what it returns. On a CPU
the mode compiles as ``"default"`` does.

The first compiled call of each kind, whole or by region, is compared with the eager
flow on the same inputs: the loss and the norm of the gradient (and of the difference of
the two gradients) for the training step; values for the others. If compilation fails or
the results disagree, one ``RuntimeWarning`` names the reason and that kind of call runs
eagerly from then on, so a miscompiled graph can never train the flow silently.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import warnings

import torch

#: Relative agreement required of the first compiled call of each kind: fusion changes
#: the rounding, a miscompiled graph is wrong at order one.
CHECK_RTOL = {torch.float64: 1e-6, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}

KINDS = ("loss", "log_prob", "sample")

#: The kinds ``FlowCalls`` compiles region by region by default (module docstring): none.
REGIONAL_KINDS: tuple[str, ...] = ()

#: ``torch.compile`` modes ``FlowCalls`` accepts (module docstring).
COMPILE_MODES = ("default", "reduce-overhead")

#: Compiled variants allowed per region (dynamo's ``recompile_limit``, default 8): one per
#: block shape, direction, batch size and grad mode, so a dozen for a typical flow.
REGION_RECOMPILE_LIMIT = 64


def compile_available(device: torch.device) -> bool:
    """Whether ``torch.compile`` can generate code for ``device``: CUDA (Triton ships
    with CUDA builds of torch), or CPU with a C++ compiler on PATH."""
    if not hasattr(torch, "compile"):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


def _flow_device_dtype(flow: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in flow.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with copies of its first row appended up to ``size`` rows (valid inputs, so
    the padding cannot produce NaN in the rows that are kept)."""
    missing = size - x.shape[0]
    if missing <= 0:
        return x
    return torch.cat([x, x[:1].expand(missing, *x.shape[1:])])


class FlowCalls:
    """The trainer's flow calls, compiled where enabled and verified (module docstring).

    Parameters
    ----------
    flow
        a module with ``sample(n, generator=None) -> (x, log_q)`` and
        ``log_prob(x) -> [n]``.
    enabled
        compile every kind (True), none (False), or a mapping from kind to the rows
        that kind runs eagerly before it is compiled (0: from the first call; kinds
        left out always run eagerly). Deferring a kind is rent-or-buy: a kind whose use
        is not known in advance (the buffer's log densities, needed only while the trust
        region binds) is compiled once its eager calls have cost about what compiling
        would.
    batch_size
        the minibatch size whose loss is compiled.
    chunk_size
        rows per compiled ``log_prob`` / sampling call.
    regional
        the kinds compiled region by region when the flow names its regions
        (``compile_regions()``, module docstring); the others as whole calls.
    mode
        ``"default"``, or ``"reduce-overhead"`` to capture CUDA graphs on CUDA.
    tilt
        t >= 0: the loss weights become :math:`w_k q(x_k)^{-t}`, renormalised over the
        minibatch, with q the model being fitted, not differentiated through.

    Attributes
    ----------
    compiled
        per kind (``loss``, ``log_prob``, ``sample``), whether calls of that kind
        currently go through the compiled graph (False after a fallback, and for a
        deferred kind until its eager rows are spent).
    eager_rows_left
        per deferred kind not yet compiled, the rows it still runs eagerly.
    checked
        kinds whose first compiled call has been verified.
    log_mass
        with a tilt, log sum_k w_k q(x_k)^-t of the last ``loss_and_grads`` minibatch
        (float64; None without a tilt).
    """

    def __init__(self, flow: torch.nn.Module, enabled: bool, batch_size: int, chunk_size: int = 8192,
                 regional=REGIONAL_KINDS, mode: str = "default", tilt: float = 0.0):
        if not (isinstance(batch_size, int) and batch_size >= 1 and isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"batch_size and chunk_size must be positive integers, got {batch_size!r}, {chunk_size!r}")
        if not set(regional) <= set(KINDS):
            raise ValueError(f"regional must name kinds among {KINDS}, got {regional!r}")
        if mode not in COMPILE_MODES:
            raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
        if not (isinstance(tilt, (int, float)) and math.isfinite(tilt) and tilt >= 0):
            raise ValueError(f"tilt must be a finite number >= 0, got {tilt!r}")
        self.flow = flow
        self.tilt = float(tilt)
        self.log_mass: torch.Tensor | None = None
        self.mode = mode
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.params = [p for p in flow.parameters() if p.requires_grad]
        self._latent_split = all(hasattr(flow, a) for a in ("sample_latent", "latent_to_positions", "prior_log_prob"))
        after = _rows_before_compiling(enabled)
        kinds = {kind for kind in after if self._latent_split or kind != "sample"}
        self.eager_rows_left = {kind: after[kind] for kind in kinds if after[kind] > 0}
        self.compiled = {kind: kind in kinds and kind not in self.eager_rows_left for kind in KINDS}
        self.checked: set[str] = set()
        eager = {"loss": self._eager_loss, "log_prob": self._eager_log_prob, "sample": self._eager_latent_map}
        regional = set(regional) & kinds if hasattr(flow, "compile_regions") else set()
        regions = list(flow.compile_regions()) if regional else []
        self._regions = [(module, name, torch.compile(getattr(module, name), dynamic=False, mode=mode))
                         for module, name in regions]
        # dynamo's name for the limit changed across torch versions: patch whichever exist
        self._region_limits = {name: REGION_RECOMPILE_LIMIT for name in ("recompile_limit", "cache_size_limit")
                               if regions and hasattr(torch._dynamo.config, name)}
        self._fns = {kind: self._regional(eager[kind]) if kind in regional
                     else torch.compile(eager[kind], dynamic=False, mode=mode) for kind in KINDS if kind in kinds}

    def _count_eager(self, kind: str, rows: int) -> None:
        """Counts ``rows`` run eagerly by a deferred ``kind``; compiles it once its
        allowance is spent."""
        if kind in self.eager_rows_left:
            self.eager_rows_left[kind] -= rows
            if self.eager_rows_left[kind] <= 0:
                del self.eager_rows_left[kind]
                self.compiled[kind] = True

    # -- regional compilation ---------------------------------------------------------------
    def _regional(self, fn):
        """``fn`` run with every region's method replaced by its compiled one."""

        def call(*args):
            with self._compiled_regions():
                return fn(*args)

        return call

    @contextlib.contextmanager
    def _compiled_regions(self):
        try:
            with torch._dynamo.config.patch(**self._region_limits), warnings.catch_warnings():
                # A region's input is an intermediate of the flow; dynamo reads its
                # ``.grad`` while tracing it, which torch warns about for non-leaf tensors.
                warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
                for module, name, compiled in self._regions:
                    setattr(module, name, compiled)
                yield
        finally:
            for module, name, _ in self._regions:
                module.__dict__.pop(name, None)

    # -- the eager definitions (also the reference of the checks) -----------------------
    def _eager_loss(self, x: torch.Tensor, weights: torch.Tensor):
        """The weighted loss; with a tilt, (loss, log of the tilted weights' sum)."""
        log_q = self.flow.log_prob(x)
        if not self.tilt:
            return -(weights.to(log_q.dtype) * log_q).sum()
        log_w = torch.log(weights.to(torch.float64)) - self.tilt * log_q.detach().to(torch.float64)
        log_mass = torch.logsumexp(log_w, 0)
        # A process whose rows all carry zero weight (their share of a data-parallel
        # minibatch underflowed) contributes nothing, not 0/0.
        norm = torch.where(torch.isfinite(log_mass), log_mass, torch.zeros_like(log_mass))
        return -(torch.exp(log_w - norm).to(log_q.dtype) * log_q).sum(), log_mass

    def _eager_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)

    def _eager_latent_map(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet = self.flow.latent_to_positions(z)
        return x, self.flow.prior_log_prob(z) - logdet

    # -- dispatch -------------------------------------------------------------------------
    def _call(self, kind: str, *args):
        """The compiled ``kind`` call; under CUDA graphs a new step, its outputs copied out
        of the graph's memory before the next replay overwrites them."""
        if self.mode != "reduce-overhead":
            return self._fns[kind](*args)
        torch.compiler.cudagraph_mark_step_begin()
        out = self._fns[kind](*args)
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

    def _fallback(self, kind: str, reason: str) -> None:
        self.compiled[kind] = False
        self.eager_rows_left.pop(kind, None)
        warnings.warn(f"torch.compile of the flow's {kind} call {reason}; running it eagerly from now on",
                      RuntimeWarning, stacklevel=4)

    def _grads(self, loss: torch.Tensor) -> list[torch.Tensor | None]:
        return list(torch.autograd.grad(loss, self.params, allow_unused=True))

    def loss_and_grads(self, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The weighted forward-KL loss of a minibatch (detached) and its gradient, one
        entry per trainable parameter (None where the loss does not depend on it). With a
        tilt, ``log_mass`` then holds log sum_k w_k q(x_k)^-t of the minibatch (what
        data-parallel training weighs the processes' minibatches by)."""
        if self.compiled["loss"] and x.shape[0] == self.batch_size:
            try:
                loss, log_mass = self._split(self._call("loss", x, weights))
                grads = self._grads(loss)
                if self.mode == "reduce-overhead":
                    grads = [None if g is None else g.clone() for g in grads]
                if "loss" not in self.checked:
                    self._check_loss(x, weights, loss, grads)
                    self.checked.add("loss")
                self.log_mass = log_mass
                return loss.detach(), grads
            except Exception as err:  # compilation errors surface at the first (backward) call
                self._fallback("loss", _describe(err))
        loss, self.log_mass = self._split(self._eager_loss(x, weights))
        self._count_eager("loss", x.shape[0])
        return loss.detach(), self._grads(loss)

    def _split(self, out) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (out[0], out[1].detach()) if self.tilt else (out, None)

    def _check_loss(self, x, weights, loss, grads) -> None:
        ref_loss, _ = self._split(self._eager_loss(x, weights))
        ref_grads = self._grads(ref_loss)
        loss, ref_loss = loss.detach(), ref_loss.detach()
        rtol = CHECK_RTOL.get(loss.dtype, 1e-3)
        if not torch.isclose(loss, ref_loss, rtol=rtol, atol=rtol).item():
            raise _Mismatch(f"loss {float(loss):.9g} differs from eager {float(ref_loss):.9g}")
        pairs = [(g, r) for g, r in zip(grads, ref_grads) if r is not None or g is not None]
        if any((g is None) != (r is None) for g, r in pairs):
            raise _Mismatch("gradient differs from eager in which parameters it reaches")
        pairs = [(g, r) for g, r in pairs if r is not None]
        norm = _norm([g for g, _ in pairs])
        ref_norm = _norm([r for _, r in pairs])
        diff = _norm([g - r for g, r in pairs])
        if not (torch.isfinite(norm) and torch.isclose(norm, ref_norm, rtol=rtol, atol=rtol * 1e-3)):
            raise _Mismatch(f"gradient norm {float(norm):.9g} differs from eager {float(ref_norm):.9g}")
        if diff > rtol * ref_norm + rtol * 1e-3:
            raise _Mismatch(f"gradient differs from eager by {float(diff):.3g} (norm {float(ref_norm):.3g})")

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)`` for any number of rows, in chunks of ``chunk_size``."""
        out = []
        for start in range(0, x.shape[0], self.chunk_size):
            chunk = x[start : start + self.chunk_size]
            out.append(self._log_prob_chunk(chunk)[: chunk.shape[0]])
        return torch.cat(out) if out else self.flow.log_prob(x)

    def _log_prob_chunk(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.compiled["log_prob"]:
            try:
                values = self._call("log_prob", _pad_rows(chunk, self.chunk_size))
                if "log_prob" not in self.checked:
                    _check_close("log_prob", values[: chunk.shape[0]], self._eager_log_prob(chunk))
                    self.checked.add("log_prob")
                return values
            except Exception as err:
                self._fallback("log_prob", _describe(err))
        self._count_eager("log_prob", chunk.shape[0])
        return self._eager_log_prob(chunk)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``flow.sample(n, generator)`` without gradient; the same draws as the eager call.

        A flow with a latent split is mapped in chunks of ``chunk_size`` rows, compiled
        or not: on two CPU cores the ``laptop`` and ``cpu`` presets' flows mapped 32,768
        rows eagerly in 3.3 and 5.9 s as one call, 2.0 and 3.8 s in chunks of 8,192
        (BENCHMARKS.md)."""
        if not self._latent_split:
            return self.flow.sample(n, generator=generator)
        z = self.flow.sample_latent(n, generator)
        xs, log_qs = [], []
        for start in range(0, n, self.chunk_size):
            chunk = z[start : start + self.chunk_size]
            x, log_q = self._sample_chunk(chunk)
            xs.append(x[: chunk.shape[0]])
            log_qs.append(log_q[: chunk.shape[0]])
        return torch.cat(xs), torch.cat(log_qs)

    def _sample_chunk(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compiled["sample"]:
            try:
                x, log_q = self._call("sample", _pad_rows(z, self.chunk_size))
                if "sample" not in self.checked:
                    ref_x, ref_log_q = self._eager_latent_map(z)
                    _check_close("sample positions", x[: z.shape[0]], ref_x)
                    _check_close("sample log_q", log_q[: z.shape[0]], ref_log_q)
                    self.checked.add("sample")
                return x, log_q
            except Exception as err:
                self._fallback("sample", _describe(err))
        self._count_eager("sample", z.shape[0])
        return self._eager_latent_map(z)


def _rows_before_compiling(enabled) -> dict[str, int]:
    """``FlowCalls``' ``enabled`` as {kind: eager rows before compiling}."""
    if isinstance(enabled, bool):
        return dict.fromkeys(KINDS, 0) if enabled else {}
    if not hasattr(enabled, "items"):
        raise ValueError(f"enabled must be True, False or a mapping from kind to rows, got {enabled!r}")
    unknown = set(enabled) - set(KINDS)
    if unknown:
        raise ValueError(f"enabled names unknown kinds {sorted(unknown)}; expected some of {KINDS}")
    for kind, rows in enabled.items():
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"enabled[{kind!r}] must be an integer >= 0 (eager rows before compiling), got {rows!r}")
    return dict(enabled)


class _Mismatch(RuntimeError):
    """The compiled result disagrees with the eager one."""


def _describe(err: Exception) -> str:
    if isinstance(err, _Mismatch):
        return f"disagrees with the eager flow ({err})"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"failed ({type(err).__name__}: {first[:300]})"


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors]))


def _check_close(what: str, value: torch.Tensor, reference: torch.Tensor) -> None:
    rtol = CHECK_RTOL.get(reference.dtype, 1e-3)
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(value)):
        raise _Mismatch(f"{what}: finite where eager is not, or the reverse")
    if not torch.allclose(value[finite], reference[finite], rtol=rtol, atol=rtol):
        err = float((value[finite] - reference[finite]).abs().max())
        raise _Mismatch(f"{what} differ from eager by up to {err:.3g}")
