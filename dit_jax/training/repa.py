"""REPA in the train step: which block's tokens, how much weight, and where the targets come from (the
prepared records or, with repa.features=online, the Inception inside the jitted step). The method's pieces
are in dit_jax/models/repa.py, its config and encoders in dit_jax/data/repa.py."""

import dataclasses

import jax
from flax import nnx

from dit_jax.data import repa as repa_data
from dit_jax.models import inception
from dit_jax.models.repa import Projector, WithProjector, alignment_loss, inception_features, to_tokens


@dataclasses.dataclass
class Alignment:
    """What the train step needs for REPA; `encode` ((N, H, W, C) images -> (N, T, C) targets) when online."""
    block: int
    weight: float
    projector_dim: int
    feature_dim: int
    encode: callable = None

    def wrap(self, build, hidden_size, seed):
        """`build` (() -> the DiT) -> () -> WithProjector(the DiT, a fresh projector)."""
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x4E9A)  # a stream of its own, not the DiT's
        return lambda: WithProjector(build(), Projector(hidden_size, self.projector_dim, self.feature_dim,
                                                        rngs=nnx.Rngs(key)))

    def targets(self, batch):
        """(N, T, C) features of the batch's clean images: prepared (batch["repa"]) or computed now."""
        features = batch["repa"] if self.encode is None else self.encode(batch["image"])
        return jax.lax.stop_gradient(features)

    def loss(self, projector, tokens, batch):
        """The batch's mean alignment loss of `tokens` (N, T, D), the DiT's after block `block`."""
        return alignment_loss(projector(tokens), self.targets(batch)).mean()


def alignment(config, model_kwargs):
    """The run's Alignment (None with repa.weight=0), checked against the model's token grid before anything
    compiles; online, the Inception weights load here."""
    if not repa_data.enabled(config):
        return None
    repa_data.check_config(config)
    size = model_kwargs["input_size"]
    grid = repa_data.token_grid(config, size[0] if isinstance(size, (tuple, list)) else size)
    resolution, _, dim = repa_data.geometry(config, grid)
    encode = None
    if config.repa.features == "online":
        params = inception.load_params(config.repa.encoder_path or None)
        encode = lambda images: to_tokens(inception_features(params, images, resolution), grid)
    return Alignment(repa_data.block_index(config), float(config.repa.weight), repa_data.projector_dim(config), dim,
                     encode)
