"""The optimiser the trainer builds (perceiver_edu.optim), tested at the level where recipe bugs live:
one LAMB step against the paper's formula, which parameters get weight decay, and the learning-rate
schedule at named points."""
import math

import pytest
import torch

from perceiver_edu import Perceiver, PerceiverConfig
from perceiver_edu.optim import OPTIMIZERS, Lamb, LRSchedule, build_optimizer, parameter_groups


# LAMB ---------------------------------------------------------------------------------------------

def lamb_reference(weights, gradients, lr, betas, eps, weight_decay):
    """LAMB written out from You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT
    in 76 minutes" (ICLR 2020, arXiv:1904.00962), Algorithm 2, for ONE parameter tensor (one "layer" i):

        m_t = beta1 m_{t-1} + (1 - beta1) g_t          v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        m_t = m_t / (1 - beta1^t)                       v_t = v_t / (1 - beta2^t)
        r_t = m_t / (sqrt(v_t) + eps)
        x_{t+1} = x_t - eta_t * phi(||x_t||) / ||r_t + lambda x_t|| * (r_t + lambda x_t)

    with phi the identity (no clamp), as in the paper's reference implementation (tensorflow/addons
    optimizers/lamb.py, which the paper links). The package documents three choices, all taken from
    that reference code and reproduced here: bias correction on; eps added to sqrt(v_hat), outside the
    root; and a tensor without weight decay (lambda = 0) skips the layer adaptation (trust ratio 1,
    as `exclude_from_layer_adaptation` defaults to `exclude_from_weight_decay` there). The ratio is 1
    too when ||x|| or ||r + lambda x|| is zero. Plain float64 tensor maths, no torch.optim.

    weights: the tensor before the first step; gradients: one gradient per step. Returns the tensor
    after the last step.
    """
    beta1, beta2 = betas
    x = weights.clone().double()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for t, g in enumerate(gradients, start=1):
        g = g.double()
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        r = m_hat / (torch.sqrt(v_hat) + eps)
        update = r + weight_decay * x
        weight_norm = math.sqrt(float((x * x).sum()))
        update_norm = math.sqrt(float((update * update).sum()))
        adapt = weight_decay != 0 and weight_norm > 0 and update_norm > 0
        trust = weight_norm / update_norm if adapt else 1.0
        x = x - lr * trust * update
    return x


def run_lamb(weights, gradients, groups_kwargs, **lamb_kwargs):
    """The package's Lamb, fed the given gradients for len(gradients) steps (float64)."""
    parameters = [torch.nn.Parameter(w.clone().double()) for w in weights]
    groups = [{"params": [p], **kw} for p, kw in zip(parameters, groups_kwargs)]
    optimizer = Lamb(groups, **lamb_kwargs)
    for step_gradients in gradients:
        for p, g in zip(parameters, step_gradients):
            p.grad = g.clone().double()
        optimizer.step()
    return [p.detach() for p in parameters], optimizer


def _tensors(seed=0):
    """Weights whose norms differ from their update norms (so the ratio and its inverse differ):
    a large matrix (||w|| >> ||r||), a small one (||w|| < 1), a bias, and gradients of mixed scale
    (some near eps, so where eps sits shows)."""
    g = torch.Generator().manual_seed(seed)
    big = 3.0 * torch.randn(4, 5, generator=g, dtype=torch.float64)           # ||w|| ~ 13
    small = 0.05 * torch.randn(3, 3, generator=g, dtype=torch.float64)        # ||w|| ~ 0.15
    bias = 2.0 + torch.rand(6, generator=g, dtype=torch.float64)               # ||b|| ~ 6
    shapes = [big.shape, small.shape, bias.shape]
    scales = [1.0, 1e-3, 0.1]
    gradients = [[s * torch.randn(shape, generator=g, dtype=torch.float64) for shape, s in zip(shapes, scales)]
                 for _ in range(3)]
    return [big, small, bias], gradients


def test_three_lamb_steps_match_algorithm_2_of_the_paper():
    weights, gradients = _tensors()
    lr, betas, eps, decay = 0.01, (0.8, 0.95), 1e-3, 0.1
    groups = [{"weight_decay": decay}, {"weight_decay": decay}, {"weight_decay": 0.0}]
    got, optimizer = run_lamb(weights, gradients, groups, lr=lr, betas=betas, eps=eps)
    for index, (w, kw) in enumerate(zip(weights, groups)):
        per_tensor = [step[index] for step in gradients]
        expected = lamb_reference(w, per_tensor, lr, betas, eps, kw["weight_decay"])
        torch.testing.assert_close(got[index], expected, rtol=1e-12, atol=1e-15,
                                   msg=lambda m: f"tensor {index}: {m}")
        assert optimizer.state[optimizer.param_groups[index]["params"][0]]["step"] == len(gradients)


