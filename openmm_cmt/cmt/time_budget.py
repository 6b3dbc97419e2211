"""Fitting a training run into a wall-clock budget.

A run cut off at a deadline stops with its cosine learning rate near the peak, where the
generator is still moving; a run that knows its budget can instead end its schedule
on the last step that fits (``CMTTrainer.retime``). ``TimeBudget`` says how many more
annealing steps fit, from the wall time between the ends of recent steps. The first
steps of a process are left out of that estimate: they include compiling the flow
calls (minutes on a GPU, where a later step takes seconds) and, while the replay buffer
fills, a pass over the buffer that grows from step to step (on two CPU cores the
`cpu` preset's steps took 22-27 s then and 14-17 s once the buffer was full).

The estimate is optimistic: the shortest of the recent steps. Steps run slower for a
while and then faster again (while the trust region binds, the buffer goes through the
flow; the annealing steps before beta = 1 ran up to a fifth slower than those after
it), and an estimate from typical recent steps took a run of the ``laptop`` preset down
to 28 steps where 38 fitted. With the shortest step a run is shortened only once even
its fastest recent steps would overrun, and then a step or two at a time as the
deadline nears, and the last step ends within about one step's variation of the
deadline. Steps that get faster for good make room again: a run of the alanine
tetrapeptide shortened while its steps took 25 s ran them in 18 s after beta = 1 and,
held to the length it was then given, ended 12 minutes before its deadline. The estimate then
lengthens the run, up to the length it was planned with; ``retime`` keeps the learning
rate continuous and falling either way.
"""

from __future__ import annotations

import math
import time
from typing import Callable


class TimeBudget:
    """How many annealing steps still fit before a deadline.

    Parameters
    ----------
    seconds
        the budget, counted from construction.
    warmup_steps
        steps at the start whose durations are not used (compilation).
    min_timed
        steps after the warm-up to time before estimating (the steps while the replay
        buffer fills, or the first ones after compiling, can run slower than the rest).
    window
        the estimate is the shortest duration among at most this many recent steps.
    clock
        seconds, monotonic (``time.perf_counter``).
    """

    def __init__(self, seconds: float, warmup_steps: int = 2, min_timed: int = 3, window: int = 5,
                 clock: Callable[[], float] = time.perf_counter):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"the time budget must be a positive number of seconds, got {seconds!r}")
        if warmup_steps < 0 or not 1 <= min_timed <= window:
            raise ValueError(f"need warmup_steps >= 0 and 1 <= min_timed <= window, got {warmup_steps}, "
                             f"{min_timed} and {window}")
        self.clock, self.warmup_steps, self.min_timed, self.window = clock, warmup_steps, min_timed, window
        self.start = clock()
        self.deadline = self.start + seconds
        self._ends: list[float] = []

    def step_done(self) -> int | None:
        """Record the end of a step; return how many more steps fit in the time left
        (0 once the deadline has passed), or None while fewer than ``min_timed`` steps
        after the warm-up have been timed and the deadline is still ahead."""
        now = self.clock()
        self._ends.append(now)
        if now >= self.deadline:
            return 0
        durations = [b - a for a, b in zip([self.start] + self._ends[:-1], self._ends)][self.warmup_steps:]
        if len(durations) < self.min_timed:
            return None
        per_step = min(durations[-self.window:])
        return int((self.deadline - now) // per_step) if per_step > 0 else None

    @property
    def seconds_left(self) -> float:
        return self.deadline - self.clock()
