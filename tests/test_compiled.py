"""Compiled flow calls of the trainer: checked against eager, one-warning fallback, phase timing."""

import math
import re
import warnings

import pytest
import torch

import openmm_cmt  # noqa: F401  (torch before openmm)
from openmm_cmt.cmt import CMTConfig, CMTTrainer
from openmm_cmt.cmt import compiled as compiled_module
from openmm_cmt.cmt.compiled import KINDS, FlowCalls, compile_available
from openmm_cmt.cmt.trainer import (
    AUTO_COMPILE_LOG_PROB_ROWS_CPU,
    AUTO_COMPILE_MIN_GRAD_STEPS,
    AUTO_COMPILE_MIN_GRAD_STEPS_CPU,
    AUTO_COMPILE_MIN_SAMPLES_CPU,
    PHASES,
)
from openmm_cmt.flows import EuclideanFlow, GeneratorConfig
from openmm_cmt.cmt.toy_targets import gmm40


def small_flow(seed=0):
    return EuclideanFlow(2, n_layers=2, hidden=16, n_bins=8, prior_scale=20.0, tail_bound=60.0, seed=seed)


def small_config(**kw):
    base = dict(n_steps=2, samples_per_step=256, buffer_size=512, grad_steps_per_step=4, batch_size=128, seed=3)
    base.update(kw)
    return CMTConfig(**base)


def _fake_compile(make):
    """A stand-in for torch.compile: ``make(fn)`` is what the 'compiled' function does."""
    return lambda fn, **kwargs: make(fn)


def _batch(flow, n=128, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        x, _ = flow.sample(n)
    weights = torch.softmax(torch.randn(n, dtype=torch.float64), 0)
    return x, weights


@pytest.mark.parametrize("regional, tilt", [(KINDS, 0.0), ((), 0.0), ((), 1.0)])
def test_compiled_loss_gradient_and_log_prob_match_eager(regional, tilt):
    """The real torch.compile on a small flow, every call per coupling layer or as one
    graph, with and without the alpha-divergence tilt: verified on the first call and kept."""
    if not compile_available(torch.device("cpu")):
        pytest.skip("no C++ compiler for torch.compile on CPU")
    flow = small_flow()
    x, weights = _batch(flow)
    compiled = FlowCalls(flow, True, 128, chunk_size=100, regional=regional, tilt=tilt)
    eager = FlowCalls(flow, False, 128, tilt=tilt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback would warn
        loss, grads = compiled.loss_and_grads(x, weights)
        log_q = compiled.log_prob(torch.cat([x, x[:50]]))  # 178 rows: one full chunk, one padded
    assert compiled.checked == {"loss", "log_prob"} and compiled.compiled["loss"] and compiled.compiled["log_prob"]
    ref_loss, ref_grads = eager.loss_and_grads(x, weights)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        ref_log_q = flow.log_prob(torch.cat([x, x[:50]]))
    torch.testing.assert_close(log_q, ref_log_q, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["wrong-loss", "wrong-gradient", "error"])
def test_disagreeing_or_failing_compile_falls_back_with_one_warning(monkeypatch, kind):
    def make(fn):
        def compiled(x, weights=None):
            if weights is None:
                return fn(x)
            if kind == "error":
                raise RuntimeError("inductor exploded")
            loss = fn(x, weights)
            if kind == "wrong-loss":
                return loss * 1.5
            # Same value, twice the gradient: only the gradient check can see it.
            return 2.0 * loss - loss.detach()
        return compiled

    monkeypatch.setattr(compiled_module.torch, "compile", _fake_compile(make))
    flow = small_flow()
    x, weights = _batch(flow)
    calls, eager = FlowCalls(flow, True, 128, regional=()), FlowCalls(flow, False, 128)
    with pytest.warns(RuntimeWarning, match="loss call") as record:
        loss, grads = calls.loss_and_grads(x, weights)
    assert len(record) == 1
    expected = {"wrong-loss": "loss .* differs", "wrong-gradient": "gradient", "error": "inductor exploded"}[kind]
    assert re.search(expected, str(record[0].message))
    assert not calls.compiled["loss"]
    ref_loss, ref_grads = eager.loss_and_grads(x, weights)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        calls.loss_and_grads(x, weights)


def test_fallback_of_log_prob_and_sampling(monkeypatch):
    from openmm_cmt.flows import Generator
    from openmm_cmt.systems import resolve

    monkeypatch.setattr(compiled_module.torch, "compile", _fake_compile(lambda fn: lambda *a: _shifted(fn(*a))))
    generator = Generator.from_system(resolve("alanine-dipeptide"), GeneratorConfig(preset="cpu", n_layers=2, hidden=8, depth=1))
    calls = FlowCalls(generator, True, 64, chunk_size=50, regional=())
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="sample call"):
        x, log_q = calls.sample(70)
    torch.manual_seed(0)
    with torch.no_grad():
        ref_x, ref_log_q = generator.sample(70)
        with pytest.warns(RuntimeWarning, match="log_prob call"):
            values = calls.log_prob(x)
        ref_values = generator.log_prob(x)
    torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_q, ref_log_q, rtol=0, atol=1e-3)
    torch.testing.assert_close(values, ref_values, rtol=0, atol=1e-3)


