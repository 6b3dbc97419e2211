"""Training presets: one named bundle of generator, CMT and engine settings each.

- ``laptop``: a 2-core CPU (``make demo``): an 8-layer flow with MLPs 2 x 128 (0.94M
  parameters for alanine dipeptide), parameter averaging (``ema_decay``), 50 annealing
  steps of 32,768 samples in a buffer of four steps (1.6M target evaluations), each
  fitted by FAB's alpha = 2 divergence (``fit_order``), with an entropy step of 3 nats so
  that the annealing reaches beta = 1 by step 26. On alanine dipeptide over training
  seeds 0-6: reverse ESS median 0.683-0.729 (mean 0.704), minimum 0.60-0.72 over five
  draws of 100k samples, Pareto k below 0.4, phi > 0 within 1.51x of the reference in
  every draw (BENCHMARKS.md, "alpha = 2 divergence" and "seven training seeds");
  forward KL gave medians 0.687 and 0.672 on seeds 0 and 1 with phi > 0 up to 2.2x off.
  Coupling layers, not width, lift the ESS; each costs mostly its splines. A time budget
  of 8.5 minutes (``max_minutes``) keeps ``make demo`` within 10 minutes: on a 2-core VM
  of the slower kind it held the run to 38-42 steps (four runs of seeds 0 and 1:
  medians 0.628-0.692, k 0.34-0.38; 9.1-9.6 minutes with the evaluation); where all 50
  fit, it changes nothing (seeds 0 and 1 on the same VM kind on a faster day, sampling
  eagerly: medians 0.714 and 0.695, k 0.36-0.39, 8.3-8.7 minutes).
  On a CPU ``CMTConfig.compile="auto"`` compiles its 5,000 gradient steps but not its
  sampling (1.6M samples) or the buffer's log densities, which would not repay their
  compilation; the ``cpu`` preset also compiles its sampling. On
  the alanine tetrapeptide the order-2 fit stalls the annealing (beta 0.75 after 100
  steps), so every preset fits a system larger than alanine dipeptide by forward KL
  (``LARGER_SYSTEM_SETTINGS``, applied by ``preset(name, dim=...)``). So scaled, the
  ``cpu`` preset given 105 minutes on two cores reached reverse ESS medians of 0.139 and
  0.077 (training seeds 0 and 1, five draws each, Pareto k 0.41 and 0.55) on the
  tetrapeptide with every backbone basin kept; with half its samples per step (and a
  prior of 0.12), 0.058 and two alpha_L basins lost; with the prior of 0.12 alone, 0.094,
  every basin kept and lighter tails; with that prior and twice the gradient steps per
  annealing step, 0.061 and one alpha_L basin lost; with half the gradient steps (prior
  0.15), every basin kept but beta only 0.85 after 300 steps, 0.012; with half the
  gradient steps and an entropy step of 3 nats, beta = 1 from step 151, 0.103.
- ``cpu``: a 2-core CPU within the hour: the same with 14 coupling layers, an entropy
  step of 2 nats and up to 300 annealing steps (9.8M target evaluations) in a time
  budget of 55 minutes (``max_minutes``), which shortens the run to the steps that fit,
  its learning-rate schedule ending on the last (and lengthens it again, the rate still
  falling, when later steps run faster). 2-core VMs differ 1.7x in speed:
  on the faster ones all 300 steps fit (about 50 minutes; reverse ESS median
  0.913-0.914 over seeds 0-1, Pareto k 0.34); on a middling one 268 steps (seed 2:
  median 0.906, minimum 0.896, k 0.36; 54 minutes with the evaluation); on a slower one
  the budget gave 179 steps (seed 2: median 0.884, minimum 0.879, k 0.36; 51 minutes).
  Without a budget, 200 steps gave 0.889-0.896 over seeds 0-2 (34-58 minutes) and 100
  steps 0.831-0.849; with 100 steps, twice the fit steps (seed 0) gave 0.884, ten
  layers 0.813-0.821 and 20 layers (seed 0) 0.856.
- ``gpu``: one H100/H200 for 8 minutes of training (``max_minutes``): the ``cpu``
  recipe (14 coupling layers, averaged parameters, alpha = 2 fit, entropy step 2) with
  MLPs 2 x 256 (3.7M parameters), annealing steps of 65,536 samples and minibatches of
  16,384, up to 120 steps: the time budget shortens the run to the steps that fit, its
  learning-rate schedule ending on the last. On an H200, cut off (not shortened) after
  36-37 steps while other runs shared the GPU, this recipe had reached reverse ESS
  medians of 0.913 and 0.915 (five draws of 200k, Pareto k 0.40); minibatches of 4,096
  gave 0.899. Alone on an H200 a step's 100 gradient steps take 3.1 s (``openmm-cmt
  bench flow``) after about 3 minutes of compiling, so about 90-100 steps should fit;
  the preset has not run alone (BENCHMARKS.md, "GPU check").
- ``paper``: the CMT paper's budget (1e8 evaluations on alanine dipeptide), hours.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re

from openmm_cmt.cmt.trainer import CMTConfig
from openmm_cmt.flows.config import GeneratorConfig


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs besides the system.

    Attributes
    ----------
    preset
        the preset this config started from (informational).
    generator
        fields of ``openmm_cmt.flows.GeneratorConfig`` (a dict, as run folders store
        it; ``generator_config()`` builds the dataclass).
    cmt
        fields of ``openmm_cmt.cmt.CMTConfig`` (``cmt_config()``).
    energy
        ``auto`` (batched TorchEnergy when supported), ``torch`` or ``openmm``.
    energy_dtype
        ``float32`` or ``float64`` for the torch engine during training.
    energy_compile
        ``torch.compile`` the torch engine (``"auto"``: on CUDA, and on CPU when a C++
        compiler is present; compiling costs 20-60 s once).
    device
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    checkpoint_every
        annealing steps between checkpoints (0: only at the end).
    eval_samples
        flow samples for the final metrics.
    max_minutes
        a wall-time budget for training (None: none). Once step times are known, a run
        that would overrun it is shortened to the steps that fit, its learning-rate
        schedule ending on the last (``BoltzmannGeneratorSampler.train``), so the number
        of steps done depends on the machine.
    """

    preset: str = "laptop"
    generator: dict = dataclasses.field(default_factory=dict)
    cmt: dict = dataclasses.field(default_factory=dict)
    energy: str = "auto"
    energy_dtype: str = "float32"
    energy_compile: bool | str = "auto"
    device: str = "auto"
    checkpoint_every: int = 10
    eval_samples: int = 100_000
    max_minutes: float | None = None

    def __post_init__(self):
        if self.energy not in ("auto", "torch", "openmm"):
            raise ValueError(f"energy must be 'auto', 'torch' or 'openmm', got {self.energy!r}")
        if self.energy_dtype not in ("float32", "float64"):
            raise ValueError(f"energy_dtype must be 'float32' or 'float64', got {self.energy_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not (self.energy_compile == "auto" or isinstance(self.energy_compile, bool)):
            raise ValueError(f"energy_compile must be true, false or 'auto', got {self.energy_compile!r}")
        check_setting("checkpoint_every", self.checkpoint_every, int, minimum=0)
        check_setting("eval_samples", self.eval_samples, int, minimum=1)
        check_setting("max_minutes", self.max_minutes, float, allow_none=True, minimum=0, inclusive=False)
        for section in ("generator", "cmt"):
            if not isinstance(getattr(self, section), dict):
                raise ValueError(f"{section} must be a dict of settings, got {getattr(self, section)!r}")
        check_settings("generator", self.generator, _schema(GeneratorConfig))
        check_settings("cmt", self.cmt, _schema(CMTConfig))
        self.generator_config()  # validates the settings early
        self.cmt_config()

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(**self.generator)

    def cmt_config(self) -> CMTConfig:
        return CMTConfig(**self.cmt)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}; expected {sorted(known)}")
        return cls(**copy.deepcopy(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- settings validation -------------------------------------------------------------------

#: Bounds beyond the type: (minimum, inclusive?) of numeric settings.
_MINIMA = {
    "generator": {"n_layers": (1, True), "hidden": (1, True), "depth": (1, True), "n_bins": (2, True),
                  "seed": (0, True), "bond_width": (0, False), "angle_width": (0, False),
                  "prior_sigma": (0, False), "width_factor": (0, False)},
    "cmt": {"eps_tr": (0, False), "eps_ent": (0, False), "n_steps": (1, True), "samples_per_step": (2, True),
            "buffer_size": (1, True), "grad_steps_per_step": (1, True), "batch_size": (1, True), "lr": (0, False),
            "weight_decay": (0, True), "grad_clip": (0, False), "drop_top_energy_fraction": (0, True),
            "seed": (0, True), "n_geometric": (1, True), "t_high_factor": (1, True), "n_temperatures": (1, True),
            "reverse_kl_batch_size": (2, True), "ema_decay": (0, True), "fit_order": (1, True)},
}


def _kind_of(annotation, default):
    """(type, None allowed) of a setting from its annotation (a string under postponed
    evaluation) or, without one, its default; (None, True) when anything goes."""
    if isinstance(annotation, str):
        text = annotation
    else:
        text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    if not text:
        text = type(default).__name__ if default is not None else ""
    allow_none = default is None or "None" in text or "Optional" in text
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if re.search(rf"\b{name}\b", text):
            return kind, allow_none
    return None, True


def _schema(config_class) -> dict:
    """Field name -> (type, None allowed) of a settings dataclass."""
    return {f.name: _kind_of(f.type, f.default) for f in dataclasses.fields(config_class)}


def check_setting(key: str, value, kind, allow_none: bool = False, minimum=None, inclusive: bool = True) -> None:
    """Raise ValueError naming ``key`` unless ``value`` is a ``kind`` (int, float, bool,
    str) at or above ``minimum`` (strictly above when not ``inclusive``)."""
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{key} must be {_describe(kind, minimum, inclusive)}, got None")
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
    }.get(kind, True)
    if ok and minimum is not None:
        ok = value >= minimum if inclusive else value > minimum
    if not ok:
        none = " or null" if allow_none else ""
        raise ValueError(f"{key} must be {_describe(kind, minimum, inclusive)}{none}, got {value!r}")


def _describe(kind, minimum, inclusive) -> str:
    what = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(kind, "a value")
    if minimum is not None:
        what += f" {'>=' if inclusive else '>'} {minimum:g}"
    return what


def check_settings(section: str, values: dict, schema: dict) -> None:
    """Check every ``section.key`` of ``values`` against ``schema`` (key -> (type, None
    allowed)) and the bounds in ``_MINIMA``; unknown keys are named with the known ones."""
    for key, value in values.items():
        if key not in schema:
            raise ValueError(f"unknown {section} setting {key!r}; expected one of {', '.join(sorted(schema))}")
        kind, allow_none = schema[key]
        minimum, inclusive = _MINIMA.get(section, {}).get(key, (None, True))
        check_setting(f"{section}.{key}", value, kind, allow_none, minimum, inclusive)


# prior_sigma 0.15 is wider than the target's own marginals in the harmonic scaling
# (about 0.100 for bonds and 0.126 for angles on alanine dipeptide). At 0.12 the
# annealing reaches the target in half the steps, but the generator's tails end too
# light: forward ESS 0.005 against 0.68 (BENCHMARKS.md, rows W-Y).
PRESETS: dict[str, dict] = {
    "laptop": dict(
        generator=dict(preset="cpu", n_layers=8, hidden=128, depth=2, n_bins=8, masking="all2all",
                       scaling="harmonic", prior_sigma=0.15, seed=0),
        cmt=dict(
            path="cmt", eps_tr=2.0, eps_ent=3.0, n_steps=50, samples_per_step=32768, buffer_size=131072,
            grad_steps_per_step=100, batch_size=512, lr=1e-3, lr_schedule="cosine", grad_clip=10.0, seed=0,
            ema_decay=0.99, fit_order=2.0,
        ),
        energy_dtype="float32",
        checkpoint_every=5,
        eval_samples=100_000,
        max_minutes=8.5,
    ),
    "gpu": dict(
        generator=dict(preset="gpu", n_layers=14, hidden=256, depth=2, n_bins=8, masking="all2all",
                       scaling="harmonic", prior_sigma=0.15, seed=0),
        cmt=dict(
            path="cmt", eps_tr=2.0, eps_ent=2.0, n_steps=120, samples_per_step=65536, buffer_size=262144,
            grad_steps_per_step=100, batch_size=16384, lr=1e-3, lr_schedule="cosine", grad_clip=10.0, seed=0,
            ema_decay=0.99, fit_order=2.0,
        ),
        energy_dtype="float32",
        checkpoint_every=10,
        eval_samples=1_000_000,
        max_minutes=8.0,
    ),
    # The paper's budget on alanine dipeptide: 200 steps x 500k samples = 1e8 target evaluations.
    "paper": dict(
        generator=dict(preset="gpu", n_layers=16, hidden=256, depth=5, n_bins=8, masking="all2all",
                       scaling="harmonic", prior_sigma=0.15, seed=0),
        cmt=dict(
            path="cmt", eps_tr=0.5, eps_ent=1.0, n_steps=200, samples_per_step=500_000, buffer_size=2_000_000,
            grad_steps_per_step=500, batch_size=4096, lr=5e-4, lr_schedule="cosine", grad_clip=10.0, seed=0,
            ema_decay=0.0, fit_order=1.0,
        ),
        energy_dtype="float32",
        checkpoint_every=10,
        eval_samples=1_000_000,
    ),
}
# Up to six times the laptop's steps on a flow of 14 coupling layers, as many as 55
# minutes hold; the steps after beta reaches 1 (about step 40) are what lift the ESS
# from 0.84 (100 steps) to 0.89 (200) and 0.91 (300).
PRESETS["cpu"] = copy.deepcopy(PRESETS["laptop"])
PRESETS["cpu"]["generator"].update(n_layers=14, hidden=128)
PRESETS["cpu"]["cmt"].update(n_steps=300, eps_ent=2.0)
PRESETS["cpu"]["checkpoint_every"] = 10
PRESETS["cpu"]["max_minutes"] = 55.0


#: Internal coordinates of alanine dipeptide, the system the presets were tuned on.
TUNED_DIM = 60

#: What replaces a preset's settings for a system with more internal coordinates than
#: ``TUNED_DIM``. FAB's alpha = 2 fit lifts alanine dipeptide's ESS, but on the alanine
#: tetrapeptide (d = 120), whose flow fits each step less closely, it stalled the
#: annealing: beta 0.75 after 100 steps and reverse ESS 0.0015, against beta 1 by step
#: 79 and 0.020 with the forward KL of the CMT paper (BENCHMARKS.md, "Alanine
#: tetrapeptide fitted at order 2").
LARGER_SYSTEM_SETTINGS: dict[str, dict] = {"cmt": dict(fit_order=1.0)}


def preset(name: str, dim: int | None = None, **overrides) -> TrainConfig:
    """The TrainConfig of a named preset.

    Parameters
    ----------
    name
        a key of ``PRESETS``.
    dim
        the system's internal coordinates (``MolecularSystem.dim``), if known: above
        ``TUNED_DIM`` the settings of ``LARGER_SYSTEM_SETTINGS`` replace the preset's.
    overrides
        replace top-level fields; ``cmt=`` / ``generator=`` dicts update the preset's
        entries (after the size rule, so an explicit setting always wins).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"dim must be a positive integer (the system's internal coordinates), got {dim!r}")
    d = copy.deepcopy(PRESETS[name])
    if dim is not None and dim > TUNED_DIM:
        for key, values in LARGER_SYSTEM_SETTINGS.items():
            d[key].update(values)
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"preset"}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}; expected one of {', '.join(sorted(known))}")
    for key in ("cmt", "generator"):
        if key in overrides:
            d[key].update(overrides.pop(key))
    d.update(overrides)
    return TrainConfig(preset=name, **d)
