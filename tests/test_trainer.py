"""The trainer: exact evaluation counts, correct weights for reused samples, exact resume."""

import io
import math

import pytest
import torch

from openmm_cmt.cmt import PATHS, BoltzmannTarget, CMTConfig, CMTTrainer, FunctionTarget, ReplayBuffer, annealing_step
from openmm_cmt.cmt.paths import geometric_exponents, ladder_betas
from openmm_cmt.cmt.trainer import make_optimizer
from openmm_cmt.energy import EnergyEngine, linlog_cut
from openmm_cmt.flows import EuclideanFlow
from openmm_cmt.cmt.toy_targets import gmm40




class GaussianFlow(torch.nn.Module):
    """x = mean + exp(log_std) z: exact sample/log_prob, for checks with closed forms."""

    def __init__(self, dim, mean=0.0, std=1.0):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.full((dim,), float(mean), dtype=torch.float64))
        self.log_std = torch.nn.Parameter(torch.full((dim,), math.log(std), dtype=torch.float64))

    def sample(self, n, generator=None):
        x = self.mean + self.log_std.exp() * torch.randn(n, self.mean.numel(), dtype=torch.float64, generator=generator)
        return x, self.log_prob(x)

    def log_prob(self, x):
        z = (x - self.mean) / self.log_std.exp()
        return (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def small_flow(seed=0):
    return EuclideanFlow(2, n_layers=2, hidden=16, n_bins=8, prior_scale=20.0, tail_bound=60.0, seed=seed)


@pytest.mark.parametrize("path", PATHS)
def test_every_path_counts_evaluations_exactly(path):
    target = gmm40().target()
    config = CMTConfig(path=path, n_steps=3, samples_per_step=203, buffer_size=400, grad_steps_per_step=7,
                       batch_size=64, n_geometric=2, n_temperatures=3, t_high_factor=9.0)
    trainer = CMTTrainer(small_flow(), target, config)
    history = trainer.run()
    assert [r["evaluations"] for r in history] == [203, 406, 609]
    assert target.n_evaluations == trainer.n_evaluations == 609
    for r in history:
        assert r["lam"] >= 0 and r["eta"] >= 0 and 0 < r["beta"] <= 1
        assert r["alpha"] == pytest.approx(r["lam"] / (1 + r["lam"] + r["eta"]))
        assert math.isfinite(r["loss"]) and 0 < r["ess"] <= 1
    if path == "trust-region":
        assert all(r["eta"] == 0 for r in history)
    if path == "entropy":
        assert all(r["lam"] == 0 for r in history)
    if path == "geometric-linear":
        expected = [geometric_exponents(i, 2) for i in range(3)]
        assert [r["alpha"] for r in history] == pytest.approx([a for a, _ in expected])
        assert [r["beta"] for r in history] == pytest.approx([b for _, b in expected])
    if path == "temperature-ladder":
        assert [r["beta"] for r in history] == pytest.approx(ladder_betas(9.0, 3))
        assert all(r["alpha"] == 0 for r in history)
    if path in ("cmt", "trust-region"):
        assert history[0]["kl"] == pytest.approx(config.eps_tr, abs=1e-6)  # q_0 is far from p
    if path != "reverse-kl":
        assert len(trainer.buffer) == 400


def test_reused_samples_are_weighted_towards_the_next_density():
    """Buffer samples from an older model, weighted by q_{i+1}/q_gen with q_i the current
    model, reproduce the moments of q_{i+1} = q_i^a p~^b (a product of Gaussians)."""
    target = FunctionTarget(lambda x: (-0.5 * (x - 3.0) ** 2 / 0.5).sum(-1))  # p ~ N(3, 0.5)
    flow = GaussianFlow(1, mean=-1.0, std=2.0)  # the old model (proposal)
    trainer = CMTTrainer(flow, target, CMTConfig(samples_per_step=50_000, buffer_size=100_000, seed=1))
    draws = torch.Generator().manual_seed(1)  # a fixed stream: the moments are checked to 3 %
    with torch.no_grad():
        x, log_q = flow.sample(50_000, draws)
        trainer.buffer.push(x, log_q, target.log_prob(x))
        flow.mean.fill_(1.0)  # the current model q_i = N(1, 1.5^2)
        flow.log_std.fill_(math.log(1.5))
    alpha, beta = 0.6, 0.3
    fresh, fresh_q = flow.sample(1000, draws)
    step = annealing_step(fresh_q.detach(), target.log_prob(fresh), alpha, beta)
    w = torch.softmax(trainer.buffer_log_weights(step), 0)
    x = trainer.buffer.x[:, 0]
    precision = alpha / 1.5**2 + beta / 0.5
    mean = (alpha * 1.0 / 1.5**2 + beta * 3.0 / 0.5) / precision
    assert float((w * x).sum()) == pytest.approx(mean, abs=0.02)
    assert float((w * (x - mean) ** 2).sum()) == pytest.approx(1 / precision, rel=0.03)


def test_fresh_buffer_rows_reuse_their_sampling_density():
    """Rows drawn by the current model keep the log q_gen they were stored with as their
    log q_i: the weights equal a full re-evaluation, and the flow sees only the older rows."""
    target = FunctionTarget(lambda x: (-0.5 * (x - 3.0) ** 2 / 0.5).sum(-1))
    flow = GaussianFlow(1, mean=-1.0, std=2.0)
    trainer = CMTTrainer(flow, target, CMTConfig(samples_per_step=300, buffer_size=1000, seed=2))
    draws = torch.Generator().manual_seed(2)
    with torch.no_grad():
        x_old, q_old = flow.sample(700, draws)
        trainer.buffer.push(x_old, q_old, target.log_prob(x_old))
        flow.mean.fill_(0.5)
        x_new, q_new = flow.sample(300, draws)
        trainer.buffer.push(x_new, q_new, target.log_prob(x_new))
    step = annealing_step(q_new, target.log_prob(x_new), 0.6, 0.3)
    full = trainer.buffer_log_weights(step)
    seen = []
    log_prob = trainer.calls.log_prob
    trainer.calls.log_prob = lambda x: seen.append(x.shape[0]) or log_prob(x)
    reused = trainer.buffer_log_weights(step, n_fresh=300)
    assert seen == [700]
    assert torch.allclose(reused, full, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="n_fresh"):
        trainer.buffer_log_weights(step, n_fresh=1001)


def test_forward_kl_fit_reaches_the_target():
    """One step at the target (alpha = 0, beta = 1) fits a Gaussian model to p = N(3, 0.5)
    from samples of N(0, 2^2): the weighted forward KL's minimiser is p's mean and variance."""
    target = FunctionTarget(lambda x: (-0.5 * (x - 3.0) ** 2 / 0.5).sum(-1))
    flow = GaussianFlow(1, mean=0.0, std=2.0)
    config = CMTConfig(path="temperature-ladder", n_temperatures=1, samples_per_step=20_000, buffer_size=20_000,
                       grad_steps_per_step=600, batch_size=1024, lr=0.02, seed=3)
    CMTTrainer(flow, target, config).step()
    assert flow.mean.item() == pytest.approx(3.0, abs=0.05)
    assert flow.log_std.exp().item() ** 2 == pytest.approx(0.5, rel=0.1)


def _minor_mode_target():
    """p = 0.9 N(0, 1) + 0.1 N(5, 1), unnormalised."""
    def log_p(x):
        x = x[..., 0]
        return torch.logaddexp(math.log(0.9) - 0.5 * x**2, math.log(0.1) - 0.5 * (x - 5.0) ** 2)
    return FunctionTarget(log_p)


def _alpha2_optimum():
    """argmin over N(m, s^2) of the alpha = 2 divergence int p^2/q to the target above, by
    quadrature: the mass-covering fit is wider than the forward KL's N(0.5, 3.25)."""
    x = torch.linspace(-30, 30, 60_001, dtype=torch.float64)
    log_p = _minor_mode_target().log_prob(x[:, None]) - 0.5 * math.log(2 * math.pi)
    m = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    log_s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([m, log_s], max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        log_q = -0.5 * ((x - m) / log_s.exp()) ** 2 - log_s - 0.5 * math.log(2 * math.pi)
        loss = torch.logsumexp(2 * log_p - log_q, 0)
        loss.backward()
        return loss
    opt.step(closure)
    return m.item(), math.exp(2 * log_s.item())


@pytest.mark.parametrize("order", [1.0, 2.0])
def test_fit_order_descends_the_alpha_divergence(order):
    """Fitting a Gaussian to a two-mode target at beta = 1 from its own samples: order 1
    reaches the forward-KL optimum (p's mean 0.5 and variance 3.25), order 2 the alpha = 2
    optimum (mean 0.65, variance 4.21, the larger importance-sampling ESS)."""
    flow = GaussianFlow(1, mean=0.0, std=1.5)
    config = CMTConfig(path="temperature-ladder", n_temperatures=1, n_steps=12, samples_per_step=20_000,
                       buffer_size=20_000, grad_steps_per_step=150, batch_size=2048, lr=0.01, fit_order=order, seed=4)
    CMTTrainer(flow, _minor_mode_target(), config).run()
    mean, var = (0.5, 3.25) if order == 1.0 else _alpha2_optimum()
    if order == 2.0:
        assert mean == pytest.approx(0.651, abs=0.002) and var == pytest.approx(4.208, abs=0.005)
    assert flow.mean.item() == pytest.approx(mean, abs=0.05)
    assert flow.log_std.exp().item() ** 2 == pytest.approx(var, rel=0.05)


def test_fit_order_weighs_a_minibatch_by_powers_of_the_step_ratio():
    """Fresh samples (q_gen = q_i) fitted from q_theta = q_i: order a weighs each by
    (q_{i+1}/q_i)^a, self-normalised; the loss and its gradient say so."""
    target = FunctionTarget(lambda x: (-0.5 * (x - 1.0) ** 2).sum(-1))
    flow = GaussianFlow(1, std=2.0)
    trainer = CMTTrainer(flow, target, CMTConfig(samples_per_step=64, buffer_size=64, batch_size=64, fit_order=2.5))
    with torch.no_grad():
        x, log_q = flow.sample(64)
    trainer.buffer.push(x, log_q, target.log_prob(x))
    step = annealing_step(log_q, target.log_prob(x), 0.3, 0.6)
    log_w = trainer.buffer_log_weights(step)
    loss, grads = trainer.calls.loss_and_grads(x, torch.softmax(log_w, 0))
    expected_w = torch.softmax(2.5 * (step.log_density(log_q, target.log_prob(x)) - log_q), 0)
    expected = -(expected_w * flow.log_prob(x)).sum()
    expected_grads = torch.autograd.grad(expected, [flow.mean, flow.log_std])
    assert float(loss) == pytest.approx(expected.item(), rel=1e-12)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-10)


def test_weights_at_the_target_ignore_the_current_model():
    """At alpha = 0 the buffer weights are p~/q_gen whatever the current model says, even
    for samples outside its support (no 0 * -inf)."""
    target = FunctionTarget(lambda x: (-0.5 * x**2).sum(-1))
    flow = GaussianFlow(1)
    trainer = CMTTrainer(flow, target, CMTConfig(samples_per_step=8, buffer_size=8))
    x = torch.linspace(-2, 2, 8, dtype=torch.float64).reshape(8, 1)
    log_q_gen = torch.full((8,), -1.0, dtype=torch.float64)
    trainer.buffer.push(x, log_q_gen, target.log_prob(x))
    with torch.no_grad():
        flow.log_std.fill_(-1e4)  # the current model now has (numerically) no support there
    step = annealing_step(log_q_gen, target.log_prob(x), 0.0, 1.0)
    log_w = trainer.buffer_log_weights(step)
    assert torch.isfinite(log_w).all()
    assert torch.allclose(log_w - log_w.max(), (target.log_prob(x) + 1.0) - (target.log_prob(x) + 1.0).max())


class HarmonicEngine(EnergyEngine):
    """E = k/2 sum |x_i|^2 (kJ/mol), forces -k x: an engine with known derivatives."""

    def __init__(self, n_atoms=3, kT=2.5, k=400.0):
        super().__init__(n_atoms, kT)
        self.k = k

    def _energy(self, x, forces):
        e = 0.5 * self.k * (x.to(torch.float64) ** 2).sum((1, 2))
        return (e, -self.k * x.to(torch.float64)) if forces else e


def test_boltzmann_target_counts_and_differentiates():
    engine = HarmonicEngine()
    target = BoltzmannTarget(engine)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    log_p = target.log_prob(x)
    assert target.n_evaluations == 5
    expected = -0.5 * 400.0 * (x.detach() ** 2).sum((1, 2)) / 2.5
    assert log_p.detach() == pytest.approx(expected)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    assert grad == pytest.approx(-400.0 / 2.5 * x.detach())
    # clashes: the linear-log cut keeps huge energies finite and ordered
    huge = torch.full((2, 3, 3), 1e6, dtype=torch.float64)
    huge[1] *= 10
    out = target.log_prob(huge)
    assert out[0] > out[1] and out[1] >= -linlog_cut(torch.tensor(1e30)).item()
    assert target.n_evaluations == 7
    with pytest.raises(ValueError, match="batch, 3, 3"):
        target.log_prob(torch.zeros(3, 3))


def test_replay_buffer_is_fifo_and_round_trips():
    buf = ReplayBuffer(5)
    for start in (0, 3, 6):
        v = torch.arange(start, start + 3, dtype=torch.float64)
        buf.push(v[:, None], v, -v)
    assert len(buf) == 5 and buf.log_q.tolist() == [4, 5, 6, 7, 8] and buf.log_p.tolist() == [-4, -5, -6, -7, -8]
    other = ReplayBuffer(1)
    other.load_state_dict(buf.state_dict())
    assert other.capacity == 5 and torch.equal(other.x, buf.x)
    with pytest.raises(ValueError, match="leading size"):
        buf.push(torch.zeros(2, 1), torch.zeros(3), torch.zeros(3))


def comparable(history):
    return [{k: v for k, v in r.items() if "wall" not in k and k != "phase_s"} for r in history]


@pytest.mark.parametrize("path, ema_decay", [("cmt", 0.0), ("cmt", 0.8), ("reverse-kl", 0.0)])
def test_resume_equals_uninterrupted_run(path, ema_decay):
    config = CMTConfig(path=path, n_steps=4, samples_per_step=256, buffer_size=600, grad_steps_per_step=5,
                       batch_size=128, lr_schedule="cosine", optimizer="adamw", weight_decay=1e-4,
                       drop_top_energy_fraction=0.1, seed=3, ema_decay=ema_decay)
    straight = CMTTrainer(small_flow(), gmm40().target(), config)
    straight.run()

    first = CMTTrainer(small_flow(), gmm40().target(), config)
    first.run(n_steps=2)
    blob = io.BytesIO()
    torch.save(first.state_dict(), blob)
    blob.seek(0)
    state = torch.load(blob, weights_only=True)
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = CMTTrainer(small_flow(seed=7), gmm40().target(), config)
    resumed.load_state_dict(state)
    resumed.run()

    for (name, a), (_, b) in zip(straight.flow.state_dict().items(), resumed.flow.state_dict().items()):
        assert torch.equal(a, b), name
    assert comparable(straight.history) == comparable(resumed.history)
    assert resumed.n_evaluations == straight.n_evaluations == 4 * 256
    if path == "cmt":
        assert torch.equal(straight.buffer.x, resumed.buffer.x)
        assert len(straight.buffer) == 600  # 0.1 of each step's samples kept out


def _saved_and_loaded(trainer):
    blob = io.BytesIO()
    torch.save(trainer.state_dict(), blob)
    blob.seek(0)
    return torch.load(blob, weights_only=True)


def test_cosine_learning_rate_is_the_closed_form_and_ends_at_zero():
    config = CMTConfig(n_steps=4, grad_steps_per_step=5, lr=0.01, lr_schedule="cosine")
    trainer = CMTTrainer(small_flow(), gmm40().target(), config)
    k = trainer.total_grad_steps
    assert k == 20
    assert trainer.learning_rate(0) == pytest.approx(0.01)
    assert trainer.learning_rate(5) == pytest.approx(0.005 * (1 + math.cos(math.pi / 4)))
    assert trainer.learning_rate(10) == pytest.approx(0.005)
    assert trainer.learning_rate(20) == 0.0 and trainer.learning_rate(27) == 0.0  # no rise past the end
    constant = CMTTrainer(small_flow(), gmm40().target(), CMTConfig(lr=0.02))
    assert constant.learning_rate(0) == constant.learning_rate(10_000) == 0.02


def learning_rates_used(trainer) -> list:
    """The learning rate of each optimiser step the trainer takes from now on."""
    used = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return used


def test_running_past_n_steps_stretches_the_cosine_schedule_and_still_trains():
    config = CMTConfig(n_steps=2, samples_per_step=256, buffer_size=512, grad_steps_per_step=5, batch_size=128,
                       lr=0.01, lr_schedule="cosine", seed=2)
    trainer = CMTTrainer(small_flow(), gmm40().target(), config)
    used = learning_rates_used(trainer)
    trainer.run()
    assert used[-1] == pytest.approx(0.005 * (1 + math.cos(math.pi * 9 / 10)))
    before = [p.detach().clone() for p in trainer.flow.parameters()]
    trainer.run(3)
    assert trainer.config.n_steps == 3 and trainer.total_grad_steps == 15
    # the added step trains at the longer schedule's rates, not at the shorter one's zero
    assert used[10:] == pytest.approx([0.005 * (1 + math.cos(math.pi * k / 15)) for k in range(10, 15)])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.flow.parameters()))
    with pytest.raises(ValueError, match="more than the run's 3 annealing steps"):
        trainer.extend(3)