def test_first_lamb_step_moves_each_decayed_tensor_by_lr_times_its_norm():
    """The property that makes LAMB LAMB: with the trust ratio ||w|| / ||update||, one step changes a
    decayed tensor by exactly lr * ||w|| (in norm), whatever the gradient's scale. The inverted ratio
    (||update|| / ||w||) or none at all moves it by a different amount."""
    weights, gradients = _tensors(seed=1)
    lr = 0.01
    got, _ = run_lamb(weights[:2], [gradients[0][:2]], [{"weight_decay": 0.1}] * 2, lr=lr)
    for before, after in zip(weights[:2], got):
        assert (after - before).norm().item() == pytest.approx(lr * before.norm().item(), rel=1e-9)


def test_tensors_without_weight_decay_take_plain_adam_steps():
    """Trust ratio 1 for biases and norms: the step is lr * m_hat / (sqrt(v_hat) + eps), which at t = 1 is
    lr * g / (|g| + eps) element-wise, independent of ||b||."""
    bias = torch.tensor([5.0, -3.0, 0.5], dtype=torch.float64)
    grad = torch.tensor([0.2, -0.4, 1e-6], dtype=torch.float64)
    lr, eps = 0.1, 1e-6
    (after,), _ = run_lamb([bias], [[grad]], [{"weight_decay": 0.0}], lr=lr, eps=eps)
    torch.testing.assert_close(after, bias - lr * grad / (grad.abs() + eps), rtol=1e-12, atol=0)


def test_a_zero_tensor_with_weight_decay_takes_the_plain_step():
    """||w|| = 0: trust ratio 1 (a ratio of 0 would freeze a zero-initialised tensor for ever)."""
    grad = torch.tensor([[0.3, -0.1], [0.0, 2.0]], dtype=torch.float64)
    (after,), _ = run_lamb([torch.zeros(2, 2, dtype=torch.float64)], [[grad]], [{"weight_decay": 0.1}],
                           lr=0.5, eps=1e-6)
    torch.testing.assert_close(after, -0.5 * grad / (grad.abs() + 1e-6), rtol=1e-12, atol=0)


def test_an_exactly_zero_update_leaves_the_tensor_unchanged_and_finite():
    """||r + lambda w|| = 0 with ||w|| > 0 (here r = -0.5 and lambda w = +0.5 exactly): ratio 1, not inf."""
    weight = torch.ones(2, 2, dtype=torch.float64)
    eps = 1e-3
    grad = torch.full((2, 2), -eps, dtype=torch.float64)  # r = -eps / (eps + eps) = -0.5 at t = 1
    (after,), _ = run_lamb([weight], [[grad]], [{"weight_decay": 0.5}], lr=0.1, eps=eps)
    assert torch.equal(after, weight)


def test_lamb_matches_the_reference_at_its_default_settings():
    weights, gradients = _tensors(seed=2)
    got, optimizer = run_lamb(weights[:1], [step[:1] for step in gradients], [{}], weight_decay=0.05)
    assert optimizer.defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.05)
    expected = lamb_reference(weights[0], [step[0] for step in gradients], 1e-3, (0.9, 0.999), 1e-6, 0.05)
    torch.testing.assert_close(got[0], expected, rtol=1e-12, atol=1e-15)


def test_lamb_without_weight_decay_given_takes_plain_adam_steps():
    """Lamb's own default is no weight decay (so trust ratio 1): only build_optimizer's decay group decays."""
    weight = torch.nn.Parameter(torch.tensor([[2.0, -1.0], [0.5, 4.0]], dtype=torch.float64))
    grad = torch.tensor([[0.1, 0.2], [-0.3, 0.0]], dtype=torch.float64)
    optimizer = Lamb([weight], lr=0.1)
    assert optimizer.defaults["weight_decay"] == 0.0
    before = weight.detach().clone()
    weight.grad = grad
    optimizer.step()
    torch.testing.assert_close(weight.detach(), before - 0.1 * grad / (grad.abs() + 1e-6), rtol=1e-12, atol=0)


