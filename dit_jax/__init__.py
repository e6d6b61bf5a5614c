"""dit_jax: Diffusion Transformers for text-to-image in JAX / Flax NNX."""
