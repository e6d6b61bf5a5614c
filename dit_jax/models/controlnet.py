"""ControlNet for a DiT, built the way PixArt-delta builds it for transformers.

A ControlNet is a trainable copy of the first N blocks of a frozen base DiT,
starting from the base's weights. The control image (an edge map, depth map...)
enters through its own patch embedding, zero-initialised, added to the base's
embedded noisy tokens (patches + position table); the output of copy i passes
a zero-initialised linear layer and is added to the output of base block i
(the input of block i + 1). At initialisation every zero layer outputs exactly
0, so the controlled model is the base, bit for bit, and training starts there.

Several ControlNets steer one base at once, each with its own scale: base
block i gets sum_j scale_j * residual_j[i] (diffusers' MultiControlNet).
"""


import jax
import jax.numpy as jnp
from flax import nnx

from dit_jax.models.dit import DiT, REMAT_POLICIES, materialize_grad
from dit_jax.models.embeddings import PatchEmbed, linear
from dit_jax.models.pretrained import CONFIG_FILE, WEIGHTS_FILE, export_directory, first_difference
from dit_jax.utils import paths

# The parameters a ControlNet run trains: everything under ControlledDiT.controlnets; the base is frozen.
TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("controlnets"))
# Model options a ControlNet run may choose itself; every other key must be the base's.
RUNTIME_KEYS = ("attention", "remat", "scan_blocks", "dtype", "param_dtype",
                "class_dropout_prob", "caption_dropout_prob", "dropout")


