"""PNG plots of a run and an HTML page that gathers them.

``report.html`` is self-contained: the plots are embedded as ``data:`` URIs and the page
has no script and no external resource, so it opens from any folder, attached to a mail
or copied alone, without a server. The PNGs are written beside it as well.

matplotlib is optional (``pip install openmm-cmt[plots]``): without it the report lists
the metrics and says that plots were skipped.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from openmm_cmt.io import atomic_write_bytes, atomic_write_text

#: Phases of an annealing step as the trainer records them in ``phase_s``, in stack order.
PHASES = ("sample", "energy", "dual", "buffer", "fit", "checkpoint")

#: Caption of each plot of ``write_run_report`` in the page, by file name.
CAPTIONS = {
    "ess.png": "Reverse ESS during training against the annealing step, the target evaluations "
               "and the wall time; the evaluation's median with its min-max over the draws at the end.",
    "weights.png": "Distribution of the normalised importance weights, and where the largest ones "
                   "sit on each residue's Ramachandran plot.",
    "ramachandran.png": "Ramachandran free energy per residue: generator samples as drawn, reweighted "
                        "to the Boltzmann distribution, and the reference when there is one.",
    "energy.png": "Energy histograms: generator samples, reweighted, and the reference when there is one.",
    "annealing.png": "Dual variables and the exponents of the annealing path per step.",
    "phases.png": "Seconds spent in each phase of an annealing step.",
    "basins.png": "Each residue's backbone basins during training: the share of each step's draws "
                  "(solid) and their reweighted population (dashed), with the reference's (dotted) "
                  "when there is one. A share that falls to zero marks a basin the generator lost.",
}


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


def _per_residue(angles) -> np.ndarray:
    a = np.asarray(angles)
    return a[:, None, :] if a.ndim == 2 else a


def _weights(log_w) -> np.ndarray:
    lw = np.asarray(log_w, dtype=np.float64)
    return np.exp(lw - np.max(lw[np.isfinite(lw)]))


def ramachandran_plot(path, phi_psi, log_weights=None, reference=None, bins=100, labels=None):
    """Ramachandran free energy (-log density) of generator samples as drawn, reweighted
    to the Boltzmann distribution, and of the reference; one row per residue when the
    angles are ``[N, n_res, 2]``."""
    plt = _pyplot()
    if plt is None:
        return False
    gen = _per_residue(phi_psi)
    ref = None if reference is None else _per_residue(reference)
    n_res = gen.shape[1]
    labels = labels or [f"residue {r + 1}" for r in range(n_res)]
    panels = [("generator", gen, None)]
    if log_weights is not None:
        panels.append(("generator, reweighted", gen, _weights(log_weights)))
    if ref is not None:
        panels.append(("reference", ref, None))
    fig, axes = plt.subplots(n_res, len(panels), figsize=(4.2 * len(panels), 4 * n_res), squeeze=False)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    for r in range(n_res):
        for ax, (title, angles, w) in zip(axes[r], panels):
            h, _, _ = np.histogram2d(angles[:, r, 0], angles[:, r, 1], bins=[edges, edges], weights=w, density=True)
            with np.errstate(divide="ignore"):
                free_energy = -np.log(h.T)
            # Free energy in kT above the minimum, shown up to 10 kT (empty bins left blank).
            free_energy = free_energy - np.min(free_energy[np.isfinite(free_energy)])
            mesh = ax.pcolormesh(edges, edges, free_energy, cmap="viridis", shading="flat", vmin=0.0, vmax=10.0)
            ax.set_title(f"{labels[r]}: {title} (n={len(angles)})", fontsize=9)
            ax.set_xlabel("phi / rad")
            ax.set_ylabel("psi / rad")
            ax.set_aspect("equal")
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label="free energy / kT", shrink=0.8)
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


def ess_plot(path, history, final=None):
    """Reverse ESS of the flow on each step's fresh samples (and the ESS of the step
    weights) against the annealing step, the target evaluations spent and the wall
    time; ``final`` (``{"median", "min", "max"}`` of the evaluation draws) is drawn at
    the end of training as a point with a min-max bar."""
    plt = _pyplot()
    if plt is None or not history:
        return False
    axes_x = (
        ("annealing step", np.arange(1, len(history) + 1)),
        ("target evaluations", np.array([h.get("evaluations", np.nan) for h in history], dtype=float)),
        ("training wall time / s", np.array([h.get("wall_s", np.nan) for h in history], dtype=float)),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, (xlabel, x) in zip(axes, axes_x):
        for key, label in (("reverse_ess", "flow vs target (reverse)"), ("ess", "step weights q_{i+1}/q_i")):
            if key == "ess" and xlabel != "annealing step":
                continue
            values = np.array([h.get(key, np.nan) for h in history], dtype=float)
            if np.isfinite(values).any() and np.isfinite(x).any():
                ax.plot(x, values, label=label)
        if final is not None and np.isfinite(x).any():
            err = [[final["median"] - final["min"]], [final["max"] - final["median"]]]
            ax.errorbar([np.nanmax(x)], [final["median"]], yerr=err, fmt="o", color="k", capsize=3,
                        label="evaluation (median, min-max)")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ESS fraction")
    if np.nanmin(axes_x[1][1]) > 0:
        axes[1].set_xscale("log")
    axes[0].legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


def weights_plot(path, log_weights, angles=None, labels=None, n_top=20):
    """Histogram of the normalised log10 weights with the ``n_top`` largest marked, and
    where those largest weights sit on each residue's Ramachandran plot (over the
    generator's sample density)."""
    plt = _pyplot()
    if plt is None:
        return False
    lw = np.asarray(log_weights, dtype=np.float64)
    finite = np.isfinite(lw)
    log10_w = (lw[finite] - np.logaddexp.reduce(lw[finite])) / np.log(10.0)
    top = np.argsort(log10_w)[::-1][:n_top]
    gen = None if angles is None else _per_residue(angles)[finite]
    n_res = 0 if gen is None else gen.shape[1]
    fig, axes = plt.subplots(1, 1 + n_res, figsize=(4.6 * (1 + n_res), 4), squeeze=False)
    ax = axes[0, 0]
    # Clashes give weights hundreds of decades down: show the upper range, the rest in the first bin.
    lo = max(np.quantile(log10_w, 0.001), log10_w.max() - 30.0)
    ax.hist(np.clip(log10_w, lo, None), bins=100, range=(lo, log10_w.max()), histtype="stepfilled", alpha=0.6)
    for t in top:
        ax.axvline(log10_w[t], color="r", lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel(f"log10 normalised weight (below {lo:.3g} in the first bin)")
    ax.set_ylabel("samples")
    ax.set_title(f"largest weight {100 * 10 ** log10_w[top[0]]:.2g} % of the total; top {len(top)} in red", fontsize=9)
    edges = np.linspace(-np.pi, np.pi, 61)
    share = 10 ** log10_w[top]
    for r in range(n_res):
        ax = axes[0, 1 + r]
        h, _, _ = np.histogram2d(gen[:, r, 0], gen[:, r, 1], bins=[edges, edges])
        ax.pcolormesh(edges, edges, np.log1p(h.T), cmap="Greys", shading="flat")
        ax.scatter(gen[top, r, 0], gen[top, r, 1], s=20 + 400 * share / share.max(), facecolors="none",
                   edgecolors="r", linewidths=1.0)
        ax.set_title(f"{(labels or [''] * n_res)[r]}: top {len(top)} weights", fontsize=9)
        ax.set_xlabel("phi / rad")
        ax.set_ylabel("psi / rad")
        ax.set_aspect("equal")
    _save(fig, path)
    plt.close(fig)
    return True


def phase_plot(path, history):
    """Seconds of each phase of an annealing step (``phase_s`` of the history records:
    sampling, energies, dual, buffer, fit, checkpoint), stacked over the steps. False
    when no record has phase timings."""
    plt = _pyplot()
    timed = [h.get("phase_s") for h in history or []]
    if plt is None or not any(isinstance(t, dict) and t for t in timed):
        return False
    extra = sorted({k for t in timed if isinstance(t, dict) for k in t} - set(PHASES))
    phases = [p for p in PHASES if any(isinstance(t, dict) and p in t for t in timed)] + extra
    steps = np.arange(1, len(history) + 1)
    values = np.array([[float(t.get(p, 0.0)) if isinstance(t, dict) else np.nan for t in timed] for p in phases])
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.stackplot(steps, np.nan_to_num(values), labels=phases)
    ax.set_xlabel("annealing step")
    ax.set_ylabel("seconds")
    ax.set_title("time per phase of each annealing step")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)
    plt.close(fig)
    return True


