"""The train state and the jit-compiled, sharded train step.

The state is a pytree: parameters, optimizer state, EMA, step and RNG key.
Each step's randomness is folded from (key, step), so a resumed run draws
exactly what an uninterrupted one would.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from safetensors.numpy import load_file

from dit_jax.diffusion import Schedule, beta_schedule, diffusion_loss, flow, q_sample
from dit_jax.models import controlnet as controlnet_lib
from dit_jax.models.pretrained import WEIGHTS_FILE, build_model, load_flat_weights, load_matching_weights
from dit_jax.training import calibration, init_from, optim, repa as repa_lib, sharding


@dataclasses.dataclass
class Trainer:
    """What one compiled train step needs besides the state."""
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    lr_schedule: callable
    schedule: Schedule
    config: object
    mesh: jax.sharding.Mesh
    state_shardings: dict
    abstract_state: dict       # ShapeDtypeStructs with shardings: the restore target
    init: callable             # () -> the initial state, each array born on its devices
    controlnet: object = None  # the `controlnet` config block when training a ControlNet on a frozen base
    repa: object = None        # a repa.Alignment: the params hold the DiT and REPA's projector (WithProjector)

    def model(self, params, frozen=None):
        """The model from its trainable parameters (and a ControlNet's frozen base, state["frozen"])."""
        model = nnx.merge(self.graphdef, params) if frozen is None else nnx.merge(self.graphdef, params, frozen)
        return model.dit if self.repa is not None else model  # REPA's projector is for training only


def diffusion_schedule(cfg):
    return Schedule(beta_schedule(cfg.schedule, cfg.timesteps))


def create(config, model_kwargs, mesh):
    """A Trainer for this config and mesh; nothing is allocated until `trainer.init()`."""
    if config.get("controlnet") and config.controlnet.get("base"):
        return create_controlnet(config, model_kwargs, mesh)
    sharding.check_batch(config.batch_size, mesh, config.optim.get("accumulate", 1))
    alignment = repa_lib.alignment(config, model_kwargs)  # None unless REPA; a block or grid that cannot fails here
    dit = lambda: build_model(model_kwargs, seed=config.seed)
    # init_from: another run's weights (host arrays) loaded over the fresh ones (an image DiT's into a video one,
    # a text model's into a layout one); an argument of the jitted init, as a ControlNet's base is.
    weights = {}
    if config.get("init_from"):
        weights = init_from.read(config.init_from, model_kwargs)
        init_from.check_weights(config.init_from, nnx.eval_shape(dit), weights)

    def build(weights):
        model = load_matching_weights(dit(), weights) if weights else dit()
        if alignment is not None:  # REPA's projector beside the DiT
            model = alignment.wrap(lambda: model, model_kwargs["hidden_size"], config.seed)()
        return model

    abstract = nnx.eval_shape(lambda: build({}))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    rules = [tuple(rule) for rule in config.get("sharding_rules", sharding.DEFAULT_RULES)]
    param_shardings = sharding.param_shardings(abstract_params, mesh, rules)
    optimizer, lr_schedule = optim.make_optimizer(config.optim, config.steps)

    def init(weights):
        params = nnx.state(build(weights), nnx.Param)
        return dict(params=params, opt_state=optimizer.init(params), ema=params,
                    step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(config.seed))

    shapes = jax.eval_shape(init, weights)
    state_shardings = infer_state_shardings(shapes, param_shardings, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, state_shardings)
    jitted_init = jax.jit(init, out_shardings=state_shardings)
    return Trainer(graphdef, optimizer, lr_schedule, diffusion_schedule(config.diffusion), config, mesh,
                   state_shardings, abstract, lambda: jitted_init(weights), repa=alignment)


def create_controlnet(config, model_kwargs, mesh):
    """A Trainer for a ControlNet on a frozen base. Only the ControlNet's parameters are `params` (so only
    they get gradients, optimizer state and an EMA); the base's, loaded from controlnet.base, ride along
    untouched as state["frozen"]. A missing base or one whose model config differs fails here, before compiling."""
    cn = config.controlnet
    controlnet_lib.check_config(cn)
    sharding.check_batch(config.batch_size, mesh, config.optim.get("accumulate", 1))
    model_kwargs = controlnet_lib.base_model_kwargs(cn.base, model_kwargs)
    weights = load_file(os.path.join(controlnet_lib.base_directory(cn.base), WEIGHTS_FILE))  # host arrays
    build = lambda: controlnet_lib.build_controlled(model_kwargs, cn, seed=config.seed)
    graphdef, abstract_params, abstract_frozen = nnx.split(nnx.eval_shape(build), controlnet_lib.TRAINABLE,
                                                          nnx.Param)
    controlnet_lib.check_base_weights(model_kwargs, weights)
    rules = [tuple(rule) for rule in config.get("sharding_rules", sharding.DEFAULT_RULES)]
    param_shardings = sharding.param_shardings(abstract_params, mesh, rules)
    optimizer, lr_schedule = optim.make_optimizer(config.optim, config.steps)

    def init(weights):
        model = build()
        load_flat_weights(model.base, weights)
        controlnet_lib.copy_base_blocks(model)  # the copies start as the trained base blocks
        _, params, frozen = nnx.split(model, controlnet_lib.TRAINABLE, nnx.Param)
        return dict(params=params, opt_state=optimizer.init(params), ema=params, frozen=frozen,
                    step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(config.seed))

    shapes = jax.eval_shape(init, weights)
    state_shardings = infer_state_shardings(shapes, param_shardings, mesh,
                                            sharding.param_shardings(abstract_frozen, mesh, rules))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, state_shardings)
    jitted_init = jax.jit(init, out_shardings=state_shardings)
    return Trainer(graphdef, optimizer, lr_schedule, diffusion_schedule(config.diffusion), config, mesh,
                   state_shardings, abstract, lambda: jitted_init(weights), controlnet=cn)