class ControlNet(nnx.Module):
    """Copies of a base DiT's first num_blocks blocks, the control's patch embedding and the zero layers."""

    def __init__(self, base: DiT, num_blocks, control_channels, control_size=None, *, rngs: nnx.Rngs):
        depth = len(base.blocks)
        if not 1 <= num_blocks <= depth:
            raise ValueError(f"controlnet.num_blocks={num_blocks} must be between 1 and the base's depth {depth}.")
        size = base.input_size if isinstance(base.input_size, (tuple, list)) else (base.input_size,) * 2
        control_size = tuple(size) if control_size is None else (
            tuple(control_size) if isinstance(control_size, (tuple, list)) else (control_size,) * 2)
        if any(c % s for c, s in zip(control_size, size)) or control_size[0] * size[1] != control_size[1] * size[0]:
            raise ValueError(f"The control size {control_size} must be the same whole multiple of the input size "
                             f"{tuple(size)} on both sides.")
        # A control k times the input's size is cut into patches k times larger: one per base token.
        self.control_patch = base.patch_size * (control_size[0] // size[0])
        self.num_blocks, self.remat, self.scan_blocks = num_blocks, base.remat, base.scan_blocks
        self.control_channels, self.control_size = control_channels, list(control_size)
        proj = base.x_embedder.proj
        kw = dict(dtype=proj.dtype, param_dtype=proj.kernel.get_value().dtype, rngs=rngs)
        self.control_embedder = PatchEmbed(self.control_patch, control_channels, base.hidden_size, **kw)
        self.blocks = nnx.List([nnx.clone(block) for block in base.blocks[:num_blocks]])
        self.zero_linears = nnx.List(
            [linear(base.hidden_size, base.hidden_size, ("heads", "embed"), **kw) for _ in range(num_blocks)])
        # The control embedding and the zero layers start at zero: PatchEmbed and linear create their
        # parameters as zeros (embeddings.py) and, unlike the DiT's, nothing re-initialises them.

    def __call__(self, tokens, c, context, context_mask, control, rng=None, rope=None):
        """The base's embedded tokens (N, T, D), conditions and rotary tables (None unless the base uses RoPE),
        control (N, Hc, Wc, Cc) -> num_blocks (N, T, D)."""
        h = self.control_embedder(control.astype(tokens.dtype))  # (N, T', D)
        if h.shape[1] != tokens.shape[1]:
            raise ValueError(f"A control of {control.shape[1]}x{control.shape[2]} makes {h.shape[1]} patches of "
                             f"{self.control_patch} px, the input has {tokens.shape[1]} tokens: resize the control.")
        h = tokens + h.astype(tokens.dtype)
        keys = list(jax.random.split(rng, self.num_blocks)) if rng is not None else [None] * self.num_blocks
        policy = REMAT_POLICIES[self.remat]
        if self.scan_blocks:
            return list(self.scan(h, c, context, context_mask, keys, policy, rope))

        def run(block, zero, h, key):
            h = block(h, c, context, context_mask, key, rope)
            return h, zero(h).astype(tokens.dtype)

        if policy is not None:
            run = nnx.remat(run, policy=policy)
        out = []
        for block, zero, key in zip(self.blocks, self.zero_linears, keys):
            h, residual = run(block, zero, materialize_grad(h), key)
            out.append(residual)
        return out

    def scan(self, h, c, context, context_mask, keys, policy, rope=None):
        """The copies as one lax.scan, as DiT.scan runs the base: stacked residuals (num_blocks, N, T, D)."""
        block_def, zero_def = nnx.graphdef(self.blocks[0]), nnx.graphdef(self.zero_linears[0])
        stack = lambda modules: jax.tree.map(lambda *w: jnp.stack(w), *[nnx.state(m) for m in modules])

        def body(h, per_block):
            block_w, zero_w, key = per_block
            h = nnx.merge(block_def, block_w)(h, c, context, context_mask, key, rope)
            return h, nnx.merge(zero_def, zero_w)(h).astype(h.dtype)

        if policy is not None:
            body = jax.checkpoint(body, policy=policy)
        keys = jnp.stack(keys) if keys[0] is not None else None
        return jax.lax.scan(body, h, (stack(self.blocks), stack(self.zero_linears), keys))[1]


class ControlledDiT(nnx.Module):
    """A base DiT steered by one or more ControlNets; called like the DiT plus `controls`.

    control_dropout: in training (rng given), each example's control is replaced by zeros with this
    probability, so the ControlNet learns that a blank control adds nothing (a null control for guidance).
    Without any ControlNet output (scales 0) the model is exactly the base.
    """

    def __init__(self, base: DiT, controlnets, scales=None, control_dropout=0.0):
        self.base = base
        self.controlnets = nnx.List(list(controlnets))
        self.scales = tuple(float(s) for s in (scales if scales is not None else [1.0] * len(self.controlnets)))
        if len(self.scales) != len(self.controlnets):
            raise ValueError(f"{len(self.scales)} scales for {len(self.controlnets)} ControlNets: give one each.")
        self.control_dropout = float(control_dropout)

    def __call__(self, x, t, y=None, text=None, text_mask=None, pooled=None, drop=None, *, controls,
                 scales=None, rng=None):
        """controls: one control image (N, Hc, Wc, Cc) per ControlNet (a bare array for one);
        scales: one per ControlNet (a number or per-example (N,)), the constructor's by default."""
        controls = [controls] if not isinstance(controls, (list, tuple)) else list(controls)
        scales = self.scales if scales is None else tuple(scales)
        if len(controls) != len(self.controlnets) or len(scales) != len(self.controlnets):
            raise ValueError(f"{len(self.controlnets)} ControlNets need as many controls and scales, "
                             f"got {len(controls)} and {len(scales)}.")
        base_rng = net_rngs = None
        if rng is not None:
            base_rng, rng = jax.random.split(rng)
            net_rngs = jax.random.split(rng, 2 * len(self.controlnets))
            if self.control_dropout > 0:
                controls = [jnp.where((jax.random.uniform(k, (c.shape[0],)) < self.control_dropout)[:, None, None,
                                                                                                      None], 0, c)
                            for c, k in zip(controls, net_rngs[len(self.controlnets):])]

        def residuals(tokens, c, context, context_mask, rope):
            total = [None] * len(self.base.blocks)
            for j, (net, control, scale) in enumerate(zip(self.controlnets, controls, scales)):
                key = net_rngs[j] if net_rngs is not None else None
                scale = jnp.asarray(scale, jnp.float32)
                scale = scale[:, None, None] if scale.ndim == 1 else scale
                for i, r in enumerate(net(tokens, c, context, context_mask, control, key, rope)):
                    r = (scale * r).astype(tokens.dtype)
                    total[i] = r if total[i] is None else total[i] + r
            return total

        return self.base(x, t, y, text, text_mask, pooled, drop, residuals=residuals, rng=base_rng)


def base_directory(path):
    """The base's export directory (a finished run's RUN/export, or an export itself)."""
    return export_directory(path, "controlnet.base")


def base_model_kwargs(path, model_kwargs):
    """The base's DiT kwargs with this run's run-time options; a ValueError naming the first key where this
    run's model config disagrees with the base's (data sizes, width, depth, text or label conditioning...)."""
    base = paths.read_json(paths.join(base_directory(path), CONFIG_FILE))
    diff = first_difference(model_kwargs, base, keys=model_kwargs, skip=RUNTIME_KEYS)
    if diff:
        key, value, theirs = diff
        raise ValueError(f"controlnet.base {path!r} was trained with model.{key}={theirs!r}, this config has "
                         f"{value!r}: use the base's recipe and data.")
    return {**base, **{k: v for k, v in model_kwargs.items() if k in RUNTIME_KEYS}}


def check_base_weights(model_kwargs, weights):
    """The base's safetensors against the model its config builds: names and shapes, without allocating it."""
    from dit_jax.models.pretrained import build_model

    state = nnx.state(nnx.eval_shape(lambda: build_model(model_kwargs)), nnx.Variable)
    wanted = {".".join(str(k) for k in path): tuple(v.shape) for path, v in nnx.to_flat_state(state)}
    got = {name: tuple(w.shape) for name, w in weights.items()}
    if wanted != got:
        bad = sorted(k for k in set(wanted) | set(got) if wanted.get(k) != got.get(k))
        raise ValueError(f"controlnet.base's weights do not fit its config.json: {bad[:3]} differ.")


def build_controlled(model_kwargs, cfg, seed=0):
    """A ControlledDiT with one ControlNet from the `controlnet` config block: the base as model_kwargs
    builds it (random weights: load the base's, then copy them into the ControlNet, see `copy_base_blocks`)."""
    from dit_jax.models.pretrained import build_model

    base = build_model(model_kwargs, seed=seed)
    channels = cfg.get("control_channels") or base.in_channels
    net = ControlNet(base, cfg.num_blocks, channels, cfg.get("control_size") or None, rngs=nnx.Rngs(seed + 1))
    return ControlledDiT(base, [net], control_dropout=cfg.get("conditioning_dropout_prob", 0.0))


def copy_base_blocks(model: ControlledDiT):
    """Sets every ControlNet's block copies to the base's current block weights (after loading the base)."""
    for net in model.controlnets:
        for copy, block in zip(net.blocks, model.base.blocks):
            nnx.update(copy, nnx.state(block))
    return model


def save_controlnet(net: ControlNet, cfg, directory):
    """A trained ControlNet as safetensors + config.json (its sizes, control type and base), in `directory`."""
    from dit_jax.models.pretrained import save_pretrained

    config = dict(num_blocks=net.num_blocks, control_channels=net.control_channels, control_size=net.control_size,
                  control_type=cfg.control_type, base=paths.absolute(base_directory(cfg.base)))
    save_pretrained(net, config, directory)


def load_controlnet(directory, base: DiT):
    """A ControlNet saved by `save_controlnet`, attached to `base` (which must be its base's architecture)."""
    from dit_jax.models.pretrained import load_flat_weights

    path = paths.join(directory, CONFIG_FILE)
    if not paths.path(path).is_file():
        raise FileNotFoundError(f"{path} not found: pass the controlnet_export directory of a ControlNet run.")
    config = paths.read_json(path)
    net = nnx.eval_shape(lambda: ControlNet(base, config["num_blocks"], config["control_channels"],
                                            config["control_size"], rngs=nnx.Rngs(0)))
    return load_flat_weights(net, paths.load_safetensors(paths.join(directory, WEIGHTS_FILE))), config


def check_config(cfg):
    """The `controlnet` block's values, checked before any model is built."""
    if not isinstance(cfg.get("num_blocks"), int) or cfg.num_blocks < 1:
        raise ValueError(f"controlnet.num_blocks must be a positive integer, got {cfg.get('num_blocks')!r}.")
    if not 0.0 <= float(cfg.get("conditioning_dropout_prob", 0.0)) < 1.0:
        raise ValueError("controlnet.conditioning_dropout_prob must be in [0, 1).")
    if not cfg.get("control_type"):
        raise ValueError("controlnet.control_type is empty: name the control the batch carries "
                         "(its key is control_<type>).")
    base_directory(cfg.base)


def batch_controls(cfg, batch):
    """The control image of a batch: batch['control_<type>']; one line when the data does not carry it."""
    key = f"control_{cfg.control_type}"
    if key not in batch:
        raise ValueError(f"The batch has no {key!r} (it has {sorted(batch)}): prepare the data with "
                         f"controls {cfg.control_type!r}.")
    return batch[key]
