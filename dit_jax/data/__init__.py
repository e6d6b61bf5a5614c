"""Datasets, the `prepare` step that precomputes embeddings and latents, and the input pipeline."""