def basin_trace_plot(path, history, reference=None):
    """Per residue, the ``basins`` of the history records (``[share, population]`` of each
    basin in a step's draws) over the steps, on a log scale; ``reference`` is
    ``{residue: {basin: population}}``. False when no record has ``basins``."""
    plt = _pyplot()
    traced = [h.get("basins") for h in history or []]
    if plt is None or not any(isinstance(t, dict) and t for t in traced):
        return False
    first = next(t for t in traced if isinstance(t, dict) and t)
    residues = list(first)
    basins = list(first[residues[0]])
    steps = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, len(residues), figsize=(3.6 * len(residues), 3.2), squeeze=False, sharey=True)
    floor = 1e-6  # a share of zero drawn at the bottom edge, not dropped from a log axis
    for ax, residue in zip(axes[0], residues):
        for k, basin in enumerate(basins):
            pair = [t.get(residue, {}).get(basin) if isinstance(t, dict) else None for t in traced]
            share = np.array([np.nan if v is None else max(v[0], floor) for v in pair])
            population = np.array([np.nan if v is None else max(v[1], floor) for v in pair])
            color = f"C{k}"
            ax.plot(steps, share, color=color, label=f"{basin} share")
            ax.plot(steps, population, color=color, ls="--", lw=0.8, label=f"{basin} reweighted")
            ref = (reference or {}).get(residue, {}).get(basin)
            if ref is not None:
                ax.axhline(max(ref, floor), color=color, ls=":", lw=1.0)
        ax.set_yscale("log")
        ax.set_ylim(floor, 1.5)
        ax.set_title(residue)
        ax.set_xlabel("annealing step")
    axes[0][0].set_ylabel("fraction of the step's draws")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
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
        shown = (energies >= lo) & (energies <= hi) & np.isfinite(log_weights) & finite
        if shown.any():
            # Weights of the plotted samples alone, largest 1: the reweighted mass may lie
            # almost all beyond the range, and tiny weights beside it would cancel to 0/0.
            w = np.exp(log_weights[shown] - np.max(log_weights[shown]))
            ax.hist(energies[shown], bins=edges, weights=w, density=True, histtype="step", label="reweighted")
    if reference is not None:
        ax.hist(reference, bins=edges, density=True, histtype="step", label="reference")
    ax.set_xlabel(f"energy / {unit}")
    ax.legend()
    _save(fig, path)
    plt.close(fig)
    return True


