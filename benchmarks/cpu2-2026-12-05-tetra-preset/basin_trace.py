"""Print a run's basin trace: per residue, the share of each step's draws in the
alpha_L/C7ax basin and its reweighted population, at chosen annealing steps.

    python basin_trace.py RUN/history.json [BASIN]
"""

import json
import sys


def main(path: str, basin: str = "alpha_L/C7ax") -> None:
    history = json.load(open(path))
    traced = [h for h in history if h.get("basins")]
    if not traced:
        raise SystemExit(f"{path}: no record has a basin trace")
    residues = list(traced[0]["basins"])
    n = len(history)
    steps = sorted({s for s in (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 100, 120, 140, 160, 180, 200, n) if s <= n})
    print(f"{basin}: share of the step's draws / reweighted population")
    print("| step | beta | " + " | ".join(residues) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in residues) + " |")
    for s in steps:
        h = history[s - 1]
        cells = []
        for r in residues:
            share, population = h["basins"][r][basin]
            cells.append(f"{share:.4f} / {population:.4f}")
        print(f"| {s} | {h['beta']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