def infer_state_shardings(abstract_state, param_shardings, mesh, frozen_shardings=None):
    """Parameters and EMA by their rules; optimizer moments like the parameter of the same shape path."""
    replicated = sharding.replicated(mesh)
    params_flat = {path: s for path, s in jax.tree_util.tree_flatten_with_path(
        param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]}

    def opt_sharding(path, leaf):
        # optax moments mirror the parameter tree: their path ends with a parameter's path.
        for n in range(len(path)):
            if path[n:] in params_flat and leaf.ndim:
                return params_flat[path[n:]]
        return replicated

    out = dict(params=param_shardings,
               opt_state=jax.tree_util.tree_map_with_path(opt_sharding, abstract_state["opt_state"]),
               ema=param_shardings, step=replicated, rng=replicated)
    if frozen_shardings is not None:
        out["frozen"] = frozen_shardings
    return out


CONDITION_KEYS = ("style", "layout_boxes", "layout_mask", "layout_embeddings")  # batch keys = the DiT's arguments


def loss_fn(trainer, params, batch, key, frozen=None):
    """Mean diffusion (or, with diffusion.objective=flow, flow-matching) loss of a batch at random times and noise;
    `frozen` holds a ControlNet's base weights."""
    return loss_and_stats(trainer, params, batch, key, frozen)[0]


def loss_and_stats(trainer, params, batch, key, frozen=None):
    """loss_fn's loss plus, with REPA, repa.weight times its alignment loss; and {"repa_loss": that alignment
    loss} (else {})."""
    cfg = trainer.config
    alignment = getattr(trainer, "repa", None)
    tokens = {}  # with REPA, the tokens after block repa.block, caught from whichever objective calls the model
    x0 = batch["image"]
    k_t, k_noise, k_model = jax.random.split(key, 3)
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)

    controls = {} if trainer.controlnet is None else dict(
        controls=controlnet_lib.batch_controls(trainer.controlnet, batch))

    # style and layout (a DiT with num_styles / layout_max_boxes reads them) when the batch has them.
    if trainer.controlnet is None:
        controls.update({k: batch[k] for k in CONDITION_KEYS if k in batch})
    if cfg.model.get("multiview"):  # models/multiview.py: each view's camera; the first view is the given one
        controls.update({"cameras": batch["cameras"]} if "cameras" in batch else {})
        if cfg.model.get("novel_view"):
            controls["given"] = x0[:, 0]

    def model(x_t, t):
        out = trainer.model(params, frozen)(x_t, t, y=batch.get("label"), text=batch.get("text"),
                                            text_mask=batch.get("text_mask"), pooled=batch.get("pooled"),
                                            **controls, rng=k_model, **({"return_block": alignment.block}
                                                                        if alignment is not None else {}))
        if alignment is not None:
            out, tokens["block"] = out
        return out

    d = cfg.diffusion
    if d.get("objective", "ddpm") == "flow":
        loss = flow.training_loss(model, x0, noise, k_t, path=d.flow_path, sampling=d.time_sampling,
                                  mean=d.logit_mean, std=d.logit_std, shift=d.shift).mean()
    else:
        t = jax.random.randint(k_t, (x0.shape[0],), 0, len(trainer.schedule))
        x_t = q_sample(x0, t, noise, trainer.schedule)
        out = model(x_t, t)
        gamma = cfg.diffusion.get("min_snr_gamma") or None
        loss = diffusion_loss(out, x0, x_t, t, noise, trainer.schedule, prediction=cfg.diffusion.prediction,
                              learn_sigma=cfg.model.get("learn_sigma", True), min_snr_gamma=gamma).mean()
    if alignment is None:
        return loss, {}
    repa_loss = alignment.loss(nnx.merge(trainer.graphdef, params).projector, tokens["block"], batch)
    return loss + alignment.weight * repa_loss, {"repa_loss": repa_loss}