def test_an_extended_run_resumes_like_an_uninterrupted_one():
    config = CMTConfig(n_steps=2, samples_per_step=256, buffer_size=600, grad_steps_per_step=5, batch_size=128,
                       lr_schedule="cosine", seed=4, ema_decay=0.5)
    straight = CMTTrainer(small_flow(), gmm40().target(), config)
    straight.run()
    straight.run(3)
    straight.run(4)

    first = CMTTrainer(small_flow(), gmm40().target(), config)
    first.run()
    first.run(3)
    resumed = CMTTrainer(small_flow(seed=7), gmm40().target(), config)  # built with the run's original n_steps
    resumed.load_state_dict(_saved_and_loaded(first))
    assert resumed.config.n_steps == 3 and resumed.total_grad_steps == 15
    resumed.run(4)
    for (name, a), (_, b) in zip(straight.flow.state_dict().items(), resumed.flow.state_dict().items()):
        assert torch.equal(a, b), name
    assert comparable(straight.history) == comparable(resumed.history)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_optimizer_is_fused_on_cpu_and_takes_the_reference_adam_steps(optimizer):
    config = CMTConfig(optimizer=optimizer, lr=0.01, weight_decay=0.1 if optimizer == "adamw" else 0.0)
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(300, generator=g), torch.randn(7, 5, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(5)]
    fused_params = [torch.nn.Parameter(p.clone()) for p in start]
    plain_params = [torch.nn.Parameter(p.clone()) for p in start]
    fused = make_optimizer(fused_params, config)
    kind = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    plain = kind(plain_params, lr=config.lr, weight_decay=config.weight_decay, foreach=False)
    assert fused.defaults["fused"] is True
    for step_grads in grads:
        for opt, params in ((fused, fused_params), (plain, plain_params)):
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
    for a, b, before in zip(fused_params, plain_params, start):
        assert not torch.equal(a, before)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_optimizer_falls_back_where_the_device_has_no_fused_kernel():
    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert not make_optimizer(params, CMTConfig()).defaults["fused"]


