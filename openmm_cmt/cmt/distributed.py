r"""Data-parallel CMT over ``torch.distributed``: one process per CPU share or GPU.

Launch with ``torchrun --nproc-per-node N -m openmm_cmt train ...`` (or ``openmm-cmt
train --nproc N``); every process builds the same flow and its own energy engine, and
:class:`DistributedCMTTrainer` splits each annealing step across the processes so that
it computes the one-process step of the same total sample count:

* sampling and energies: process r draws its share (``shard``) of the step's
  ``samples_per_step`` fresh samples from its own random stream (seeded ``seed + r``) and
  evaluates them on its own engine and device;
* the dual: the per-sample vectors :math:`\log q_i(x)`, :math:`\log\tilde p(x)` of the
  fresh samples (a few numbers per sample) are all-gathered in rank order, and every
  process solves the same dual on the same global vectors, so all agree on
  :math:`q_{i+1}` bit for bit, and the energy cut of ``drop_top_energy_fraction`` is
  taken over the global sample set;
* the replay buffer is sharded: each process keeps its own samples (capacity: its share
  of ``buffer_size``); the buffer weights need no normalisation, as below. Each shard is
  first-in first-out on its own, so when an energy cut keeps more rows in one process
  than another, the shards together may hold a few other old rows than one buffer would;
* the forward-KL minibatch is the union of one minibatch per process (its share of
  ``batch_size`` from its shard); the weights are self-normalised with the global sum
  (one all-gathered log-sum-exp per gradient step), so each process's loss is its part
  of the one-process minibatch loss
  :math:`-\sum_{k\in B}\bar w_k\log q_\theta(x_k)`, and the sum of the processes'
  gradients is the gradient of the whole minibatch. Reverse KL divides by the global
  batch for the same reason;
* gradients are summed with one explicit ``all_reduce`` per step over the flattened
  gradient rather than through ``DistributedDataParallel``: the trainer takes gradients
  with ``torch.autograd.grad`` (eager or compiled, :mod:`openmm_cmt.cmt.compiled`), not
  ``backward()``, which DDP's hooks need; the sum (not the mean) is right because the
  weights are already normalised over all processes. Every process then applies the same
  clipped gradient with the same optimiser state, so the flows stay identical.

With these rules the annealing path of N processes is that of one process drawing the
same samples; only the order of the sums differs (the tests replay two processes' order
in one process and get the same path bit for bit). One process of this trainer draws
exactly what ``CMTTrainer`` draws.

Process group: ``gloo`` for CPU, ``NCCL`` for CUDA (``init_process_group``). Checkpoints
gather each process's buffer shard and random states to rank 0, which writes them; a
checkpoint resumes only with the world size that wrote it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from openmm_cmt.cmt.trainer import CMTConfig, CMTTrainer

#: Seconds a collective waits for a missing process before the job fails.
DEFAULT_TIMEOUT_S = 600.0


def active() -> bool:
    """Whether this process belongs to an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the job (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0)."""
    return rank() == 0


def launched() -> bool:
    """Whether a launcher (``torchrun``) started this process as one of a job."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def init_process_group(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the job ``torchrun`` started: ``gloo`` for ``device_type="cpu"``, NCCL (one
    GPU per process, ``cuda:LOCAL_RANK``) for ``"cuda"``. Returns this process's device.

    Raises ValueError outside ``torchrun``, for an unknown device type, or with more
    processes on a node than GPUs."""
    if not launched():
        raise ValueError("no torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); "
                         "launch with torchrun --nproc-per-node N -m openmm_cmt ... or openmm-cmt train --nproc N")
    if not timeout_s > 0:
        raise ValueError(f"the process-group timeout must be positive (seconds), got {timeout_s}")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"process with local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                             "visible): start at most one process per GPU, or train with --device cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_type == "cpu":
        device, backend = torch.device("cpu"), "gloo"
    else:
        raise ValueError(f"device type must be 'cpu' or 'cuda', got {device_type!r}")
    if not active():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if backend == "nccl" else {}))
    return device


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if active():
        dist.destroy_process_group()


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (collective; ``flag`` without a process
    group), so that all processes stop at the same annealing step."""
    if not active():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([int(bool(flag))])).item())