def basin_table(residues: list[dict]) -> tuple[str, list[str], list[list[str]]]:
    """The per-residue basin populations of ``metrics.json`` as an HTML table."""
    header = ["residue", "basin", "reweighted", "95 % bounds", "draw spread", "samples", "reference", "Ram. TV"]
    rows = []
    for res in residues:
        for basin, b in res["basins"].items():
            ref = "" if "reference" not in b else f"{b['reference']:.4g} ± {b['reference_stderr']:.2g}"
            spread = "" if b.get("draw_spread") is None else f"{b['draw_spread']:.2g}"
            tv = "" if "ramachandran_tv" not in res else f"{res['ramachandran_tv']:.3g}"
            rows.append([res["residue"], basin, f"{b['population']:.4g} ± {b['stderr']:.2g}",
                         f"[{b['lower95']:.3g}, {b['upper95']:.3g}]", spread, str(b["n_samples"]), ref, tv])
    return "Backbone basins per residue (reweighted generator; one-sided 95 % bounds from the ESS)", header, rows


def _data_uri(png_path) -> str:
    with open(png_path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")


def write_html(path, title, metrics: dict, images: list[str], note: str = "", tables=()) -> None:
    """A self-contained page: a metrics table, further ``(caption, header, rows)``
    tables, and the PNGs at ``images`` embedded as data URIs (captions from
    :data:`CAPTIONS`)."""
    rows = "\n".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in metrics.items() if k != "residues"
    )
    extra = ""
    for caption, header, body in tables:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        lines = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        extra += f"<h2>{html.escape(caption)}</h2>\n<table><tr>{head}</tr>\n{lines}</table>\n"
    figures = []
    for p in images:
        name = os.path.basename(p)
        caption = html.escape(CAPTIONS.get(name, name))
        figures.append(f'<figure id="{html.escape(os.path.splitext(name)[0])}"><img alt="{html.escape(name)}" '
                       f'src="{_data_uri(p)}"><figcaption>{caption}</figcaption></figure>')
    imgs = "\n".join(figures)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(note)}</p>