def test_averaged_model_is_the_moving_average_of_the_optimised_one():
    """With ema_decay d the flow ends a step holding avg_k = d avg_{k-1} + (1 - d) theta_k
    over the optimiser's iterates theta_k (avg_0 the parameters before the step), while the
    optimiser continues from its own last iterate."""
    target = FunctionTarget(lambda x: (-0.5 * (x - 3.0) ** 2).sum(-1))
    flow = GaussianFlow(1)
    trainer = CMTTrainer(flow, target, CMTConfig(samples_per_step=512, buffer_size=512, grad_steps_per_step=7,
                                                 batch_size=128, lr=0.05, ema_decay=0.75, seed=1))
    iterates, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        iterates.append(flow.mean.detach().clone())  # the flow holds the optimised parameters here
        return out

    trainer.optimizer.step = recording_step
    average = flow.mean.detach().clone()
    trainer.step()
    for theta in iterates:
        average = 0.75 * average + 0.25 * theta
    assert len(iterates) == 7
    assert torch.allclose(flow.mean, average, rtol=0, atol=1e-12)
    assert torch.equal(trainer._optimised[0], iterates[-1])
    assert not torch.equal(flow.mean, iterates[-1])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ema_decay"):
        CMTConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        CMTConfig(path="reverse-kl", ema_decay=0.5)
    with pytest.raises(ValueError, match="path"):
        CMTConfig(path="annealed-importance")
    for bad in (0.5, 5.0, "2"):
        with pytest.raises(ValueError, match="fit_order"):
            CMTConfig(fit_order=bad)
    with pytest.raises(ValueError, match="fit_order"):
        CMTConfig(path="reverse-kl", fit_order=2.0)
    with pytest.raises(ValueError, match="samples_per_step"):
        CMTConfig(samples_per_step=0)
    with pytest.raises(ValueError, match="optimizer"):
        CMTConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="drop_top_energy_fraction"):
        CMTConfig(drop_top_energy_fraction=1.0)
    with pytest.raises(ValueError, match="target"):
        CMTTrainer(small_flow(), object(), CMTConfig())


