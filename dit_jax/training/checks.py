"""Start-up checks of a config, before any data work or compile."""

from dit_jax.diffusion.generate import check_sampler
from dit_jax.models import attention
from dit_jax.models.dit import REMAT_POLICIES
from dit_jax.training import sharding


def validate(config):
    """Fails within seconds, in one line, on what would otherwise fail after a long compile."""
    m = config.model
    if m.hidden_size % m.num_heads:
        raise ValueError(f"model.hidden_size {m.hidden_size} is not divisible by model.num_heads {m.num_heads}.")
    attention.parse(m.attention)  # a backend name, optionally with a sparse pattern
    if m.remat not in REMAT_POLICIES:
        raise ValueError(f"Unknown model.remat {m.remat!r}; choose one of {sorted(REMAT_POLICIES)}.")
    check_sampler(config.sample.sampler)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(config.batch_size, mesh, config.optim.get("accumulate", 1))
    return mesh