def test_lamb_skips_parameters_without_gradients_and_returns_the_closure_loss():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = Lamb([unused, used], lr=0.1, weight_decay=0.1)  # a gradient-less tensor first: skipped, not the end
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = (used * torch.tensor([1.0, 2.0, 3.0])).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert calls == [True] and loss.item() == pytest.approx(6.0)
    assert torch.equal(unused.detach(), torch.ones(3)) and unused not in optimizer.state
    assert not torch.equal(used.detach(), torch.ones(3))
    assert optimizer.step() is None


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(lr=-1e-3), dict(eps=0.0), dict(weight_decay=-1e-4),
                                    dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.0)), dict(betas=(-0.1, 0.9))])
def test_lamb_rejects_invalid_settings(kwargs):
    with pytest.raises(ValueError, match="invalid LAMB settings"):
        Lamb([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_lamb_accepts_the_edges_of_its_valid_ranges():
    Lamb([torch.nn.Parameter(torch.ones(2))], lr=1e-9, betas=(0.0, 0.0), eps=1e-12, weight_decay=0.0)


# Which parameters decay ----------------------------------------------------------------------------

DECAY_CONFIGS = {
    "cpu": PerceiverConfig.preset("cpu"),
    # learned positions, a Perceiver IO query decoder, two cross-attends (one shared)
    "learned+query": PerceiverConfig.preset("cpu", position_encoding="learned", learned_position_dim=16,
                                            decoder="query", num_cross_attends=2, weight_sharing="after_first"),
}


@pytest.mark.parametrize("name", sorted(DECAY_CONFIGS))
def test_weight_decay_goes_to_matrices_and_learned_arrays_not_to_biases_or_norms(name):
    """Decay every weight matrix and every learned array (latent array, learned position features,
    decoder query); never a bias or a LayerNorm gain/offset. This is DeepMind's rule: their
    perceiver/train/utils.py excludes parameters named 'b' (biases) and every parameter of a
    'layer_norm' module, and decays position embeddings by default ('decay_pos_embs'), which in
    their code include the latent array (a TrainablePositionEncoding) and the decoder query."""
    model = Perceiver(DECAY_CONFIGS[name])
    decay_group, no_decay_group = parameter_groups(model, weight_decay=0.05)
    assert decay_group["weight_decay"] == 0.05 and no_decay_group["weight_decay"] == 0.0
    decayed = {id(p) for p in decay_group["params"]}
    not_decayed = {id(p) for p in no_decay_group["params"]}
    named = dict(model.named_parameters())
    # every parameter exactly once
    assert len(decay_group["params"]) == len(decayed) and len(no_decay_group["params"]) == len(not_decayed)
    assert decayed | not_decayed == {id(p) for p in named.values()} and not decayed & not_decayed

    norms = {f"{module_name}.{n}" for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.LayerNorm) for n, _ in module.named_parameters(recurse=False)}
    linears = {f"{module_name}.weight" for module_name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    biases = {n for n in named if n.endswith(".bias")}
    learned_arrays = {"latents"} | ({"position.features"} if "learned" in name else set()) | (
        {"decoder_query"} if "query" in name else set())
    assert norms and linears and biases and learned_arrays <= set(named)
    assert set(named) == norms | linears | biases | learned_arrays  # nothing unclassified
    for n in linears | learned_arrays:
        assert id(named[n]) in decayed, f"{n} should decay"
    for n in norms | biases:
        assert id(named[n]) in not_decayed, f"{n} must not decay"


def test_frozen_parameters_are_left_out_of_both_groups():
    model = Perceiver(PerceiverConfig.preset("cpu"))
    model.latents.requires_grad_(False)
    model.classifier.bias.requires_grad_(False)
    groups = parameter_groups(model, 0.1)
    kept = {id(p) for group in groups for p in group["params"]}
    assert id(model.latents) not in kept and id(model.classifier.bias) not in kept
    assert kept == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("name,kind", [("adamw", torch.optim.AdamW), ("lamb", Lamb)])
def test_build_optimizer_passes_the_recipe_through(name, kind):
    model = Perceiver(PerceiverConfig.preset("cpu"))
    optimizer = build_optimizer(model, name, lr=3e-4, weight_decay=0.07, betas=(0.8, 0.95))
    assert type(optimizer) is kind and name in OPTIMIZERS
    decay, no_decay = optimizer.param_groups
    reference = parameter_groups(model, 0.07)
    assert [id(p) for p in decay["params"]] == [id(p) for p in reference[0]["params"]]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in reference[1]["params"]]
    for group, decay_rate in ((decay, 0.07), (no_decay, 0.0)):
        assert group["weight_decay"] == decay_rate and group["lr"] == 3e-4
        assert tuple(group["betas"]) == (0.8, 0.95)
    if name == "lamb":
        assert decay["eps"] == 1e-6  # the LAMB reference code's epsilon


def test_build_optimizer_names_the_choices_for_an_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'.*adamw.*lamb"):
        build_optimizer(torch.nn.Linear(2, 2), "sgd", lr=1e-3, weight_decay=0.0)


# The learning-rate schedule ------------------------------------------------------------------------

def _schedule(peak=1e-3, warmup=10, shape="cosine", final_fraction=0.0):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    return optimizer, LRSchedule(optimizer, peak, warmup, shape, final_fraction)


def _lrs(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


def test_warmup_ramps_linearly_to_the_peak_at_its_last_step():
    optimizer, schedule = _schedule(peak=1e-3, warmup=10)
    assert _lrs(optimizer) == [pytest.approx(1e-4)] * 2  # the first step already trains: 1/10 of the peak
    for step in range(1, 10):
        schedule.step(progress=0.0)
        assert schedule.lr == pytest.approx(1e-3 * (step + 1) / 10)
    assert schedule.step_count == 9 and schedule.lr == pytest.approx(1e-3)  # warmup end: the peak
    schedule.step(progress=0.0)
    assert schedule.lr == pytest.approx(1e-3)  # and it stays there while progress is 0
    assert _lrs(optimizer) == [pytest.approx(1e-3)] * 2


@pytest.mark.parametrize("shape,half,quarter", [
    ("cosine", 0.5, 0.5 * (1 + math.cos(math.pi / 4))),
    ("linear", 0.5, 0.75),
    ("constant", 1.0, 1.0),
])
@pytest.mark.parametrize("final_fraction", [0.0, 0.1])
def test_decay_at_named_points(shape, half, quarter, final_fraction):
    optimizer, schedule = _schedule(peak=2e-3, warmup=0, shape=shape, final_fraction=final_fraction)

    def expected(fraction):  # decay between the peak and final_fraction * peak
        return 2e-3 * (final_fraction + (1 - final_fraction) * fraction)

    assert schedule.lr == pytest.approx(2e-3)  # no warmup: the peak at once
    schedule.step(0.25)
    assert schedule.lr == pytest.approx(expected(quarter))
    schedule.step(0.5)
    assert schedule.lr == pytest.approx(expected(half))  # halfway
    schedule.step(1.0)
    end = 2e-3 if shape == "constant" else 2e-3 * final_fraction
    assert schedule.lr == pytest.approx(end, abs=1e-15)  # the end
    schedule.step(1.7)  # past the end (a time budget overshooting): stays at the floor
    assert schedule.lr == pytest.approx(end, abs=1e-15)
    assert _lrs(optimizer) == [pytest.approx(end, abs=1e-15)] * 2


def test_schedule_defaults_to_cosine_decay_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = LRSchedule(optimizer, peak_lr=1.0, warmup_steps=0)
    schedule.step(0.25)
    assert schedule.lr == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    schedule.step(1.0)
    assert schedule.lr == pytest.approx(0.0, abs=1e-15)


def test_warmup_and_decay_multiply():
    _, schedule = _schedule(peak=1.0, warmup=4, shape="linear")
    schedule.step(0.5)  # step_count 1: warmup 2/4, decay 0.5
    assert schedule.lr == pytest.approx(0.25)


def test_progress_never_moves_backwards_and_negative_progress_is_the_start():
    _, schedule = _schedule(peak=1.0, warmup=0, shape="linear")
    schedule.step(-0.5)
    assert schedule.lr == pytest.approx(1.0)
    schedule.step(0.6)
    schedule.step(0.2)
    assert schedule.progress == 0.6 and schedule.lr == pytest.approx(0.4)


def test_schedule_state_round_trips_and_is_applied_on_load():
    optimizer, schedule = _schedule(peak=1e-3, warmup=5)
    for progress in (0.1, 0.2, 0.3):
        schedule.step(progress)
    state = schedule.state_dict()
    assert state == {"step_count": 3, "progress": 0.3}
    fresh_optimizer, fresh = _schedule(peak=1e-3, warmup=5)
    fresh.load_state_dict(state)
    assert fresh.lr == schedule.lr and _lrs(fresh_optimizer) == _lrs(optimizer)
    assert fresh.step_count == 3 and fresh.progress == 0.3


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="unknown schedule 'step'.*cosine"):
        _schedule(shape="step")
