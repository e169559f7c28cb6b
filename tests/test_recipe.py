"""The training recipe as the trainer runs it (issue 16): the loss it minimises, what gradient clipping
does to a step, the optimiser and schedule it builds, and one trainer step, each checked against the
recipe written out here by hand (formulas in float64), on the very functions `Trainer` calls:
`training_loss`, `forward_backward`, `update_weights`, `make_optimizer`, `make_schedule`,
`make_grad_scaler`, `TrainState.fresh` and `train`."""
import copy
import dataclasses
import math
import warnings

import pytest
import torch

from perceiver_edu import PerceiverConfig
from perceiver_edu.data import CIFAR10Data, train_batches
from perceiver_edu.device import seed_everything
from perceiver_edu.optim import Lamb, LRSchedule
from perceiver_edu.registry import build_model
from perceiver_edu.train import (RunPlan, TrainConfig, TrainState, forward_backward, make_grad_scaler,
                                 make_optimizer, make_schedule, train, training_loss, update_weights)

# A Perceiver small enough for a step in milliseconds, without dropout (so a step is a pure function).
TINY = dataclasses.replace(PerceiverConfig.preset("cpu"), name="tiny", patch_size=4, num_bands=4, num_latents=8,
                           latent_dim=32, cross_qk_dim=32, latent_heads=2, self_attends_per_block=2, dropout=0.0)


# The recipe written out ---------------------------------------------------------------------------

def smoothed_cross_entropy(logits, labels, smoothing):
    """Label-smoothed cross-entropy (Szegedy et al. 2016, Sec. 7), mean over the batch, in float64.

    The target puts 1 - smoothing on the label and spreads `smoothing` evenly over all C classes:
    q = (1 - smoothing) onehot(y) + smoothing / C;  loss_i = -sum_c q_c log softmax(z_i)_c."""
    z = logits.double()
    top = z.max(-1, keepdim=True).values
    log_p = z - top - torch.log(torch.exp(z - top).sum(-1, keepdim=True))   # (B, C)
    classes = z.shape[-1]
    target = torch.full_like(z, smoothing / classes)
    target[torch.arange(len(labels)), labels] += 1 - smoothing
    return -(target * log_p).sum(-1).sum() / len(labels)


def global_norm(tensors):
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def reference_gradients(model, x, y, smoothing):
    """d(loss)/d(parameters) of the formula above, in float64 on a float64 copy of the model."""
    twin = copy.deepcopy(model).double()
    loss = smoothed_cross_entropy(twin(x.double()), y, smoothing)
    return [g.float() for g in torch.autograd.grad(loss, list(twin.parameters()))], loss.item()


def clipped(gradients, max_norm):
    """The whole gradient rescaled so that its global norm (all tensors together) is at most max_norm."""
    if max_norm is None:
        return gradients
    scale = min(1.0, max_norm / global_norm(gradients))
    return [g * scale for g in gradients]


