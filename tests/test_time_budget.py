"""A wall-time budget sets a run's length so that its learning-rate schedule still ends."""

import io
import math

import pytest
import torch

import openmm_cmt  # noqa: F401  (torch before openmm)
import openmm_cmt.sampler as sampler_module
from openmm_cmt.cmt import CMTConfig, CMTTrainer
from openmm_cmt.cmt.time_budget import TimeBudget
from openmm_cmt.cmt.toy_targets import gmm40
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler
from test_trainer import learning_rates_used, small_flow


# Tiny runs: a few draws per step, far from the target by design.
pytestmark = [
    pytest.mark.filterwarnings("ignore::openmm_cmt.sampler.AnnealingIncompleteWarning"),
    pytest.mark.filterwarnings("ignore::openmm_cmt.sampler.FewEffectiveSamplesWarning"),
]


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_budget_leaves_out_the_warm_up_and_counts_steps_by_the_shortest_of_recent_ones():
    clock = FakeClock()
    budget = TimeBudget(100.0, warmup_steps=2, min_timed=2, window=3, clock=clock)
    for duration, expected in ((40.0, None), (20.0, None), (2.0, None)):  # compiling, then one step timed
        clock.t += duration
        assert budget.step_done() is expected
    for duration, expected in ((4.0, 34 // 2), (3.0, 31 // 2), (10.0, 21 // 3)):
        clock.t += duration
        assert budget.step_done() == expected
    assert budget.seconds_left == pytest.approx(21.0)
    clock.t += 25.0
    assert budget.step_done() == 0  # past the deadline
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeBudget(0.0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeBudget(float("nan"))
    with pytest.raises(ValueError, match="1 <= min_timed <= window"):
        TimeBudget(10.0, min_timed=6, window=5)


def test_one_slow_step_after_compiling_does_not_shorten_the_run_by_itself():
    clock = FakeClock()
    budget = TimeBudget(1000.0, clock=clock)  # two steps of warm-up, three timed before estimating
    for duration in (200.0, 80.0, 40.0, 10.0):
        clock.t += duration
        assert budget.step_done() is None
    clock.t += 10.0
    assert budget.step_done() == (1000 - 340) // 10  # the shortest of 40, 10, 10


def test_deadline_is_reported_even_before_step_times_are_known():
    clock = FakeClock()
    budget = TimeBudget(10.0, clock=clock)
    clock.t += 11.0
    assert budget.step_done() == 0


def _config(**kw):
    return CMTConfig(n_steps=6, samples_per_step=256, buffer_size=512, grad_steps_per_step=5, batch_size=128,
                     lr=0.01, lr_schedule="cosine", seed=2, **kw)


def _cosine(k0, p0, k_end, k):
    """The retimed schedule's rate at optimiser step k (lr 0.01)."""
    return 0.005 * (1 + math.cos(math.pi * (p0 + (1 - p0) * (k - k0) / (k_end - k0))))


def test_a_retimed_run_ends_its_cosine_schedule_on_its_last_step_without_a_jump_and_resumes_alike():
    trainer = CMTTrainer(small_flow(), gmm40().target(), _config())
    used = learning_rates_used(trainer)
    trainer.run(2)
    trainer.retime(3)  # shorter: the rest of the schedule is squeezed into one step
    assert trainer.config.n_steps == 3 and trainer.total_grad_steps == 15
    assert trainer.run() is trainer.history and len(trainer.history) == 3
    assert used[:10] == pytest.approx([0.005 * (1 + math.cos(math.pi * k / 30)) for k in range(10)])
    assert used[10:] == pytest.approx([_cosine(10, 1 / 3, 15, k) for k in range(10, 15)])
    assert used[-1] < 0.01 * 0.05  # the last optimiser step runs near the end of the schedule
    assert all(a > b for a, b in zip(used, used[1:]))  # no jump: the rate only falls
    for bad in (2, 0, 1.5, True):  # fewer than the steps taken, no steps at all, not a whole number
        with pytest.raises(ValueError, match="retime needs a whole number"):
            trainer.retime(bad)
    trainer.retime(3)  # its own length: nothing changes
    assert trainer.learning_rate(15) == pytest.approx(0.0)

    blob = io.BytesIO()
    torch.save(trainer.state_dict(), blob)
    blob.seek(0)
    resumed = CMTTrainer(small_flow(seed=7), gmm40().target(), _config())  # built with the original length
    resumed.load_state_dict(torch.load(blob, weights_only=True))
    assert resumed.config.n_steps == 3 and resumed.total_grad_steps == 15
    assert resumed.run() is resumed.history and len(resumed.history) == 3  # nothing left to do


def test_a_run_retimed_longer_goes_on_falling_and_a_resumed_one_falls_alike():
    trainer = CMTTrainer(small_flow(), gmm40().target(), _config())
    used = learning_rates_used(trainer)
    trainer.run(2)
    trainer.retime(3)
    trainer.run()
    trainer.retime(5)  # after the schedule's end: steps added there do not restart it
    trainer.run()
    assert len(trainer.history) == 5 and trainer.total_grad_steps == 25
    assert used[15:] == pytest.approx([0.0] * 10)

    trainer = CMTTrainer(small_flow(), gmm40().target(), _config())
    used = learning_rates_used(trainer)
    trainer.run(2)
    trainer.retime(4)
    trainer.run(3)
    trainer.retime(6)  # back to the run's own length, from where the schedule stands
    p0 = 1 / 3 + (2 / 3) * 5 / 10
    blob = io.BytesIO()
    torch.save(trainer.state_dict(), blob)
    trainer.run()
    assert used[:10] == pytest.approx([_cosine(0, 0, 30, k) for k in range(10)])
    assert used[10:15] == pytest.approx([_cosine(10, 1 / 3, 20, k) for k in range(10, 15)])
    assert used[15:] == pytest.approx([_cosine(15, p0, 30, k) for k in range(15, 30)])
    assert all(a > b for a, b in zip(used, used[1:]))

    blob.seek(0)
    resumed = CMTTrainer(small_flow(seed=7), gmm40().target(), _config())
    resumed.load_state_dict(torch.load(blob, weights_only=True))
    resumed_used = learning_rates_used(resumed)
    resumed.run()
    assert resumed_used == pytest.approx(used[15:])
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in trainer.history]


def test_a_callback_that_shortens_the_run_ends_it_there():
    trainer = CMTTrainer(small_flow(), gmm40().target(), _config())
    trainer.run(callback=lambda t, record: t.retime(2) if t.step_index == 1 else None)
    assert trainer.step_index == 2 and trainer.history[-1]["step"] == 1


def _tiny(n_steps):
    return preset(
        "laptop",
        generator=dict(n_layers=2, hidden=16, depth=1, scaling="fixed"),
        cmt=dict(n_steps=n_steps, samples_per_step=128, buffer_size=256, grad_steps_per_step=2, batch_size=64),
        energy_compile=False, device="cpu", checkpoint_every=2, eval_samples=64,
    )  # fmt: skip


def test_sampler_fits_its_run_into_max_minutes_and_saves_the_length_it_ended_with(monkeypatch, tmp_path):
    clock = FakeClock()
    monkeypatch.setattr(sampler_module, "TimeBudget", lambda seconds, **kw: TimeBudget(seconds, clock=clock, **kw))
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=_tiny(n_steps=20))

    def one_second_per_step(_sampler, _record):
        clock.t += 1.0

    # 9 s at 1 s per step: three steps of warm-up (compiling; the buffer of two steps
    # filling), three timed, then three more fit
    history = sampler.train(progress=False, max_minutes=0.15, callbacks=[one_second_per_step], checkpoint_dir=tmp_path)
    assert len(history) == 9
    assert sampler.trainer.config.n_steps == sampler.config.cmt["n_steps"] == 9
    assert sampler.trainer.grad_step_index == sampler.trainer.total_grad_steps == 18
    assert history[-1]["lr"] < 0.1 * history[0]["lr"]
    loaded = BoltzmannGeneratorSampler.load(tmp_path)
    assert loaded.config.cmt_config().n_steps == 9 and len(loaded.history) == 9
    for bad in (0, True, float("inf")):
        with pytest.raises(ValueError, match="max_minutes must be a finite number > 0 or null"):
            sampler.train(progress=False, max_minutes=bad)


def test_a_budget_that_fits_this_calls_steps_leaves_the_rest_of_the_run_alone(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(sampler_module, "TimeBudget", lambda seconds, **kw: TimeBudget(seconds, clock=clock, **kw))
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=_tiny(n_steps=40))
    # 8 of 40 steps at 1 s each within 10 s: the run stays 40 steps long
    sampler.train(n_steps=8, progress=False, max_minutes=10 / 60, callbacks=[lambda *_: setattr(clock, "t", clock.t + 1.0)])
    assert len(sampler.history) == 8 and sampler.trainer.config.n_steps == 40


def test_sampler_without_a_budget_problem_keeps_its_length(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(sampler_module, "TimeBudget", lambda seconds, **kw: TimeBudget(seconds, clock=clock, **kw))
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=_tiny(n_steps=4))
    sampler.train(progress=False, max_minutes=10, callbacks=[lambda *_: setattr(clock, "t", clock.t + 1.0)])
    assert len(sampler.history) == 4 and sampler.config.cmt["n_steps"] == 4


def test_phases_are_timed_after_the_device_finishes_its_queued_work(monkeypatch):
    trainer = CMTTrainer(small_flow(), gmm40().target(), _config())
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    with trainer._timing("dual"):
        pass
    assert calls == []  # on a CPU there is nothing to wait for
    monkeypatch.setattr(trainer, "_device", lambda: torch.device("cuda", 0))
    with trainer._timing("dual"):
        assert len(calls) == 1
    assert calls == [torch.device("cuda", 0)] * 2


def test_cli_records_the_budget_in_the_run_and_applies_a_new_one_on_resume(tmp_path, capsys):
    import json

    from openmm_cmt.cli import main

    run = tmp_path / "run"
    tiny = ["--device", "cpu", "--quiet", "--no-evaluate", "--set", "generator.n_layers=2", "--set",
            "generator.hidden=16", "--set", "generator.depth=1", "--set", "cmt.samples_per_step=128", "--set",
            "cmt.buffer_size=256", "--set", "cmt.grad_steps_per_step=2", "--set", "cmt.batch_size=64", "--set",
            "energy_compile=false"]
    assert main(["train", "alanine-dipeptide", "--out", str(run), "--steps", "2", "--max-minutes", "30", *tiny]) == 0
    assert json.loads((run / "config.json").read_text())["max_minutes"] == 30
    assert main(["train", "alanine-dipeptide", "--out", str(run), "--resume", "--steps", "3", "--max-minutes", "20",
                 "--no-evaluate"]) == 0
    assert "--max-minutes 20)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["max_minutes"] == 20
    assert main(["train", "alanine-dipeptide", "--out", str(tmp_path / "bad"), "--set", "max_minutes=0", *tiny]) == 2
    assert "max_minutes must be a finite number > 0 or null, got 0" in capsys.readouterr().err


def test_preset_budget_is_validated():
    assert preset("laptop", max_minutes=12.5).max_minutes == 12.5
    for bad in (0, -1, float("inf"), "ten"):
        with pytest.raises(ValueError, match="max_minutes must be a finite number > 0 or null"):
            preset("laptop", max_minutes=bad)


def _budgeted(monkeypatch, n_steps, seconds, durations):
    """Train ``_tiny(n_steps)`` in ``seconds`` of a fake clock, step k taking
    ``durations(k)``; return the sampler, the run's length as each step ended (before
    the budget looked at it) and the clock's time past the deadline."""
    clock = FakeClock()
    start = clock.t
    monkeypatch.setattr(sampler_module, "TimeBudget", lambda seconds, **kw: TimeBudget(seconds, clock=clock, **kw))
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=_tiny(n_steps=n_steps))
    lengths = []

    def advance(s, _record):
        lengths.append(s.trainer.config.n_steps)
        clock.t += durations(len(lengths))

    sampler.train(progress=False, max_minutes=seconds / 60, callbacks=[advance])
    return sampler, lengths, clock.t - (start + seconds)


