"""A noise-aware classifier p(y | x_t, t) as a DiT encoder, for classifier guidance (Dhariwal & Nichol 2021).

The DiT's own parts (dit.py): patch embedding, the fixed sin-cos position
table, adaLN-Zero blocks driven by the timestep embedding alone (no label, no
text), then a layer norm modulated by the timestep. Where the DiT unpatchifies
a noise prediction, the classifier pools the tokens as guided-diffusion's
classifier does (its AttentionPool2d, after CLIP): the mean token, plus a
learned vector, is the query of one multi-head attention over itself and every
token. A linear head maps the pooled feature to class logits.

  model, meta = load_classifier(RUN)    # a training workdir, or its export/ directory
  logits = model(x_t, t)                # (B, H, W, C) at meta["resolution"], meta["channels"] -> (B, num_classes)

`meta` holds what a sampler needs to check it can be guided by this
classifier: `resolution` and `channels` (the shape of the x it reads: the
model's space, latents for a latent model), `latent` (bool), `num_classes`,
`class_names`, and the diffusion it was trained on (`schedule`, `timesteps`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dit_jax.models import variants
from dit_jax.models.dit import (REMAT_POLICIES, Attention, DiT, DiTBlock, check_model, init_weights, layer_norm,
                                materialize_grad, modulate)
from dit_jax.models.embeddings import PatchEmbed, TimestepEmbedder, linear, param, sincos_2d
from dit_jax.utils import paths

KIND = "classifier"            # the `model` entry of its config.json: build_model builds a Classifier from it
METADATA_FILE = "classifier.json"  # beside config.json in the export: what load_classifier returns as metadata
# The model kwargs a classifier takes, out of a DiT recipe's `model.*` keys and the data's.
ARGS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio", "num_classes",
        "dropout", "freq_shift", "mlp_norm_eps", "attention", "remat", "scan_blocks", "dtype", "param_dtype")


class AttentionPool(nnx.Module):
    """One attention read-out: the mean token (plus a learned vector) attends over [itself, every token]."""

    def __init__(self, hidden_size, num_heads, *, dtype, param_dtype, rngs):
        self.query = param((hidden_size,), ("embed",), param_dtype)
        # One query: the reference attention is as fast as any kernel, and takes any token count.
        self.attn = Attention(hidden_size, num_heads, cross=True, backend="xla", dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)

    def __call__(self, tokens):
        """(N, T, D) -> (N, D)."""
        mean = tokens.mean(axis=1, keepdims=True) + self.query[...].astype(tokens.dtype)  # (N, 1, D)
        return self.attn(mean, jnp.concatenate([mean, tokens], axis=1))[:, 0]  # keys and values (N, T+1, D)


class Classifier(nnx.Module):
    """Class logits of a noisy image x_t at timestep t; sizes as the DiT's (`variant` gives the named ones)."""

    def __init__(
        self,
        *,
        input_size=32,
        patch_size=4,
        in_channels=4,
        hidden_size=384,
        depth=6,
        num_heads=6,
        mlp_ratio=4.0,
        num_classes=1000,
        dropout=0.0,
        freq_shift=0.0,
        mlp_norm_eps=1e-6,
        attention="xla",
        remat="none",
        scan_blocks=False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_model(hidden_size, num_heads, remat)
        if num_classes < 2:
            raise ValueError(f"A classifier needs at least 2 classes, got num_classes={num_classes}.")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.hidden_size, self.num_classes = hidden_size, num_classes
        self.remat, self.scan_blocks = remat, scan_blocks
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size, **kw)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=freq_shift, **kw)
        self.blocks = nnx.List([
            DiTBlock(hidden_size, num_heads, mlp_ratio, cross_attention=False, mlp_norm_eps=mlp_norm_eps,
                     dropout=dropout, attention=attention, **kw)
            for _ in range(depth)
        ])
        self.norm_modulation = linear(hidden_size, 2 * hidden_size, ("embed", "adaln"), **kw)
        self.pool = AttentionPool(hidden_size, num_heads, **kw)
        self.head = linear(hidden_size, num_classes, ("embed", None), **kw)
        self.initialize_weights(rngs)

    def initialize_weights(self, rngs):
        """As DiT's (dit.init_weights) for the shared parts (so every block starts as the identity); the pool's
        query like the timestep MLP (normal, std 0.02); the head at zero, so training starts from uniform odds."""
        init_weights(self, rngs, self.blocks, normal=[self.pool.query], zero=[self.norm_modulation, self.head])

    def pos_embed(self, grid_h, grid_w):
        return jnp.asarray(sincos_2d(self.hidden_size, grid_h, grid_w), jnp.float32)[None]

    def __call__(self, x, t, *, rng=None):
        """x: (N, H, W, C) noisy input, as q_sample makes it; t: (N,) timesteps. rng turns on dropout.
        Returns (N, num_classes) float32 logits."""
        _, h, w, _ = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"Input {h}x{w} is not divisible by the patch size {p}.")
        keys = list(jax.random.split(rng, len(self.blocks))) if rng is not None else None
        tokens = self.x_embedder(x) + self.pos_embed(h // p, w // p).astype(x.dtype)  # (N, T, D)
        c = self.t_embedder(jnp.broadcast_to(t, x.shape[:1]))  # (N, D): the blocks' only condition
        policy = REMAT_POLICIES[self.remat]
        if self.scan_blocks:
            tokens = DiT.scan(self, tokens, c, None, None, keys, None, policy)  # DiT's scan reads self.blocks only
        else:
            run_block = lambda block, tokens, c, key: block(tokens, c, rng=key)
            if policy is not None:
                run_block = nnx.remat(run_block, policy=policy)
            for i, block in enumerate(self.blocks):
                tokens = run_block(block, materialize_grad(tokens), c, keys[i] if keys else None)
        shift, scale = jnp.split(self.norm_modulation(jax.nn.silu(c)), 2, axis=-1)  # (N, D) each
        tokens = modulate(layer_norm(tokens, 1e-6), shift, scale)
        return self.head(self.pool(tokens)).astype(jnp.float32)  # (N, num_classes)


def classifier_kwargs(model_kwargs):
    """The Classifier's kwargs out of a recipe's `model.*` plus the data's (the DiT-only ones dropped), tagged
    so that build_model and load_pretrained build a Classifier from them."""
    return {"model": KIND, **{k: v for k, v in model_kwargs.items() if k in ARGS}}


def is_classifier(model_config):
    return model_config.get("model") == KIND


def forward_macs(input_size=32, patch_size=4, in_channels=4, hidden_size=384, depth=6, num_classes=1000,
                 mlp_ratio=4.0, **_):
    """Multiply-accumulates of one forward pass, as variants.forward_macs counts the DiT's: its blocks and
    embeddings, then the modulated norm, the pool (one query over T + 1 keys) and the head."""
    n = (input_size // patch_size) ** 2
    d = hidden_size
    dit = variants.forward_macs(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                                hidden_size=d, depth=depth, mlp_ratio=mlp_ratio, learn_sigma=False, text_dim=0)
    dit_head = d * 2 * d + n * d * patch_size * patch_size * in_channels
    pool = d * d + (n + 1) * d * 2 * d + 2 * (n + 1) * d + d * d
    return dit - dit_head + d * 2 * d + pool + d * num_classes


def check_data(manifest):
    """A classifier learns the data's labels: one line if the prepared data has none."""
    if not manifest.get("num_classes"):
        raise ValueError(f"task=classifier needs labels, but the data {manifest.get('dataset', '')!r} has none: "
                         "use a labelled dataset (fashion_mnist, emoji, tfds:imagenet2012, ...).")


def run_metadata(config, manifest, model_kwargs):
    """What load_classifier returns beside the model, from the run's recipe and data (see the module doc)."""
    latent = manifest["space"] == "latent"
    return dict(task=KIND, resolution=model_kwargs["input_size"], channels=model_kwargs["in_channels"],
                latent=latent, vae=manifest["vae"] if latent else None, pixel_resolution=manifest["resolution"],
                num_classes=model_kwargs["num_classes"], class_names=list(manifest.get("class_names") or []),
                dataset=manifest["dataset"], schedule=config.diffusion.schedule,
                timesteps=config.diffusion.timesteps, label_smoothing=config.optim.get("label_smoothing", 0.0))


def write_metadata(directory, metadata):
    paths.write_json(paths.join(directory, METADATA_FILE), metadata, indent=2, sort_keys=True)


def export_dir(path):
    """A training workdir's export/, or `path` itself when it is an export (config.json + weights)."""
    return paths.join(path, "export") if paths.path(path).joinpath("run.json").is_file() else path


def refuse(model_config, command):
    """The one-line error of a front end that needs a diffusion model but was given a classifier."""
    if is_classifier(model_config):
        raise ValueError(f"this run is a noise-aware classifier (task=classifier), not a diffusion model: {command} "
                         "cannot use it on its own; it guides a diffusion model's sampling.")


def load_classifier(path, **overrides):
    """(model, metadata) of a classifier run's workdir or export directory; model(x, t) -> logits.

    Reads config.json and classifier.json first, so a wrong directory fails in
    one line before any weights load. overrides change run-time options
    (dtype, attention, remat), as for load_pretrained.
    """
    from dit_jax.models.pretrained import CONFIG_FILE, load_pretrained  # pylint: disable=import-outside-toplevel
    export = export_dir(path)
    config_path, metadata_path = paths.join(export, CONFIG_FILE), paths.join(export, METADATA_FILE)
    if not paths.path(config_path).is_file():
        raise FileNotFoundError(f"{config_path} not found: pass a classifier run's workdir (trained to its last "
                                "step, which exports it) or its export/ directory.")
    if not is_classifier(paths.read_json(config_path)):
        raise ValueError(f"{path} holds a diffusion model, not a classifier: pass a run trained with "
                         "--config.task=classifier (e.g. configs/classifier_fashion.py).")
    if not paths.path(metadata_path).is_file():
        raise FileNotFoundError(f"{metadata_path} not found: the classifier export is incomplete; train it again "
                                "to its last step to export it.")
    metadata = paths.read_json(metadata_path)
    model, _ = load_pretrained(export, **overrides)
    return model, metadata
