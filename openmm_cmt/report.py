"""PNG plots of a run and an HTML page that gathers them.

matplotlib is optional (``pip install openmm-cmt[plots]``): without it the report lists
the metrics and says that plots were skipped.
"""

from __future__ import annotations

import html
import io
import os

import numpy as np

from openmm_cmt.checkpoint import atomic_write_bytes, atomic_write_text


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def ramachandran_plot(path, phi_psi, log_weights=None, reference=None, bins=100):
    """Ramachandran free energy (-log density) of generator samples as drawn, reweighted
    to the Boltzmann distribution, and of the reference."""
    plt = _pyplot()
    if plt is None:
        return False
    panels = [("generator", phi_psi, None)]
    if log_weights is not None:
        panels.append(("generator, reweighted", phi_psi, log_weights))
    if reference is not None:
        panels.append(("reference", reference, None))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    for ax, (title, angles, lw) in zip(axes[0], panels):
        w = None if lw is None else np.exp(lw - np.max(lw))
        h, _, _ = np.histogram2d(angles[:, 0], angles[:, 1], bins=[edges, edges], weights=w, density=True)
        with np.errstate(divide="ignore"):
            free_energy = -np.log(h.T)
        # Free energy in kT above the minimum, shown up to 10 kT (empty bins left blank).
        free_energy = free_energy - np.min(free_energy[np.isfinite(free_energy)])
        mesh = ax.pcolormesh(edges, edges, free_energy, cmap="viridis", shading="flat", vmin=0.0, vmax=10.0)
        ax.set_title(f"{title} (n={len(angles)})")
        ax.set_xlabel("phi / rad")
        ax.set_ylabel("psi / rad")
        ax.set_aspect("equal")
    fig.colorbar(mesh, ax=axes[0].tolist(), label="free energy / kT", shrink=0.8)
    _save(fig, path)
    plt.close(fig)
    return True


def annealing_plot(path, history):
    """lambda, eta and the effective exponents of q_i and p~ per annealing step."""
    plt = _pyplot()
    if plt is None or not history:
        return False
    steps = np.arange(1, len(history) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("lam", "lambda (trust region)"), ("eta", "eta (entropy)")):
        a.plot(steps, [h.get(key, np.nan) for h in history], label=label)
    a.set_yscale("symlog")
    a.set_xlabel("annealing step")
    a.set_title("dual variables")
    a.legend()
    for key, label in (("alpha", "exponent of q_i"), ("beta", "exponent of p~")):
        b.plot(steps, [h.get(key, np.nan) for h in history], label=label)
    b.set_xlabel("annealing step")
    b.set_title("annealing path")
    b.legend()
    _save(fig, path)
    plt.close(fig)
    return True


def ess_plot(path, history):
    """ESS of the step weights and reverse ESS of the flow per annealing step."""
    plt = _pyplot()
    if plt is None or not history:
        return False
    steps = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("ess", "step weights q_{i+1}/q_i"), ("reverse_ess", "flow vs target (reverse)")):
        values = [h.get(key, np.nan) for h in history]
        if np.isfinite(values).any():
            ax.plot(steps, values, label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("annealing step")
    ax.set_ylabel("ESS fraction")
    ax.legend()
    _save(fig, path)
    plt.close(fig)
    return True


def energy_plot(path, energies, log_weights=None, reference=None, unit="kJ/mol"):
    """Energy histograms: flow samples, reweighted flow samples and the reference."""
    plt = _pyplot()
    if plt is None:
        return False
    finite = np.isfinite(energies)
    lo, hi = np.percentile(energies[finite], [0.5, 99.5])
    if reference is not None:
        lo, hi = min(lo, np.min(reference)), max(hi, np.percentile(reference, 99.9))
    edges = np.linspace(lo, hi, 80)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(energies[finite], bins=edges, density=True, histtype="step", label="flow samples")
    if log_weights is not None:
        w = np.exp(log_weights[finite] - np.max(log_weights[finite]))
        ax.hist(energies[finite], bins=edges, weights=w, density=True, histtype="step", label="reweighted")
    if reference is not None:
        ax.hist(reference, bins=edges, density=True, histtype="step", label="reference")
    ax.set_xlabel(f"energy / {unit}")
    ax.legend()
    _save(fig, path)
    plt.close(fig)
    return True


def write_html(path, title, metrics: dict, images: list[str], note: str = "") -> None:
    """A self-contained page: a metrics table and the PNGs next to it."""
    rows = "\n".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in metrics.items()
    )
    imgs = "\n".join(f'<figure><img src="{html.escape(os.path.basename(p))}"></figure>' for p in images)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td{{padding:2px 12px}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(note)}</p>
<table>{rows}</table>
{imgs}
</body></html>
"""
    atomic_write_text(path, page)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
