"""Replay buffer of (x, log q_gen(x), log p~(x)) for the weighted forward-KL update."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """First-in first-out store of the last ``capacity`` samples.

    Each entry keeps the log density of the model that generated it, ``log_q`` (at the
    time of sampling), so that a later step can weight it by q_{i+1}(x) / q_gen(x), and
    ``log_p`` = log p~(x), so that no target evaluation is repeated.
    """

    def __init__(self, capacity: int):
        if not (isinstance(capacity, int) and capacity >= 1):
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.x: torch.Tensor | None = None
        self.log_q = torch.empty(0, dtype=torch.float64)
        self.log_p = torch.empty(0, dtype=torch.float64)

    def __len__(self) -> int:
        return self.log_q.numel()

    def push(self, x: torch.Tensor, log_q: torch.Tensor, log_p: torch.Tensor) -> None:
        """Append a batch (x [n, ...], log_q [n], log_p [n]); the oldest entries fall out."""
        x = x.detach()
        log_q = log_q.detach().to(torch.float64).reshape(-1)
        log_p = log_p.detach().to(torch.float64).reshape(-1)
        if not (x.shape[0] == log_q.numel() == log_p.numel()):
            raise ValueError(
                f"x, log_q and log_p must have the same leading size, got {x.shape[0]}, "
                f"{log_q.numel()}, {log_p.numel()}"
            )
        if self.x is not None and x.shape[1:] != self.x.shape[1:]:
            raise ValueError(f"x must have per-sample shape {tuple(self.x.shape[1:])}, got {tuple(x.shape[1:])}")
        self.x = x if self.x is None else torch.cat([self.x, x])[-self.capacity :]
        self.x = self.x[-self.capacity :]
        # The buffer lives on the device of the samples it holds.
        self.log_q = torch.cat([self.log_q.to(log_q.device), log_q])[-self.capacity :]
        self.log_p = torch.cat([self.log_p.to(log_p.device), log_p])[-self.capacity :]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "x": self.x, "log_q": self.log_q, "log_p": self.log_p}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.x, self.log_q, self.log_p = state["x"], state["log_q"], state["log_p"]