def test_trainer_draws_from_its_own_rng_only():
    """The run depends on config.seed alone and leaves torch's, numpy's and python's
    global RNGs as it found them."""
    import random

    import numpy as np

    config = CMTConfig(n_steps=2, samples_per_step=128, buffer_size=256, grad_steps_per_step=3, batch_size=64, seed=5)
    histories = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        random.seed(global_seed)
        before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        trainer = CMTTrainer(small_flow(), gmm40().target(), config)
        histories.append(comparable(trainer.run()))
        assert torch.equal(torch.get_rng_state(), before[0])
        assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    assert histories[0] == histories[1]
    assert not hasattr(trainer, "generator") and isinstance(trainer.rng, torch.Generator)


def test_checkpoint_rng_of_the_old_format_and_of_another_device():
    config = CMTConfig(n_steps=2, samples_per_step=64, buffer_size=128, grad_steps_per_step=2, batch_size=32, seed=2)
    trainer = CMTTrainer(small_flow(), gmm40().target(), config)
    trainer.run(n_steps=1)
    state = trainer.state_dict()
    stream = state["rng"]["rng"]
    old = dict(state, rng={"torch": torch.get_rng_state(), "cuda": [], "generator": stream})
    resumed = CMTTrainer(small_flow(), gmm40().target(), config)
    resumed.load_state_dict(old)
    assert torch.equal(resumed.rng.get_state(), stream)
    elsewhere = dict(state, rng={"rng": torch.zeros(16, dtype=torch.uint8), "device": "cuda"})
    with pytest.warns(RuntimeWarning, match="random stream belongs to cuda"):
        resumed.load_state_dict(elsewhere)
    assert resumed.run()[-1]["evaluations"] == 128