def small_net(seed=0):
    """Two layers whose gradients differ in norm, so clipping each tensor apart would show."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def batch(seed=0, size=12, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(size, 6, generator=g), torch.randint(0, 5, (size,), generator=g)


def recipe(**overrides):
    return dataclasses.replace(TrainConfig(), **overrides)


def assert_close_lists(actual, expected, rtol=1e-5, atol=1e-7):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


# The loss -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.25])
def test_training_loss_is_the_mean_label_smoothed_cross_entropy_of_the_recipe(smoothing):
    g = torch.Generator().manual_seed(1)
    logits, labels = 3 * torch.randn(16, 10, generator=g), torch.randint(0, 10, (16,), generator=g)
    loss = training_loss(logits, labels, recipe(label_smoothing=smoothing))
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(smoothed_cross_entropy(logits, labels, smoothing)), rel=1e-6)


def test_the_recipes_smooth_labels_by_0_1():
    """The smoothing the trainer minimises with by default and in the tuned recipes."""
    assert TrainConfig().label_smoothing == 0.1
    assert TrainConfig.recipe("cpu").label_smoothing == 0.1 and TrainConfig.recipe("seed").label_smoothing == 0.1


def test_training_loss_of_low_precision_logits_is_computed_in_float32():
    """Under autocast the logits come in bf16/fp16; the loss of the same numbers in float32, not in bf16."""
    g = torch.Generator().manual_seed(2)
    logits = (8 * torch.randn(64, 10, generator=g)).bfloat16()   # large logits: small probabilities matter
    labels = torch.randint(0, 10, (64,), generator=g)
    loss = training_loss(logits, labels, recipe(label_smoothing=0.1))
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(smoothed_cross_entropy(logits, labels, 0.1)), rel=1e-6)


# One step: forward, loss, backward, clip; then the update ------------------------------------------

def run_forward_backward(model, x, y, the_recipe, scaler=None, optimizer=None, forward=None, amp_dtype=None):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    loss, logits = forward_backward(model, forward or model, optimizer, scaler, x, y, the_recipe, amp_dtype)
    return loss, logits, [p.grad.clone() for p in model.parameters()], optimizer


def test_forward_backward_leaves_the_gradient_of_the_recipes_loss_and_returns_loss_and_logits():
    model, (x, y) = small_net(), batch()
    expected, expected_loss = reference_gradients(model, x, y, smoothing=0.2)
    loss, logits, gradients, _ = run_forward_backward(model, x, y, recipe(label_smoothing=0.2, grad_clip=None))
    assert_close_lists(gradients, expected)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    torch.testing.assert_close(logits, model(x))


def test_forward_backward_starts_from_zero_gradients():
    model, (x, y) = small_net(), batch()
    expected, _ = reference_gradients(model, x, y, smoothing=0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # left over from an earlier step
    _, _, gradients, _ = run_forward_backward(model, x, y, recipe(grad_clip=None))
    assert_close_lists(gradients, expected)


def test_forward_backward_runs_the_forward_it_is_given():
    """`forward` may wrap the model (torch.compile, DDP): its output is what the loss sees."""
    model, (x, y) = small_net(), batch()
    doubled = lambda inputs: 2 * model(inputs)  # noqa: E731
    twin = small_net()
    with torch.no_grad():
        twin[2].weight.mul_(2), twin[2].bias.mul_(2)   # the same function as `doubled`
    expected, _ = reference_gradients(twin, x, y, smoothing=0.1)
    _, logits, gradients, _ = run_forward_backward(model, x, y, recipe(grad_clip=None), forward=doubled)
    torch.testing.assert_close(logits, 2 * model(x))
    # chain rule: the last layer's gradients of model are 2x those of its doubled twin; the first's equal
    assert_close_lists(gradients[:2], expected[:2])
    assert_close_lists(gradients[2:], [2 * g for g in expected[2:]])


def test_a_gradient_above_grad_clip_is_rescaled_as_a_whole_to_grad_clip():
    model, (x, y) = small_net(), batch()
    expected, _ = reference_gradients(model, x, y, smoothing=0.1)
    norm = global_norm(expected)
    norms = [global_norm([g]) for g in expected]
    assert max(norms) / min(norms) > 3  # tensors of different norms: per-tensor clipping would differ
    max_norm = 0.3 * norm
    _, _, gradients, _ = run_forward_backward(model, x, y, recipe(grad_clip=max_norm))
    assert_close_lists(gradients, clipped(expected, max_norm))
    assert global_norm(gradients) == pytest.approx(max_norm, rel=1e-5)


@pytest.mark.parametrize("max_norm", ["above", None])
def test_a_gradient_below_grad_clip_or_without_clipping_is_left_as_it_is(max_norm):
    model, (x, y) = small_net(), batch(scale=4.0)
    expected, _ = reference_gradients(model, x, y, smoothing=0.1)
    norm = global_norm(expected)
    assert norm > 1.0  # so that the default grad_clip (1.0) would clip it
    limit = 1.5 * norm if max_norm == "above" else None
    _, _, gradients, _ = run_forward_backward(model, x, y, recipe(grad_clip=limit))
    _, _, unclipped, _ = run_forward_backward(small_net(), x, y, recipe(grad_clip=None))
    assert_close_lists(gradients, expected)
    for a, b in zip(gradients, unclipped):
        assert torch.equal(a, b)


def test_the_default_recipes_clip_at_global_norm_1():
    assert TrainConfig().grad_clip == 1.0 and TrainConfig.recipe("cpu").grad_clip == 1.0


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_clipped_steps_move_the_weights_as_steps_with_the_rescaled_gradients(name):
    """Two steps of the recipe's optimiser: the first gradient is clipped, the second is not. The weights
    end where the same optimiser puts them when fed the rescaled gradients directly."""
    the_recipe = recipe(optimizer=name, lr=0.05, weight_decay=0.1, label_smoothing=0.1)
    batches = [batch(seed=3, scale=3.0), batch(seed=4, scale=0.2)]

    def reference(max_norm):
        model = small_net()
        optimizer = make_optimizer(model, the_recipe)
        norms = []
        for x, y in batches:
            gradients, _ = reference_gradients(model, x, y, smoothing=0.1)
            norms.append(global_norm(gradients))
            for p, g in zip(model.parameters(), clipped(gradients, max_norm)):
                p.grad = g
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()], norms

    _, norms = reference(None)
    max_norm = math.sqrt(norms[0] * norms[1])       # between the two: clips the first step only
    expected, clipped_norms = reference(max_norm)
    assert clipped_norms[0] > max_norm > clipped_norms[1]
    unclipped, _ = reference(None)
    assert max(float((a - b).abs().max()) for a, b in zip(expected, unclipped)) > 1e-3  # clipping shows

    model = small_net()
    optimizer = make_optimizer(model, dataclasses.replace(the_recipe, grad_clip=max_norm))
    for x, y in batches:
        forward_backward(model, model, optimizer, None, x, y, dataclasses.replace(the_recipe, grad_clip=max_norm),
                         None)
        update_weights(optimizer, None)
    assert_close_lists([p.detach() for p in model.parameters()], expected, rtol=1e-5, atol=1e-6)


def test_update_weights_takes_one_optimiser_step():
    model, (x, y) = small_net(), batch()
    expected, _ = reference_gradients(model, x, y, smoothing=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    forward_backward(model, model, optimizer, None, x, y, recipe(grad_clip=None), None)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # not before the update
    update_weights(optimizer, None)
    assert_close_lists([p.detach() for p in model.parameters()], [b - 0.5 * g for b, g in zip(before, expected)])


def test_with_a_loss_scaler_the_gradients_are_unscaled_before_clipping_and_the_step_is_the_same():
    """The fp16 path (a GradScaler), run here with PyTorch's CPU scaler: clipping sees the true gradient,
    the step equals the unscaled one, and the scale grows after a good step."""
    (x, y), the_recipe = batch(), recipe(grad_clip=0.5)
    plain, scaled = small_net(), small_net()
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.5)
    plain_loss, _, plain_gradients, _ = run_forward_backward(plain, x, y, the_recipe, optimizer=plain_optimizer)
    update_weights(plain_optimizer, None)

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    optimizer = torch.optim.SGD(scaled.parameters(), lr=0.5)
    loss, _, gradients, _ = run_forward_backward(scaled, x, y, the_recipe, scaler=scaler, optimizer=optimizer)
    assert_close_lists(gradients, plain_gradients)
    assert global_norm(gradients) == pytest.approx(0.5, rel=1e-5)
    assert loss.item() == plain_loss.item()  # the loss returned is the true one, not the scaled one
    update_weights(optimizer, scaler)
    assert_close_lists([p.detach() for p in scaled.parameters()], [p.detach() for p in plain.parameters()])
    assert scaler.get_scale() == 2048.0


def test_with_a_loss_scaler_an_overflowing_step_is_skipped_and_the_scale_backs_off():
    (x, y), model = batch(), small_net()
    with torch.no_grad():
        model[2].weight.mul_(1000)  # gradients above 2, which times 2^127 overflow float32
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    run_forward_backward(model, x, y, recipe(grad_clip=1.0), scaler=scaler, optimizer=optimizer)
    update_weights(optimizer, scaler)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0 ** 126


def test_forward_backward_runs_the_forward_under_autocast_of_the_given_dtype():
    model, (x, y) = small_net(), batch()
    _, logits, gradients, _ = run_forward_backward(model, x, y, recipe(grad_clip=None), amp_dtype=torch.bfloat16)
    assert logits.dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in gradients)  # the weights stay float32
    _, logits, _, _ = run_forward_backward(small_net(), x, y, recipe(grad_clip=None), amp_dtype=None)
    assert logits.dtype == torch.float32


def test_a_grad_scaler_only_for_float16():
    assert make_grad_scaler(None) is None and make_grad_scaler(torch.bfloat16) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available. Disabling." on a machine without a GPU
        scaler = make_grad_scaler(torch.float16)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cuda"


# The optimiser and the schedule the trainer builds -------------------------------------------------

ADAMW = recipe(optimizer="adamw", lr=3e-4, betas=(0.8, 0.95), weight_decay=0.07)
LAMB = recipe(optimizer="lamb", lr=2e-3, betas=(0.85, 0.98), weight_decay=0.02)


@pytest.mark.parametrize("the_recipe,kind,eps", [(ADAMW, torch.optim.AdamW, 1e-8), (LAMB, Lamb, 1e-6)])
def test_make_optimizer_builds_the_recipes_optimiser_with_decay_on_matrices_only(the_recipe, kind, eps):
    model = build_model(TINY)
    optimizer = make_optimizer(model, the_recipe)
    assert type(optimizer) is kind
    decay, no_decay = optimizer.param_groups
    parameters = list(model.parameters())
    assert [id(p) for p in decay["params"]] == [id(p) for p in parameters if p.dim() >= 2]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in parameters if p.dim() < 2]
    assert decay["weight_decay"] == the_recipe.weight_decay and no_decay["weight_decay"] == 0.0
    for group in (decay, no_decay):
        assert group["lr"] == the_recipe.lr and tuple(group["betas"]) == the_recipe.betas and group["eps"] == eps
    if kind is torch.optim.AdamW:
        assert not decay["amsgrad"] and not decay["maximize"]


@pytest.mark.parametrize("the_recipe,kind", [(ADAMW, torch.optim.AdamW), (LAMB, Lamb)])
def test_a_fresh_training_state_uses_the_recipes_optimiser_and_schedule(the_recipe, kind):
    the_recipe = dataclasses.replace(the_recipe, warmup_epochs=0.8, schedule="linear", final_lr_fraction=0.1)
    model = build_model(TINY)
    plan = RunPlan(steps_per_epoch=6, total_steps=12, num_epochs=2)
    state = TrainState.fresh(model, the_recipe, plan, amp_dtype=None)
    assert type(state.optimizer) is kind and state.scaler is None
    assert state.optimizer.param_groups[0]["weight_decay"] == the_recipe.weight_decay
    assert isinstance(state.schedule, LRSchedule) and state.schedule.optimizer is state.optimizer
    # warmup_epochs 0.8 of 6 steps = round(4.8) = 5 steps: the first step runs at 1/5 of the peak
    for group in state.optimizer.param_groups:
        assert group["lr"] == pytest.approx(the_recipe.lr / 5, rel=1e-12)


@pytest.mark.parametrize("shape", ["cosine", "linear", "constant"])
def test_make_schedule_warms_up_over_the_recipes_epochs_then_decays_to_its_final_fraction(shape):
    the_recipe = recipe(lr=2e-3, warmup_epochs=0.8, schedule=shape, final_lr_fraction=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=123.0)
    schedule = make_schedule(optimizer, the_recipe, steps_per_epoch=6)
    warmup_steps = 5  # round(0.8 * 6): 4.8 rounds up
    seen = [optimizer.param_groups[0]["lr"]]
    for step in range(1, warmup_steps + 1):
        schedule.step(0.0)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([2e-3 * min(1.0, (k + 1) / warmup_steps) for k in range(warmup_steps + 1)],
                                 rel=1e-12)
    schedule.step(0.5)
    half = {"cosine": 0.5, "linear": 0.5, "constant": 1.0}[shape]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * (0.1 + 0.9 * half), rel=1e-12)
    schedule.step(1.0)
    end = 0.1 if shape != "constant" else 1.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * end, rel=1e-12)


# The trainer's steps --------------------------------------------------------------------------------

def tiny_data(train_images=128, test_images=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return CIFAR10Data(images(train_images), labels(train_images), images(test_images), labels(test_images),
                       root=None, official=None, source="random test images")


def schedule_factor(step, total_steps, warmup_steps, final_fraction):
    """The learning rate of optimizer step `step` (0-based) as a fraction of the peak: linear warmup, then
    cosine decay following step / total_steps (the trainer steps the schedule after each update)."""
    warmup = min(1.0, (step + 1) / warmup_steps)
    decay = 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return warmup * (final_fraction + (1 - final_fraction) * decay)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_trainer_steps_are_the_recipe_written_out(name):
    """`train` for 4 steps: the weights, the reported loss and the learning rate equal the recipe run by
    hand: the formula loss, its gradient clipped to grad_clip, the optimiser with decay on matrices only
    (AdamW from PyTorch, LAMB from perceiver_edu.optim, tested against its paper in test_optim.py), the
    learning rate of each step from the schedule's formula, the batches of `train_batches`."""
    the_recipe = TrainConfig(epochs=1, batch_size=32, optimizer=name, lr=4e-3, weight_decay=0.05,
                             betas=(0.9, 0.99), warmup_epochs=0.5, final_lr_fraction=0.1, label_smoothing=0.2,
                             grad_clip=0.05, augment=False, seed=3, eval_batch_size=32)
    data = tiny_data()
    model, history = train(TINY, the_recipe, data, device="cpu", progress=False, log=lambda *_: None)

    seed_everything(the_recipe.seed)
    reference = build_model(TINY)
    reference.train()
    matrices = [p for p in reference.parameters() if p.dim() >= 2]
    vectors = [p for p in reference.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": 0.05}, {"params": vectors, "weight_decay": 0.0}]
    optimizer = (torch.optim.AdamW(groups, lr=4e-3, betas=(0.9, 0.99)) if name == "adamw"
                 else Lamb(groups, lr=4e-3, betas=(0.9, 0.99)))
    losses, clipped_steps = [], 0
    batches = train_batches(data.train_images, data.train_labels, 32, torch.Generator().manual_seed(3),
                            augmentation=False)
    for step, (x, y) in enumerate(batches):
        gradients, loss = reference_gradients(reference, x, y, smoothing=0.2)
        losses.append(loss)
        clipped_steps += global_norm(gradients) > 0.05
        for group in optimizer.param_groups:
            group["lr"] = 4e-3 * schedule_factor(step, total_steps=4, warmup_steps=2, final_fraction=0.1)
        for p, g in zip(reference.parameters(), clipped(gradients, 0.05)):
            p.grad = g
        optimizer.step()
    assert len(losses) == 4 and clipped_steps >= 1
    assert_close_lists([p.detach() for p in model.parameters()], [p.detach() for p in reference.parameters()],
                       rtol=1e-4, atol=2e-5)  # float32 vs float64 gradients: ~1e-3 of a step apart
    assert history[0]["train_loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert history[0]["lr"] == pytest.approx(4e-3 * schedule_factor(4, 4, 2, 0.1), rel=1e-9)
    assert history[0]["images_seen"] == 128