def classifier_loss_fn(trainer, params, batch, key):
    """task=classifier: mean cross-entropy of a noise-aware classifier on x_t at uniform timesteps, against
    the labels smoothed by optim.label_smoothing; and the batch's calibration sums (training/calibration.py)."""
    x0, labels = batch["image"], batch["label"]
    k_t, k_noise, k_model = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, len(trainer.schedule))
    x_t = q_sample(x0, t, jax.random.normal(k_noise, x0.shape, x0.dtype), trainer.schedule)
    logits = trainer.model(params)(x_t, t, rng=k_model)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                  trainer.config.optim.get("label_smoothing", 0.0))
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, calibration.batch_stats(logits, labels, t, len(trainer.schedule))


def objective(trainer, frozen=None):
    """(params, batch, key) -> (loss, sums to log) for the config's task; `frozen`: a ControlNet's base."""
    if trainer.config.get("task", "diffusion") == "classifier":
        return lambda p, b, k: classifier_loss_fn(trainer, p, b, k)
    return lambda p, b, k: loss_and_stats(trainer, p, b, k, frozen)


def train_step(trainer, state, batch):
    """One optimizer update from the global batch, split into `accumulate` micro-batches."""
    key = jax.random.fold_in(state["rng"], state["step"])
    frozen = state.get("frozen")  # a ControlNet's base: an input, never differentiated or updated
    grad_fn = jax.value_and_grad(objective(trainer, frozen), has_aux=True)
    accumulate = trainer.config.optim.get("accumulate", 1)
    if accumulate == 1:
        (loss, stats), grads = grad_fn(state["params"], batch, key)
    else:
        # Rows i, i + A, i + 2A... form micro-batch i, so each keeps the batch's sharding.
        micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(-1, accumulate, *x.shape[1:]), 1, 0), batch)

        def add(carry, inputs):
            mb, i = inputs
            out = grad_fn(state["params"], mb, jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, carry, out), None

        first = jax.tree.map(lambda x: x[0], micro)
        no_stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                jax.eval_shape(objective(trainer), state["params"], first, key)[1])
        zeros = ((jnp.zeros(()), no_stats), jax.tree.map(jnp.zeros_like, state["params"]))
        ((loss, stats), grads), _ = jax.lax.scan(add, zeros, (micro, jnp.arange(accumulate)))
        loss, grads = jax.tree.map(lambda x: x / accumulate, (loss, grads))  # the sums in stats stay sums
    updates, opt_state = trainer.optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema_cfg = trainer.config.ema
    ema = optim.ema_update(state["ema"], params, optim.ema_decay(state["step"], ema_cfg.decay, ema_cfg.warmup))
    metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), lr=trainer.lr_schedule(state["step"]))
    if "repa_loss" in stats:  # a sum over the micro-batches, like the loss
        stats = dict(stats)
        metrics["repa_loss"] = stats.pop("repa_loss") / accumulate
    if stats:
        metrics.update(calibration.metrics(stats, len(trainer.schedule)))
    new_state = dict(params=params, opt_state=opt_state, ema=ema, step=state["step"] + 1, rng=state["rng"])
    if frozen is not None:
        new_state["frozen"] = frozen
    return new_state, metrics


def compile_step(trainer, batch_spec):
    """The jitted step with explicit shardings and the state donated."""
    batch_shardings = jax.tree.map(lambda _: sharding.batch_sharding(trainer.mesh), batch_spec)

    def step(state, batch):
        # The mesh in context lets attention kernels run under shard_map (models/attention.py).
        with jax.sharding.use_abstract_mesh(trainer.mesh.abstract_mesh):
            return train_step(trainer, state, batch)
    return jax.jit(step,
                   in_shardings=(trainer.state_shardings, batch_shardings),
                   out_shardings=(trainer.state_shardings, sharding.replicated(trainer.mesh)),
                   donate_argnums=(0,))


def state_bytes_per_device(compiled):
    """Argument bytes of a compiled step per device: where FSDP's saving shows."""
    return compiled.memory_analysis().argument_size_in_bytes