def test_a_registered_path_is_trained_along():
    from dataclasses import dataclass

    from openmm_cmt.cmt.paths import AnnealingPath, register_path
    from openmm_cmt.cmt import PATHS

    @dataclass
    class HalfwayPath(AnnealingPath):
        eps_tr: float = 0.5  # read from CMTConfig
        beta: float = 0.5  # not a CMTConfig field: keeps its default

        def step(self, log_q, log_p, index, init=(1.0, 1.0)):
            return annealing_step(log_q, log_p, 1.0 - self.beta, self.beta)

    register_path("halfway", HalfwayPath)
    try:
        register_path("halfway", HalfwayPath)  # the same class again is a no-op
        with pytest.raises(ValueError, match="already registered"):
            register_path("cmt", HalfwayPath)
        config = CMTConfig(path="halfway", eps_tr=0.25, n_steps=2, samples_per_step=64, buffer_size=128,
                           grad_steps_per_step=2, batch_size=32)
        trainer = CMTTrainer(small_flow(), gmm40().target(), config)
        assert trainer.path == HalfwayPath(eps_tr=0.25, beta=0.5)
        assert [(r["alpha"], r["beta"]) for r in trainer.run()] == [(0.5, 0.5)] * 2
    finally:
        del PATHS["halfway"]
    with pytest.raises(ValueError, match="path must be one of cmt, trust-region"):
        CMTConfig(path="halfway")
    with pytest.raises(ValueError, match="subclass of AnnealingPath"):
        register_path("gaussian", GaussianFlow)
