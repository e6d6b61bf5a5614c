"""Prompt adherence by retrieval: is the image a caption came from among the nearest training images?

Each generated image is a query; the gallery is every training image in the
same feature space (cosine similarity). A query hits at k when one of the
training images carrying its prompt is among its k nearest.
"""

import numpy as np


def normalize(features):
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def top_k_hits(queries, gallery, targets, ks=(1, 5)):
    """queries (Q, D), gallery (G, D), targets: Q sets of gallery indices -> {k: fraction of queries that hit}."""
    similarity = normalize(queries) @ normalize(gallery).T
    ranked = np.argsort(-similarity, axis=1, kind="stable")[:, :max(ks)]
    return {k: float(np.mean([bool(set(row[:k]) & set(t)) for row, t in zip(ranked, targets)])) for k in ks}