<table>{rows}</table>
{extra}{imgs}
</body></html>
"""
    atomic_write_text(path, page)


def write_run_report(out_dir, sampler, m, log_w, energies, angles, residues, ref=None, ref_angles=None) -> str:
    """PNG plots and ``report.html`` of an evaluation in ``out_dir``; returns the page's path.

    ``angles`` and ``ref_angles`` are (phi, psi) ``[N, n_res, 2]`` of the generator and the
    reference, ``ref`` the reference's arrays (for its energies)."""
    images = []

    def add(name, ok):
        if ok:
            images.append(os.path.join(out_dir, name))

    finite = np.isfinite(log_w)
    history = sampler.history
    final = {"median": m["reverse_ess"], "min": m["reverse_ess_min"], "max": m["reverse_ess_max"]}
    add("ess.png", ess_plot(os.path.join(out_dir, "ess.png"), history, final))
    add("weights.png", weights_plot(os.path.join(out_dir, "weights.png"), log_w, angles, residues))
    if angles is not None:
        add("ramachandran.png", ramachandran_plot(
            os.path.join(out_dir, "ramachandran.png"), angles[finite], log_w[finite], ref_angles, labels=residues))
    add("energy.png", energy_plot(
        os.path.join(out_dir, "energy.png"), energies, log_w, None if ref is None else np.asarray(ref["energies"])))
    add("annealing.png", annealing_plot(os.path.join(out_dir, "annealing.png"), history))
    add("phases.png", phase_plot(os.path.join(out_dir, "phases.png"), history))
    reference_basins = {r["residue"]: {b: v["reference"] for b, v in r["basins"].items() if "reference" in v}
                        for r in m.get("residues") or []}
    add("basins.png", basin_trace_plot(os.path.join(out_dir, "basins.png"), history, reference_basins))
    note = "" if images else "matplotlib is not installed: plots skipped (pip install 'openmm-cmt[plots]')."
    tables = [basin_table(m["residues"])] if m.get("residues") else []
    path = os.path.join(out_dir, "report.html")
    write_html(path, f"openmm_cmt run: {sampler.molsys.name}", m, images, note, tables)
    return path


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list) and all(isinstance(x, (float, int)) or x is None for x in v):
        return ", ".join("-" if x is None else _fmt(x) for x in v)
    return str(v)
