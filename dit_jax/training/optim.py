"""Optimizer, learning-rate schedules and the EMA of parameters."""

import math

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "warmup_cosine", "cosine_restarts")


def cosine_warm_restarts(base_lr, period, mult=1, min_lr=0.0):
    """PyTorch's CosineAnnealingWarmRestarts(T_0=period, T_mult=mult, eta_min=min_lr), per step.

    Cycle k lasts period * mult**k steps and the cosine restarts at base_lr;
    a closed form, so it runs under jit for any number of cycles.
    """
    if period < 1 or mult < 1 or int(mult) != mult:
        raise ValueError(f"Warm restarts need period >= 1 and an integer mult >= 1, got {period}, {mult}.")

    def schedule(step):
        # optax.join_schedules also evaluates this during the warm-up, at negative steps: start those at 0.
        step = jnp.maximum(jnp.asarray(step, jnp.int32), 0)
        if mult == 1:
            cycle_start, length = (step // period) * period, jnp.full_like(step, period)
        else:
            # Cycle k starts at period * (mult**k - 1) / (mult - 1); the log guesses k, integers fix it.
            k = jnp.floor(jnp.log(step.astype(jnp.float32) * (mult - 1) / period + 1) / math.log(mult))
            k = k.astype(jnp.int32)
            start = lambda k: period * (mult ** k - 1) // (mult - 1)
            k = jnp.where(step < start(k), k - 1, k)
            k = jnp.where(step >= start(k + 1), k + 1, k)
            cycle_start, length = start(k), period * mult ** k
        frac = (step - cycle_start).astype(jnp.float32) / length.astype(jnp.float32)
        return min_lr + (base_lr - min_lr) * 0.5 * (1 + jnp.cos(jnp.pi * frac))

    return schedule


def learning_rate(cfg, total_steps):
    """The config's schedule, after an optional linear warm-up from zero."""
    warmup = cfg.get("warmup_steps", 0)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "warmup_cosine":
        main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1), alpha=cfg.min_lr / cfg.lr)
    elif cfg.schedule == "cosine_restarts":
        main = cosine_warm_restarts(cfg.lr, cfg.restart_period, cfg.restart_mult, cfg.min_lr)
    else:
        raise ValueError(f"Unknown schedule {cfg.schedule!r}; choose one of {SCHEDULES}.")
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def decay_mask(params):
    """Weight decay on matrices only: not on biases, embeddings or null-condition vectors."""
    def decays(path, _):
        return getattr(path[-1], "key", None) == "kernel"
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg, total_steps):
    """AdamW with global-norm clipping; returns (optimizer, schedule) so the rate can be logged."""
    if cfg.name != "adamw":
        raise ValueError(f"Unknown optimizer {cfg.name!r}; choose 'adamw'.")
    schedule = learning_rate(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule


def ema_decay(step, decay, warmup=True):
    """The EMA decay at a step; with warm-up, min(decay, (1 + step) / (10 + step)) as in many DiT recipes."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1 + step) / (10 + step))


def ema_update(ema, params, decay):
    return jax.tree.map(lambda e, p: e * decay + (1 - decay) * p.astype(e.dtype), ema, params)