def shard(n: int, rank_: int, size: int) -> range:
    """Rows of rank ``rank_`` among ``size`` processes in a global batch of ``n`` rows:
    contiguous, in rank order, shares differing by at most one."""
    base, extra = divmod(n, size)
    start = rank_ * base + min(rank_, extra)
    return range(start, start + base + (rank_ < extra))


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every process's ``[n_r, ...]`` tensor concatenated in rank order (any n_r)."""
    device = _comm_device()
    local = t.detach().to(device)
    size = torch.tensor([local.shape[0]], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = torch.cat([local, local.new_zeros(max(counts) - local.shape[0], *local.shape[1:])])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over processes of ``t`` (a new tensor on ``t``'s device)."""
    out = t.detach().clone().to(_comm_device())
    dist.all_reduce(out)
    return out.to(t.device)


def check_world_size(trainer_state: dict | None, size: int) -> None:
    """Raise ValueError when a checkpoint's trainer state was written by another number
    of processes than ``size`` (its buffer shards and random streams are per process)."""
    if trainer_state is None:
        return
    saved = int((trainer_state.get("distributed") or {}).get("world_size", 1))
    if saved != size:
        raise ValueError(f"the checkpoint was written by {saved} training process(es) and holds their buffer shards "
                         f"and random streams; resume it with {saved} (--nproc {saved}), not {size}")


class DistributedCMTTrainer(CMTTrainer):
    """``CMTTrainer`` split across the processes of the current process group (module
    docstring). Every process constructs it with the same flow, config and a target of
    its own; ``step``, ``run``, ``state_dict`` and ``load_state_dict`` are collective
    (all processes call them in the same order). The flow's parameters and buffers are
    broadcast from rank 0 at construction (floating-point ones; the others
    follow from the architecture).

    Raises ValueError without a process group, or when ``samples_per_step``,
    ``batch_size`` or ``buffer_size`` leave a process with no rows.
    """

    def __init__(self, flow: torch.nn.Module, target, config: CMTConfig | None = None):
        if not active():
            raise ValueError("DistributedCMTTrainer needs an initialised process group (init_process_group)")
        config = config or CMTConfig()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        for name in ("samples_per_step", "batch_size", "buffer_size"):
            if getattr(config, name) < self.world_size:
                raise ValueError(f"{name} = {getattr(config, name)} leaves some of the {self.world_size} "
                                 "processes without samples; raise it or use fewer processes")
        if config.path == "reverse-kl" and min(config.reverse_kl_batches()) < self.world_size:
            raise ValueError(f"reverse_kl_batch_size must be at least the number of processes ({self.world_size})")
        # The base class seeds its stream (draws and minibatches) from config.seed: seed + rank
        # gives every process a stream of its own.
        super().__init__(flow, target, dataclasses.replace(config, seed=config.seed + self.rank))
        self.config = config
        with torch.no_grad():
            for t in [t for t in (*flow.parameters(), *flow.buffers()) if t.is_floating_point()]:
                synced = t.detach().clone().to(_comm_device())
                dist.broadcast(synced, src=0)
                t.copy_(synced)

    # -- the hooks of CMTTrainer --------------------------------------------------------
    def _shard(self, n: int) -> range:
        return shard(n, self.rank, self.world_size)

    def _gather_fresh(self, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stacked = torch.stack([v.to(values[0].device, torch.float64) for v in values], 1)
        return tuple(all_gather_rows(stacked).unbind(1))

    def _own_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        mine = self._shard(n)
        return rows[(rows >= mine.start) & (rows < mine.stop)] - mine.start

    def _minibatch_weights(self, log_w: torch.Tensor) -> torch.Tensor:
        local = torch.logsumexp(log_w, 0).reshape(1)
        return torch.exp(log_w - torch.logsumexp(all_gather_rows(local), 0))

    def _tilted_share(self, loss: torch.Tensor, grads, log_mass: torch.Tensor):
        share = torch.exp(log_mass - torch.logsumexp(all_gather_rows(log_mass.reshape(1)), 0))
        return loss * share.to(loss.dtype), [None if g is None else g * share.to(g.dtype) for g in grads]

    def _reduce_grads(self, loss: torch.Tensor, grads):
        grads = list(grads)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, g in enumerate(grads):
            if g is not None:
                by_dtype.setdefault(g.dtype, []).append(i)
        for indices in by_dtype.values():
            flat = all_reduce_sum(torch.cat([grads[i].reshape(-1) for i in indices]))
            for i, part in zip(indices, flat.split([grads[i].numel() for i in indices])):
                grads[i] = part.view_as(grads[i]).to(grads[i].device)
        return all_reduce_sum(loss.detach().reshape(1)).reshape(()), grads

    def _log_p(self, x: torch.Tensor) -> torch.Tensor:
        before = self.n_evaluations
        out = super()._log_p(x)
        # Every process reports the job's evaluations, as one process would count them.
        self.n_evaluations = before + int(all_reduce_sum(torch.tensor([self.n_evaluations - before])).item())
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``CMTTrainer.state_dict`` of rank 0 with ``buffer`` and ``rng`` replaced by
        ``distributed``: world_size and, per rank, its buffer shard, random states and
        sampling stream. Collective; complete on rank 0 only (``shards`` is None elsewhere)."""
        state = super().state_dict()
        own = {"buffer": _to_cpu(state.pop("buffer")), "rng": state.pop("rng")}
        shards = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(own, shards, dst=0)
        state["distributed"] = {"world_size": self.world_size, "shards": shards}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state written by the same number of processes (ValueError otherwise)."""
        check_world_size(state, self.world_size)
        own = state["distributed"]["shards"][self.rank]
        device = self.rng.device
        buffer = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in own["buffer"].items()}
        super().load_state_dict({**state, "buffer": buffer, "rng": own["rng"]})


def _to_cpu(tree: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in tree.items()}


def trainer_class() -> type[CMTTrainer]:
    """``DistributedCMTTrainer`` inside a process group, else ``CMTTrainer``."""
    return DistributedCMTTrainer if active() else CMTTrainer