def test_regional_compilation_falls_back_and_leaves_the_flow_eager(monkeypatch):
    """A miscompiled coupling layer is caught by the first-call check like a whole call,
    and outside the compiled calls every layer runs its own eager method."""
    compiled_forwards = []

    def make(fn):
        compiled_forwards.append(fn)
        return lambda *a: _shifted(fn(*a))

    monkeypatch.setattr(compiled_module.torch, "compile", _fake_compile(make))
    flow = small_flow()
    x, weights = _batch(flow)
    calls, eager = FlowCalls(flow, True, 128, regional=KINDS), FlowCalls(flow, False, 128)
    regions = flow.compile_regions()
    assert len(compiled_forwards) == len(regions) == 2  # one per coupling layer, not per call
    compiled_forwards.clear()
    FlowCalls(flow, True, 128)  # by default each call is one graph: loss and log_prob
    assert len(compiled_forwards) == 2 and compiled_module.REGIONAL_KINDS == ()
    with pytest.warns(RuntimeWarning) as record:
        loss, grads = calls.loss_and_grads(x, weights)
        with torch.no_grad():
            values = calls.log_prob(x)
    assert sorted(re.search(r"flow's (\w+) call", str(r.message)).group(1) for r in record) == ["log_prob", "loss"]
    assert not calls.compiled["loss"] and not calls.compiled["log_prob"]
    assert all(name not in vars(module) for module, name in regions)
    ref_loss, ref_grads = eager.loss_and_grads(x, weights)
    assert torch.equal(loss, ref_loss) and all(torch.equal(g, r) for g, r in zip(grads, ref_grads))
    with torch.no_grad():
        assert torch.equal(values, flow.log_prob(x))


def _shifted(out):
    return tuple(t + 1.0 for t in out) if isinstance(out, tuple) else out + 1.0


def test_compiled_sampling_draws_the_same_samples_in_fixed_chunks(monkeypatch):
    """With an exact 'compiler' the chunked, padded path reproduces flow.sample."""
    from openmm_cmt.flows import Generator
    from openmm_cmt.systems import resolve

    seen_shapes = set()

    def make(fn):
        def run(*args):
            seen_shapes.add(tuple(args[0].shape))
            return fn(*args)
        return run

    monkeypatch.setattr(compiled_module.torch, "compile", _fake_compile(make))
    generator = Generator.from_system(resolve("alanine-dipeptide"), GeneratorConfig(preset="cpu", n_layers=2, hidden=8, depth=1))
    calls = FlowCalls(generator, True, 64, chunk_size=32)
    torch.manual_seed(5)
    x, log_q = calls.sample(75)
    torch.manual_seed(5)
    with torch.no_grad():
        ref_x, ref_log_q = generator.sample(75)
    torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_q, ref_log_q, rtol=0, atol=1e-3)
    assert seen_shapes == {(32, generator.dim)}  # every call full-size: one compilation
    assert calls.checked == {"sample"}


