"""Optimizer and schedules against PyTorch, the independent oracle."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from dit_jax.training import optim


def optim_config(**overrides):
    base = dict(name="adamw", lr=1e-2, b1=0.9, b2=0.999, weight_decay=0.1, grad_clip=0.0, accumulate=1,
                schedule="constant", warmup_steps=0, restart_period=0, restart_mult=1, min_lr=0.0)
    return ml_collections.ConfigDict({**base, **overrides})


@pytest.mark.parametrize("period,mult,min_lr", [(10, 1, 0.0), (7, 2, 1e-4), (3, 3, 5e-5)])
def test_cosine_warm_restarts_equal_pytorch(period, mult, min_lr):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=period, T_mult=mult, eta_min=min_lr)
    expected = []
    for _ in range(400):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = jax.jit(jax.vmap(optim.cosine_warm_restarts(0.1, period, mult, min_lr)))(jnp.arange(400))
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-7)


def test_warmup_then_restarts():
    cfg = optim_config(schedule="cosine_restarts", warmup_steps=5, restart_period=10, lr=1.0)
    lr = optim.learning_rate(cfg, total_steps=100)
    np.testing.assert_allclose([float(lr(s)) for s in range(6)], [0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)
    restarts = optim.cosine_warm_restarts(1.0, 10)
    np.testing.assert_allclose([float(lr(s)) for s in range(5, 40)], [float(restarts(s)) for s in range(35)],
                               atol=1e-6)


def test_warmup_cosine_closed_form():
    cfg = optim_config(schedule="warmup_cosine", warmup_steps=10, lr=2.0, min_lr=0.2)
    lr = optim.learning_rate(cfg, total_steps=110)
    for step in (0, 5, 10, 35, 60, 110):
        expected = 2.0 * step / 10 if step < 10 else 0.2 + 1.8 * 0.5 * (1 + np.cos(np.pi * (step - 10) / 100))
        assert float(lr(step)) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="Unknown schedule"):
        optim.learning_rate(optim_config(schedule="linear"), 10)


def test_adamw_with_decay_mask_equals_pytorch():
    rng = np.random.RandomState(0)
    kernel, bias = rng.randn(4, 3).astype(np.float32), rng.randn(3).astype(np.float32)
    target = rng.randn(5, 3).astype(np.float32)
    inputs = rng.randn(5, 4).astype(np.float32)
    cfg = optim_config(schedule="warmup_cosine", warmup_steps=3, lr=0.05, grad_clip=0.5)
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    params = {"layer": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
    state = tx.init(params)
    loss = lambda p: jnp.mean((inputs @ p["layer"]["kernel"] + p["layer"]["bias"] - target) ** 2)

    w, b = torch.nn.Parameter(torch.tensor(kernel)), torch.nn.Parameter(torch.tensor(bias))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                            lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    lr_of = optim.learning_rate(cfg, total_steps=10)
    for step in range(8):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for group in opt.param_groups:
            group["lr"] = float(lr_of(step))
        opt.zero_grad()
        torch.mean((torch.tensor(inputs) @ w + b - torch.tensor(target)) ** 2).backward()
        torch.nn.utils.clip_grad_norm_([w, b], 0.5)
        opt.step()
    np.testing.assert_allclose(params["layer"]["kernel"], w.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(params["layer"]["bias"], b.detach().numpy(), atol=1e-5)


def test_decay_mask_only_matrices():
    params = {"blocks": {0: {"mlp": {"kernel": 1, "bias": 2}}}, "y_embedder": {"embedding_table": 3}}
    mask = optim.decay_mask(params)
    assert mask == {"blocks": {0: {"mlp": {"kernel": True, "bias": False}}}, "y_embedder": {"embedding_table": False}}


def test_ema_with_warmup():
    assert float(optim.ema_decay(0, 0.9999)) == pytest.approx(0.1)
    assert float(optim.ema_decay(10**7, 0.9999)) == pytest.approx(0.9999)
    assert float(optim.ema_decay(0, 0.9999, warmup=False)) == pytest.approx(0.9999)
    ema = optim.ema_update({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, 0.75)
    np.testing.assert_allclose(ema["w"], [0.75, 0.75])
