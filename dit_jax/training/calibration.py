"""A noise-aware classifier's training metrics: accuracy by timestep bucket and expected calibration error.

The train step computes `batch_stats` under jit from the batch it trains on:
sums only, so micro-batches (gradient accumulation) add up exactly, and
`metrics` turns the totals into rates. Buckets split [0, T) into 4 equal
ranges of t (0-250, 250-500, ... for T = 1000). ECE (Guo et al. 2017) sorts
the predictions by confidence (the top softmax probability) into 15 equal
bins (lo, hi] of [0, 1] and averages |accuracy - confidence| over the bins,
each weighted by its share of the predictions.
"""

import jax
import jax.numpy as jnp

BUCKETS, BINS = 4, 15


def bucket_names(timesteps, buckets=BUCKETS):
    """"accuracy_t0-250", ... for T = 1000: the metric name of each bucket."""
    edges = [i * timesteps // buckets for i in range(buckets + 1)]
    return [f"accuracy_t{lo}-{hi}" for lo, hi in zip(edges, edges[1:])]


def batch_stats(logits, labels, t, timesteps, buckets=BUCKETS, bins=BINS):
    """Sums over a batch: per t bucket the count and correct predictions, per confidence bin the count,
    summed confidence and correct predictions, and the unsmoothed cross-entropy."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    confidence = probs.max(axis=-1)
    correct = (logits.argmax(axis=-1) == labels).astype(jnp.float32)
    bucket = jax.nn.one_hot(t * buckets // timesteps, buckets)  # (B, buckets)
    b = jnp.clip(jnp.ceil(confidence * bins).astype(jnp.int32) - 1, 0, bins - 1)  # bin (lo, hi] of each
    in_bin = jax.nn.one_hot(b, bins)  # (B, bins)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), labels[:, None], axis=-1)[:, 0]
    return dict(bucket_count=bucket.sum(0), bucket_correct=correct @ bucket, bin_count=in_bin.sum(0),
                bin_confidence=confidence @ in_bin, bin_correct=correct @ in_bin, nll=nll.sum())


def metrics(stats, timesteps):
    """accuracy, accuracy per t bucket (NaN for a bucket the batch did not draw: train leaves it out of the log),
    ece and nll from the sums."""
    total = stats["bin_count"].sum()
    out = dict(accuracy=stats["bin_correct"].sum() / total,
               ece=jnp.abs(stats["bin_correct"] - stats["bin_confidence"]).sum() / total,
               nll=stats["nll"] / total)
    rates = stats["bucket_correct"] / stats["bucket_count"]  # 0 / 0 = NaN where a bucket is empty
    for i, name in enumerate(bucket_names(timesteps, len(rates))):
        out[name] = rates[i]
    return out
