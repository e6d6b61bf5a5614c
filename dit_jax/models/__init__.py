"""The DiT model: backbone, attention backends, embeddings, named sizes, weight import."""
