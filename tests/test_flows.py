"""Splines, coupling layers, priors and the Euclidean flow against closed forms and autograd."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openmm_cmt.flows import (
    BOUNDED,
    CIRCULAR,
    UNBOUNDED,
    EuclideanFlow,
    IndependentPrior,
    SplineCoupling,
    SplineFlow,
    coupling_masks,
)
from openmm_cmt.flows.splines import (
    circular_rational_quadratic_spline,
    interval_rational_quadratic_spline,
    rational_quadratic_spline,
    unbounded_rational_quadratic_spline,
)

K = 8




def _params(n, n_slopes, scale=1.5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, m, generator=g, dtype=dtype) * scale for m in (K, K, n_slopes)]


def _assert_roundtrip(x_back, x, logdet, tol=1e-10):
    """|x_back - x| within tol times the condition number max(1, |dx/dy|) of the inverse:
    the best a backward-stable inverse can do where the spline is very flat."""
    bound = tol * torch.clamp(torch.exp(-logdet), min=1.0)
    assert torch.all((x_back - x).abs() <= bound), (x_back - x).abs().max()


def _elementwise_derivative(fn, x):
    """dy/dx of an element-wise map, by autograd."""
    x = x.clone().requires_grad_(True)
    y = fn(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), grad


def _assert_inverse_logdet(logdet_fn, x, x_back, logdet, inv_logdet, tol=1e-9):
    """The inverse's log-det is minus the forward one at the point the inverse returned:
    where that point is off x by rounding (flat spline), the log-det's own slope turns the
    offset into a log-det difference."""
    _, slope = _elementwise_derivative(logdet_fn, x)
    assert torch.all((inv_logdet + logdet).abs() <= tol + slope.abs() * (x_back - x).abs())


# --- splines ---------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.0, 3.0))
def test_bounded_spline_roundtrip_and_logdet(seed, scale):
    n = 500
    w, h, d = _params(n, K + 1, scale, seed)
    x = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3.0 - 1.0  # [-1, 2]
    spline = lambda t: rational_quadratic_spline(t, w, h, d, left=-1.0, right=2.0, bottom=0.0, top=5.0)[0]
    y, dydx = _elementwise_derivative(spline, x)
    _, logdet = rational_quadratic_spline(x, w, h, d, left=-1.0, right=2.0, bottom=0.0, top=5.0)
    assert torch.all((y >= 0.0) & (y <= 5.0))
    torch.testing.assert_close(logdet, torch.log(dydx), rtol=0, atol=1e-9)
    x_back, inv_logdet = rational_quadratic_spline(y, w, h, d, left=-1.0, right=2.0, bottom=0.0, top=5.0, inverse=True)
    _assert_roundtrip(x_back, x, logdet)
    _assert_inverse_logdet(lambda t: rational_quadratic_spline(t, w, h, d, left=-1.0, right=2.0, bottom=0.0, top=5.0)[1],
                           x, x_back, logdet, inv_logdet)


def test_bounded_spline_is_monotonic_and_maps_end_points():
    w, h, d = _params(1, K + 1, 2.0)
    x = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    y, _ = rational_quadratic_spline(x, w.expand(2001, K), h.expand(2001, K), d.expand(2001, K + 1))
    assert torch.all(torch.diff(y) > 0)
    assert y[0].item() == -1.0 and y[-1].item() == 1.0


def test_bounded_spline_clamps_inputs_outside_interval():
    w, h, d = _params(4, K + 1)
    x = torch.tensor([-1.0 - 1e-9, -1.0, 1.0, 1.0 + 1e-9], dtype=torch.float64)
    y, logdet = rational_quadratic_spline(x, w, h, d)
    torch.testing.assert_close(y, torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.isfinite(logdet).all()


def test_zero_parameters_give_identity():
    x = torch.linspace(-0.999, 0.999, 101, dtype=torch.float64)
    zeros = lambda m: torch.zeros(101, m, dtype=torch.float64)
    for y, logdet in [
        rational_quadratic_spline(x, zeros(K), zeros(K), zeros(K + 1)),
        unbounded_rational_quadratic_spline(3 * x, zeros(K), zeros(K), zeros(K - 1), 2.0),
        circular_rational_quadratic_spline(3 * x, zeros(K), zeros(K), zeros(K)),
    ]:
        torch.testing.assert_close(logdet, torch.zeros_like(logdet), rtol=0, atol=1e-12)
    torch.testing.assert_close(y, 3 * x, rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.0, 3.0))
def test_unbounded_spline_tails_roundtrip_and_logdet(seed, scale):
    n, bound = 600, 2.5
    w, h, d = _params(n, K - 1, scale, seed)
    x = torch.linspace(-6.0, 6.0, n, dtype=torch.float64)
    spline = lambda t: unbounded_rational_quadratic_spline(t, w, h, d, bound)[0]
    y, dydx = _elementwise_derivative(spline, x)
    _, logdet = unbounded_rational_quadratic_spline(x, w, h, d, bound)
    outside = x.abs() > bound
    torch.testing.assert_close(y[outside], x[outside], rtol=0, atol=0)
    assert torch.all(logdet[outside] == 0)
    torch.testing.assert_close(logdet, torch.log(dydx), rtol=0, atol=1e-9)
    x_back, inv_logdet = unbounded_rational_quadratic_spline(y, w, h, d, bound, inverse=True)
    _assert_roundtrip(x_back, x, logdet)
    _assert_inverse_logdet(lambda t: unbounded_rational_quadratic_spline(t, w, h, d, bound)[1], x, x_back, logdet,
                           inv_logdet)


def test_unbounded_spline_slope_is_one_at_the_bounds():
    w, h, d = _params(2, K - 1, 2.0)
    x = torch.tensor([-2.0 + 1e-11, 2.0 - 1e-11], dtype=torch.float64)
    _, logdet = unbounded_rational_quadratic_spline(x, w, h, d, 2.0)
    torch.testing.assert_close(logdet, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.0, 3.0))
def test_circular_spline_roundtrip_logdet_and_periodicity(seed, scale):
    n = 500
    w, h, d = _params(n, K, scale, seed)
    x = (torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1) * math.pi
    spline = lambda t: circular_rational_quadratic_spline(t, w, h, d)[0]
    y, dydx = _elementwise_derivative(spline, x)
    _, logdet = circular_rational_quadratic_spline(x, w, h, d)
    assert torch.all((y >= -math.pi) & (y < math.pi))
    torch.testing.assert_close(logdet, torch.log(dydx), rtol=0, atol=1e-9)
    x_back, inv_logdet = circular_rational_quadratic_spline(y, w, h, d, inverse=True)
    _assert_roundtrip(x_back, x, logdet)
    # The log-det's own slope, which turns input rounding into log-det differences: the
    # inverse's log-det belongs to x_back, and x + 2 pi wraps back to x only within a few
    # ulp of 2 pi.
    _, dlogdet = _elementwise_derivative(lambda t: circular_rational_quadratic_spline(t, w, h, d)[1], x)
    _assert_inverse_logdet(lambda t: circular_rational_quadratic_spline(t, w, h, d)[1], x, x_back, logdet, inv_logdet)
    # Periodic: shifting the input by 2 pi changes nothing beyond that rounding.
    wrap_rounding = 4 * torch.finfo(torch.float64).eps * 2 * math.pi
    y_shift, logdet_shift = circular_rational_quadratic_spline(x + 2 * math.pi, w, h, d)
    assert torch.all((y_shift - y).abs() <= 1e-13 + dydx * wrap_rounding)
    assert torch.all((logdet_shift - logdet).abs() <= 1e-13 + dlogdet.abs() * wrap_rounding)


def test_circular_spline_is_continuous_with_matching_slopes_across_pi():
    w, h, d = _params(1, K, 2.0)
    eps = 1e-7
    x = torch.tensor([-math.pi, -math.pi + eps, math.pi - eps], dtype=torch.float64)
    y, logdet = circular_rational_quadratic_spline(x, w.expand(3, K), h.expand(3, K), d.expand(3, K))
    assert y[0].item() == pytest.approx(-math.pi, abs=1e-12)  # -pi is the fixed point
    # Just below pi the map approaches pi == -pi (mod 2 pi) with the same slope as at -pi.
    assert (y[2] - y[0] - 2 * math.pi).abs().item() < 1e-4
    assert logdet[2].item() == pytest.approx(logdet[0].item(), abs=1e-4)
    assert logdet[1].item() == pytest.approx(logdet[0].item(), abs=1e-4)


def test_interval_spline_is_the_circular_and_bounded_splines_in_one_call():
    """Circular dimensions (half-width pi) and bounded ones (half-width 1 and 0.5, the
    latter a bounded spline on [-0.5, 0.5]) evaluated together match the per-kind
    splines, forward and inverse, whatever the ignored last slope of a circular one."""
    n = 300
    wc, hc, dc = _params(n, K, 1.5, seed=1)
    wb, hb, db = _params(n, K + 1, 1.5, seed=2)
    g = torch.Generator().manual_seed(3)
    xc = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    xb = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    ignored = torch.randn(n, 1, generator=g, dtype=torch.float64) * 3.0
    inputs = torch.stack([xc, xb, 0.5 * xb], dim=1)
    widths, heights = torch.stack([wc, wb, wb], dim=1), torch.stack([hc, hb, hb], dim=1)
    slopes = torch.stack([torch.cat([dc, ignored], dim=1), db, db], dim=1)
    half_width = torch.tensor([math.pi, 1.0, 0.5], dtype=torch.float64)
    periodic = torch.tensor([True, False, False])
    y, logdet = interval_rational_quadratic_spline(inputs, widths, heights, slopes, half_width, periodic)
    yc, ldc = circular_rational_quadratic_spline(xc, wc, hc, dc)
    yb, ldb = rational_quadratic_spline(xb, wb, hb, db)
    yh, ldh = rational_quadratic_spline(0.5 * xb, wb, hb, db, -0.5, 0.5, -0.5, 0.5)
    torch.testing.assert_close(y, torch.stack([yc, yb, yh], dim=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet, torch.stack([ldc, ldb, ldh], dim=1), rtol=0, atol=1e-10)
    back, inverse_logdet = interval_rational_quadratic_spline(y, widths, heights, slopes, half_width, periodic, inverse=True)
    _assert_roundtrip(back, inputs, logdet)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=0, atol=1e-8)
    # Outside the interval: circular inputs wrap, bounded ones clamp to the end points.
    outside, _ = interval_rational_quadratic_spline(inputs + torch.tensor([2 * math.pi, 5.0, 5.0], dtype=torch.float64),
                                                    widths, heights, slopes, half_width, periodic)
    torch.testing.assert_close(outside[:, 0], y[:, 0], rtol=0, atol=1e-9)
    torch.testing.assert_close(outside[:, 1:], half_width[1:].expand(n, 2), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="half_width and periodic"):
        interval_rational_quadratic_spline(inputs, widths, heights, slopes, half_width[:2], periodic)


def test_spline_rejects_mismatched_parameters():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="knot slopes"):
        rational_quadratic_spline(x, torch.zeros(3, K), torch.zeros(3, K), torch.zeros(3, K))
    with pytest.raises(ValueError, match="shape"):
        circular_rational_quadratic_spline(x, torch.zeros(4, K), torch.zeros(4, K), torch.zeros(4, K))


# --- coupling layers and flows ---------------------------------------------------------

MIXED_KINDS = [CIRCULAR, BOUNDED, UNBOUNDED, CIRCULAR, BOUNDED, CIRCULAR]


def _randomise(module, std=0.3, seed=0):
    """Non-trivial weights (a fresh flow is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _latent(kinds, n, dtype, seed=1):
    prior = IndependentPrior(kinds).to(dtype)
    torch.manual_seed(seed)
    return prior.sample(n)


def _mixed_flow(dtype, masking="all2all", **kwargs):
    flow = SplineFlow(MIXED_KINDS, n_layers=4, hidden=16, depth=2, masking=masking, tail_bound=3.0, **kwargs)
    return _randomise(flow, std=0.2).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("masking", ["alternating", "random", "all2all"])
def test_flow_latent_roundtrip(dtype, tol, masking):
    flow = _mixed_flow(dtype, masking)
    z = _latent(MIXED_KINDS, 2000, dtype)
    x, logdet = flow(z)
    z_back, inv_logdet = flow.inverse(x)
    diff = z_back - z
    circular = torch.tensor(MIXED_KINDS) == CIRCULAR
    diff[:, circular] = torch.remainder(diff[:, circular] + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max().item() <= tol
    assert (inv_logdet + logdet).abs().max().item() <= 10 * tol
    assert (x[:, ~circular & (torch.tensor(MIXED_KINDS) == BOUNDED)].abs() <= 1).all()


def test_flow_logdet_matches_autograd_jacobian():
    flow = _mixed_flow(torch.float64)
    z = _latent(MIXED_KINDS, 5, torch.float64)
    _, logdet = flow(z)
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda t: flow(t[None])[0][0], z[i])
        assert logdet[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-9)
        x_i = flow(z[i : i + 1])[0]
        jac_inv = torch.autograd.functional.jacobian(lambda t: flow.inverse(t[None])[0][0], x_i[0])
        assert flow.inverse(x_i)[1].item() == pytest.approx(torch.linalg.slogdet(jac_inv)[1].item(), abs=1e-9)


def test_coupling_leaves_conditioner_dimensions_unchanged():
    layer = _randomise(SplineCoupling(MIXED_KINDS, [0, 2, 4], hidden=8, depth=1)).double()
    z = _latent(MIXED_KINDS, 100, torch.float64)
    x, _ = layer(z)
    assert torch.equal(x[:, [1, 3, 5]], z[:, [1, 3, 5]])
    assert not torch.allclose(x[:, [0, 2, 4]], z[:, [0, 2, 4]])


def test_masking_schemes():
    assert coupling_masks(2, 4, "alternating") == [[0], [1], [0], [1]]
    masks = coupling_masks(7, 6, "all2all", torch.Generator().manual_seed(3))
    for a, b in zip(masks[::2], masks[1::2]):
        assert sorted(a + b) == list(range(7))
    for mask in coupling_masks(9, 5, "random", torch.Generator().manual_seed(3)):
        assert 4 <= len(mask) <= 5 and len(set(mask)) == len(mask)
    with pytest.raises(ValueError, match="masking scheme"):
        coupling_masks(4, 2, "checkerboard")
    with pytest.raises(ValueError, match="at least 2"):
        coupling_masks(1, 2)


def test_torsion_shifts_are_inserted_between_layers_and_rotate_circular_dims_only():
    flow = SplineFlow(MIXED_KINDS, n_layers=3, hidden=8, depth=1, torsion_shifts=True).double()
    shifts = [layer for layer in flow.layers if not isinstance(layer, SplineCoupling)]
    assert len(shifts) == 2
    z = _latent(MIXED_KINDS, 50, torch.float64)
    x, logdet = shifts[0](z)
    assert torch.equal(x[:, [1, 2, 4]], z[:, [1, 2, 4]])
    assert torch.all(logdet == 0)
    back, _ = shifts[0](x, True)
    torch.testing.assert_close(torch.cos(back - z), torch.ones_like(z), rtol=0, atol=1e-12)


def test_state_dict_roundtrip_restores_the_same_map():
    source = _mixed_flow(torch.float64)
    target = SplineFlow(MIXED_KINDS, n_layers=4, hidden=16, depth=2, masking="all2all", tail_bound=3.0).double()
    state = source.state_dict()
    assert not any(k.startswith("reversed_layers") for k in state)
    target.load_state_dict(state)
    z = _latent(MIXED_KINDS, 20, torch.float64)
    torch.testing.assert_close(target(z)[0], source(z)[0])
    torch.testing.assert_close(target.inverse(source(z)[0])[0], source.inverse(source(z)[0])[0])


def test_scripted_flow_equals_eager():
    flow = _mixed_flow(torch.float64)
    scripted = torch.jit.script(flow)
    z = _latent(MIXED_KINDS, 64, torch.float64)
    x, logdet = flow(z)
    xs, logdets = scripted(z)
    assert torch.equal(x, xs) and torch.equal(logdet, logdets)
    assert torch.equal(flow.inverse(x)[0], scripted.inverse(x)[0])


# --- priors ----------------------------------------------------------------------------


def test_truncated_normal_prior_matches_scipy():
    from scipy import stats

    sigma = 0.4
    prior = IndependentPrior([BOUNDED, CIRCULAR, UNBOUNDED], bounded="truncated_normal", sigma=sigma).double()
    z = torch.tensor([[0.3, 1.0, -0.5], [-0.9, -3.0, 2.0]], dtype=torch.float64)
    expected = (
        stats.truncnorm.logpdf(z[:, 0].numpy(), -1 / sigma, 1 / sigma, scale=sigma)
        - math.log(2 * math.pi)
        + stats.norm.logpdf(z[:, 2].numpy())
    )
    np.testing.assert_allclose(prior.log_prob(z).numpy(), expected, rtol=0, atol=1e-12)
    torch.manual_seed(0)
    samples = prior.sample(40_000)
    assert samples[:, 0].abs().max() <= 1 and samples[:, 1].abs().max() <= math.pi
    # Kolmogorov-Smirnov against the exact truncated normal and uniform laws.
    assert stats.kstest(samples[:, 0].numpy(), stats.truncnorm(-1 / sigma, 1 / sigma, scale=sigma).cdf).pvalue > 1e-3
    assert stats.kstest(samples[:, 1].numpy(), stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3
    assert stats.kstest(samples[:, 2].numpy(), stats.norm().cdf).pvalue > 1e-3


def test_prior_is_minus_infinity_outside_support():
    prior = IndependentPrior([BOUNDED, CIRCULAR]).double()
    z = torch.tensor([[1.01, 0.0], [0.0, 3.2], [0.5, 0.5]], dtype=torch.float64)
    log_p = prior.log_prob(z)
    assert log_p[0] == -math.inf and log_p[1] == -math.inf
    assert log_p[2].item() == pytest.approx(-math.log(2) - math.log(2 * math.pi))
    with pytest.raises(ValueError, match="shape"):
        prior.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="kinds"):
        IndependentPrior([0, 5])


# --- densities normalise ---------------------------------------------------------------


def _grid_integral(log_prob, lows, highs, n):
    axes = [torch.linspace(lo, hi, n + 1, dtype=torch.float64) for lo, hi in zip(lows, highs)]
    mids = [0.5 * (a[1:] + a[:-1]) for a in axes]
    grid = torch.stack(torch.meshgrid(*mids, indexing="ij"), -1).reshape(-1, len(lows))
    cell = np.prod([(hi - lo) / n for lo, hi in zip(lows, highs)])
    with torch.no_grad():
        return (torch.exp(log_prob(grid)).sum() * cell).item()


def test_euclidean_flow_density_normalises():
    flow = _randomise(EuclideanFlow(2, n_layers=4, hidden=16, n_blocks=1, prior_scale=2.0), std=0.2).double()
    assert _grid_integral(flow.log_prob, [-14, -14], [14, 14], 300) == pytest.approx(1.0, abs=2e-3)


def test_mixed_flow_density_normalises_on_box_times_circle():
    kinds = [BOUNDED, CIRCULAR]
    flow = _randomise(SplineFlow(kinds, n_layers=4, hidden=16, depth=1), std=0.2).double()
    prior = IndependentPrior(kinds, bounded="truncated_normal", sigma=0.5).double()

    def log_prob(x):
        z, logdet = flow.inverse(x)
        return prior.log_prob(z) + logdet

    assert _grid_integral(log_prob, [-1, -math.pi], [1, math.pi], 300) == pytest.approx(1.0, abs=2e-3)


# --- the Euclidean flow ----------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_euclidean_flow_sample_log_prob_consistency(dtype, tol):
    flow = _randomise(EuclideanFlow(3, n_layers=4, hidden=16, prior_scale=1.0), std=0.1).to(dtype)
    torch.manual_seed(0)
    x, log_q = flow.sample(1000)
    assert x.shape == (1000, 3) and log_q.shape == (1000,)
    assert (flow.log_prob(x) - log_q).abs().max().item() <= 20 * tol
    z, _ = flow.inverse(x)
    assert (flow(z)[0] - x).abs().max().item() <= tol


def test_fresh_euclidean_flow_is_the_scaled_gaussian_prior():
    flow = EuclideanFlow(2, prior_scale=40.0).double()
    x = torch.tensor([[0.0, 0.0], [30.0, -100.0], [300.0, 1.0]], dtype=torch.float64)
    expected = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 40.0).log_prob(x).sum(1)
    torch.testing.assert_close(flow.log_prob(x), expected, rtol=0, atol=1e-10)