def test_trainer_with_an_exact_compiler_equals_eager(monkeypatch):
    """The dispatch (full batches compiled, buffer log q chunked) changes no number."""
    shapes = []

    def make(fn):
        def run(*args):
            shapes.append(tuple(args[0].shape))
            return fn(*args)
        return run

    eager = CMTTrainer(small_flow(), gmm40().target(), small_config(compile=False))
    eager.run()
    monkeypatch.setattr(compiled_module.torch, "compile", _fake_compile(make))
    compiled = CMTTrainer(small_flow(), gmm40().target(), small_config(compile=True))
    compiled.run()
    assert compiled.calls.checked == {"loss", "log_prob"}
    assert set(shapes) == {(128, 2), (8192, 2)}  # minibatches and padded log q chunks only
    for (name, a), (_, b) in zip(eager.flow.state_dict().items(), compiled.flow.state_dict().items()):
        assert torch.equal(a, b), name
    strip = lambda h: [{k: v for k, v in r.items() if "wall" not in k and k != "phase_s"} for r in h]
    assert strip(eager.history) == strip(compiled.history)


def _replaying_compile(modes):
    """A stand-in for torch.compile whose outputs live in one buffer per output that
    every call overwrites, as a CUDA-graph replay's do (outputs that need a gradient
    pass through, so that autograd still works)."""

    def compile_(fn, **kwargs):
        modes.append(kwargs.get("mode", "default"))
        buffers = {}

        def run(*args):
            out = fn(*args)
            kept = []
            for i, t in enumerate(out if isinstance(out, tuple) else (out,)):
                if not t.requires_grad:
                    buffers.setdefault(i, torch.empty_like(t)).copy_(t)
                    t = buffers[i]
                kept.append(t)
            return tuple(kept) if isinstance(out, tuple) else kept[0]

        return run

    return compile_


@pytest.mark.parametrize("mode", ["reduce-overhead", "default"])
def test_cuda_graph_mode_copies_outputs_out_of_the_replayed_memory(monkeypatch, mode):
    """Under mode="reduce-overhead" every compiled call starts a new CUDA-graph step and
    what it returns survives the next replay; without the copies the chunks of one
    log_prob call would all read the last chunk's values."""
    from openmm_cmt.flows import Generator
    from openmm_cmt.systems import resolve

    modes, steps = [], []
    monkeypatch.setattr(compiled_module.torch, "compile", _replaying_compile(modes))
    monkeypatch.setattr(compiled_module.torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    generator = Generator.from_system(resolve("alanine-dipeptide"), GeneratorConfig(preset="cpu", n_layers=2, hidden=8, depth=1))
    calls = FlowCalls(generator, True, 64, chunk_size=32, regional=(), mode=mode)
    assert modes == [mode] * 3
    torch.manual_seed(2)
    x, log_q = calls.sample(80)  # three chunks
    values = calls.log_prob(x)
    torch.manual_seed(2)
    with torch.no_grad():
        ref_x, ref_log_q = generator.sample(80)
        ref_values = generator.log_prob(ref_x)
    loss, grads = calls.loss_and_grads(ref_x[:64], torch.full((64,), 1.0 / 64))
    ref_loss, ref_grads = FlowCalls(generator, False, 64).loss_and_grads(ref_x[:64], torch.full((64,), 1.0 / 64))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    if mode == "reduce-overhead":
        assert len(steps) == 3 + 3 + 1  # sample and log_prob chunks, one loss
        torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-5)
        torch.testing.assert_close(log_q, ref_log_q, rtol=0, atol=1e-3)
        torch.testing.assert_close(values, ref_values, rtol=0, atol=1e-3)
    else:
        assert steps == []
        assert not torch.allclose(values, ref_values, rtol=0, atol=1e-3)  # the test can tell