def test_a_run_shortened_while_its_steps_were_slow_takes_back_the_steps_faster_ones_make_room_for(monkeypatch):
    # 40 s: at 4 s a step the run is cut to 10 steps after the 6th (three of warm-up,
    # three timed); from the 9th on steps take 0.5 s, so the 7.5 s left then hold 15
    # more: the run grows to 24 steps and ends at the deadline, its rate only falling
    sampler, lengths, overrun = _budgeted(monkeypatch, 30, 40.0, lambda k: 4.0 if k <= 8 else 0.5)
    assert lengths[:6] == [30] * 6 and lengths[6:9] == [10] * 3 and lengths[9:] == [24] * 15
    assert len(sampler.history) == sampler.trainer.config.n_steps == sampler.config.cmt["n_steps"] == 24
    assert -0.5 < overrun <= 0.5
    rates = [record["lr"] for record in sampler.history]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert sampler.trainer.learning_rate(sampler.trainer.grad_step_index) == pytest.approx(0.0)


def test_uneven_steps_shorten_the_run_a_little_at_a_time_and_end_it_at_the_deadline(monkeypatch):
    # steps of 1 and 2 s in turn: the estimate (the shortest recent step, 1 s) first
    # expects 27 steps; the run is shortened as the time runs out, ends within one
    # step's variation (1 s) of the 30 s deadline, and its length never grows
    sampler, lengths, overrun = _budgeted(monkeypatch, 40, 30.0, lambda k: 1.0 if k % 2 else 2.0)
    assert lengths[:6] == [40] * 6 and lengths[6] == 6 + 21
    assert all(a >= b for a, b in zip(lengths, lengths[1:]))
    assert len(set(lengths[6:])) > 2  # shortened more than once, not cut once to a guess
    assert -1.0 < overrun <= 1.0
    assert len(sampler.history) == sampler.trainer.config.n_steps == len(lengths) == 20


def test_progress_projects_the_time_left_from_recent_steps_within_the_budget(capsys):
    def lines(budget=None):
        reporter = sampler_module._Progress(10, enabled=True, budget=budget)
        for step, seconds in enumerate((100.0, 10.0, 10.0, 10.0)):  # compiling, then 10 s a step
            reporter.update({"step": step, "step_wall_s": seconds})
        return capsys.readouterr().err.strip().splitlines()

    first, *_, last = lines()
    assert "left 900s" in first and "left 60s" in last  # 6 steps of 10 s, not of the mean 32.5 s
    clock = FakeClock()
    assert "left 25s" in lines(TimeBudget(25.0, clock=clock))[-1]  # a budget that ends sooner caps it