def test_euclidean_sample_is_reparameterised():
    flow = EuclideanFlow(2, n_layers=2, hidden=8)
    _, log_q = flow.sample(64)
    log_q.mean().backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_scripted_euclidean_flow_equals_eager():
    flow = _randomise(EuclideanFlow(2, n_layers=3, hidden=8, prior_scale=3.0), std=0.2)
    scripted = torch.jit.script(flow)
    x = torch.randn(50, 2) * 3
    assert torch.equal(flow.log_prob(x), scripted.log_prob(x))
    torch.manual_seed(5)
    xe, le = flow.sample(10)
    torch.manual_seed(5)
    xs, ls = scripted.sample(10)
    assert torch.equal(xe, xs) and torch.equal(le, ls)


def test_euclidean_flow_maximum_likelihood_fit_learns_a_bimodal_target():
    torch.manual_seed(0)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    data = centres[torch.randint(0, 2, (4000,))] + 0.4 * torch.randn(4000, 2)
    flow = EuclideanFlow(2, n_layers=4, hidden=16, n_blocks=1, prior_scale=3.0)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    nll_before = -flow.log_prob(data).mean().item()
    for _ in range(100):
        batch = data[torch.randint(0, len(data), (128,))]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    nll_after = -flow.log_prob(data).mean().item()
    # Exact NLL of the mixture: entropy of N(0, 0.4^2 I) plus log 2 (modes well separated).
    exact = math.log(2 * math.pi * math.e * 0.16) + math.log(2)
    assert nll_before > exact + 1.5
    assert nll_after < exact + 0.5
    x, _ = flow.sample(4000)
    assert 0.35 < (x[:, 0] > 0).float().mean().item() < 0.65


def test_euclidean_flow_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prior_scale"):
        EuclideanFlow(2, prior_scale=0.0)
    with pytest.raises(ValueError, match="shape"):
        EuclideanFlow(2).log_prob(torch.zeros(4, 3))