def test_compile_setting_is_validated_and_auto_needs_a_long_run():
    with pytest.raises(ValueError, match="compile"):
        CMTConfig(compile="yes")
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        CMTConfig(compile_mode="max-autotune")
    with pytest.raises(ValueError, match="mode must be one of"):
        FlowCalls(small_flow(), True, 64, mode="cudagraphs")
    for tilt in (-0.5, float("nan"), "1"):
        with pytest.raises(ValueError, match="tilt must be a finite number >= 0"):
            FlowCalls(small_flow(), False, 64, tilt=tilt)
    assert CMTTrainer(small_flow(), gmm40().target(), small_config(fit_order=2.5)).calls.tilt == 1.5
    assert CMTTrainer(small_flow(), gmm40().target(), small_config(compile_mode="reduce-overhead")).calls.mode == "reduce-overhead"
    short = CMTTrainer(small_flow(), gmm40().target(), small_config())
    assert not any(short.calls.compiled.values())
    long_config = small_config(n_steps=AUTO_COMPILE_MIN_GRAD_STEPS // 4, grad_steps_per_step=4)
    long = CMTTrainer(small_flow(), gmm40().target(), long_config)
    assert not long.calls.compiled["loss"]  # CPU: compiling takes minutes, so only for longer runs
    longer_config = small_config(n_steps=AUTO_COMPILE_MIN_GRAD_STEPS_CPU // 4, grad_steps_per_step=4)
    longer = CMTTrainer(small_flow(), gmm40().target(), longer_config)
    assert longer.calls.compiled["loss"] == compile_available(torch.device("cpu"))
    if torch.cuda.is_available():
        cuda = CMTTrainer(small_flow().cuda(), gmm40().target(), long_config)
        assert cuda.calls.compiled["loss"]


def test_auto_compiles_on_cpu_only_what_pays_for_its_compilation():
    """Sampling for runs that draw many samples, the forward-KL step for runs of many
    gradient steps, the buffer's log densities once enough rows have run eagerly;
    nothing without a C++ compiler."""
    assert CMTTrainer(small_flow(), gmm40().target(), small_config(compile=True))._compile_plan() is True
    assert CMTTrainer(small_flow(), gmm40().target(), small_config(compile=False))._compile_plan() is False
    plan = CMTTrainer(small_flow(), gmm40().target(), small_config())._compile_plan()
    if not compile_available(torch.device("cpu")):
        assert plan is False
        return
    assert plan == {"log_prob": AUTO_COMPILE_LOG_PROB_ROWS_CPU}
    long_fit = small_config(n_steps=AUTO_COMPILE_MIN_GRAD_STEPS_CPU // 4, grad_steps_per_step=4)
    assert CMTTrainer(small_flow(), gmm40().target(), long_fit)._compile_plan() == {"log_prob": AUTO_COMPILE_LOG_PROB_ROWS_CPU, "loss": 0}
    many_samples = small_config(n_steps=4, samples_per_step=AUTO_COMPILE_MIN_SAMPLES_CPU // 4)
    assert CMTTrainer(small_flow(), gmm40().target(), many_samples)._compile_plan() == {"log_prob": AUTO_COMPILE_LOG_PROB_ROWS_CPU, "sample": 0}
    fewer_samples = small_config(n_steps=4, samples_per_step=AUTO_COMPILE_MIN_SAMPLES_CPU // 4 - 1)
    assert "sample" not in CMTTrainer(small_flow(), gmm40().target(), fewer_samples)._compile_plan()


def test_a_deferred_kind_runs_eagerly_for_its_rows_then_compiles(monkeypatch):
    compiled_calls = []

    def make(fn):
        def call(*args):
            compiled_calls.append(args[0].shape[0])
            return fn(*args)
        return call

    monkeypatch.setattr(compiled_module.torch, "compile", _fake_compile(make))
    flow = small_flow()
    x, weights = _batch(flow, n=100)
    calls = FlowCalls(flow, {"log_prob": 150, "loss": 0}, 100, chunk_size=100)
    assert calls.compiled == {"loss": True, "log_prob": False, "sample": False}
    assert calls.eager_rows_left == {"log_prob": 150}
    with torch.no_grad():
        reference = flow.log_prob(x)
    torch.testing.assert_close(calls.log_prob(x), reference)  # 100 eager rows: 50 left
    assert compiled_calls == [] and calls.eager_rows_left == {"log_prob": 50} and not calls.compiled["log_prob"]
    torch.testing.assert_close(calls.log_prob(x), reference)  # allowance spent during this call
    assert compiled_calls == [] and calls.eager_rows_left == {} and calls.compiled["log_prob"]
    torch.testing.assert_close(calls.log_prob(x), reference)
    assert compiled_calls == [100] and "log_prob" in calls.checked
    calls.loss_and_grads(x, weights)
    assert compiled_calls == [100, 100]


def test_eager_sampling_maps_the_latent_draw_in_chunks_and_draws_what_the_flow_draws():
    from openmm_cmt.flows import Generator
    from openmm_cmt.systems import resolve

    generator = Generator.from_system(resolve("alanine-dipeptide"), GeneratorConfig(preset="cpu", n_layers=2, hidden=8, depth=1))
    calls = FlowCalls(generator, {"sample": 100}, 64, chunk_size=32)
    sizes = []
    latent_to_positions = generator.latent_to_positions

    def recorded(z):
        sizes.append(z.shape[0])
        return latent_to_positions(z)

    generator.latent_to_positions = recorded
    x, log_q = calls.sample(70, torch.Generator().manual_seed(5))
    assert sizes == [32, 32, 6] and calls.eager_rows_left == {"sample": 30}
    with torch.no_grad():
        ref_x, ref_log_q = generator.sample(70, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_q, ref_log_q, rtol=0, atol=1e-4)


def test_the_compile_plan_is_validated():
    for enabled, match in [({"backward": 0}, "unknown kinds"), ({"loss": -1}, "integer >= 0"),
                           ({"loss": 1.5}, "integer >= 0"), ({"loss": True}, "integer >= 0"), ("yes", "mapping from kind")]:
        with pytest.raises(ValueError, match=match):
            FlowCalls(small_flow(), enabled, 64)


def test_a_tilted_minibatch_without_weight_contributes_nothing():
    """A data-parallel process whose share of the minibatch weights underflowed to zero:
    a zero loss and gradient and log_mass = -inf (its share of the whole), not NaN."""
    flow = small_flow()
    x, _ = _batch(flow, n=16)
    calls = FlowCalls(flow, False, 16, tilt=1.0)
    loss, grads = calls.loss_and_grads(x, torch.zeros(16, dtype=torch.float64))
    assert float(loss) == 0.0 and calls.log_mass.item() == -math.inf
    assert all(g is None or (torch.isfinite(g).all() and not g.any()) for g in grads)


def test_regional_kinds_are_validated():
    with pytest.raises(ValueError, match="regional must name kinds"):
        FlowCalls(small_flow(), True, 64, regional=("loss", "backward"))


@pytest.mark.parametrize("path", ["cmt", "reverse-kl"])
def test_every_record_times_its_phases(path):
    trainer = CMTTrainer(small_flow(), gmm40().target(), small_config(path=path))
    for record in trainer.run():
        phases = record["phase_s"]
        assert tuple(phases) == PHASES
        assert all(v >= 0 and math.isfinite(v) for v in phases.values())
        assert phases["checkpoint"] == 0.0
        assert phases["sample"] > 0 and phases["energy"] > 0 and phases["fit"] > 0
        assert sum(phases.values()) <= record["step_wall_s"] + 1e-6


def test_sampler_adds_checkpoint_time_and_progress_names_the_slowest_phase(tmp_path, capsys):
    from openmm_cmt.presets import preset
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    config = preset(
        "laptop", generator=dict(n_layers=2, hidden=8, depth=1),
        cmt=dict(n_steps=2, samples_per_step=128, buffer_size=256, grad_steps_per_step=2, batch_size=64),
        energy_compile=False, device="cpu", checkpoint_every=1,
    )
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=config)
    sampler.train(checkpoint_dir=tmp_path, progress=True)
    assert all(r["phase_s"]["checkpoint"] > 0 for r in sampler.history)
    assert "(mostly " in capsys.readouterr().err
    sampler.close()
