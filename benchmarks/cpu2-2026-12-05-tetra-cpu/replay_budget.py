"""Replay a run's recorded step times through ``TimeBudget`` under two rules: a run that
is only ever shortened, and one retimed both ways up to its planned length (as
``BoltzmannGeneratorSampler.train`` now does).

    python replay_budget.py HISTORY_JSON BUDGET_MINUTES PLANNED_STEPS BUFFER_STEPS

Steps after the last recorded one take the mean of its last 20.
"""

import json
import sys

from openmm_cmt.cmt.time_budget import TimeBudget


def replay(walls, seconds, planned, fill, lengthen):
    tail = sum(walls[-20:]) / len(walls[-20:])
    now = [0.0]
    budget = TimeBudget(seconds, warmup_steps=max(2, fill + 1), clock=lambda: now[0])
    length, taken = planned, 0
    while taken < length:
        now[0] += walls[taken] if taken < len(walls) else tail
        taken += 1
        left = budget.step_done()
        if left is None:
            continue
        if left == 0:
            break
        wanted = max(1, taken, min(planned, taken + left))
        if wanted < length or (lengthen and taken < length):
            length = wanted
    return taken, now[0]


if __name__ == "__main__":
    path, minutes, planned, fill = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    walls = [record["step_wall_s"] for record in json.load(open(path))]
    for name, lengthen in (("only shortened", False), ("retimed both ways", True)):
        steps, end = replay(walls, 60 * minutes, planned, fill, lengthen)
        print(f"{name}: {steps} steps, training ends at {end:.0f} s of {60 * minutes:.0f}")
