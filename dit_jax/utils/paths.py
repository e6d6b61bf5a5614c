"""Paths that may be remote URIs (gs://, s3://, or any fsspec scheme such as memory://), through etils.epath.

epath routes gs://, s3://, az:// and hf:// itself (to TensorFlow's gfile or fsspec); this module registers an
epath class for every other fsspec protocol, so `epath.Path("memory://run")` (the tests' non-local filesystem)
works in this code and in orbax alike. Where a library reads or writes only local files (ArrayRecord, grain,
TensorStore for schemes other than gs://), the data goes through a local mirror under the cache directory.
"""

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile

import fsspec
from etils import epath
from etils.epath import abstract_path, gpath
from etils.epath import backend as epath_backend

EPATH_SCHEMES = ("gs", "s3", "az", "hf")  # routed by epath itself
LOCAL_SCHEMES = ("file", "local")
# What to pip install for a scheme whose filesystem is missing (else fsspec's own message).
PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "az": "adlfs", "abfs": "adlfs",
            "hf": "huggingface_hub", "sftp": "paramiko", "hdfs": "pyarrow", "http": "aiohttp", "https": "aiohttp"}
CACHE = os.environ.get("DIT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dit_jax"))


def scheme(p):
    """'gs' for 'gs://b/x'; None for a local path."""
    text = os.fspath(p)
    return text.split("://", 1)[0] if "://" in text else None


def is_remote(p):
    return scheme(p) not in (None, *LOCAL_SCHEMES)


def path(p):
    """`p` as an epath.Path; a local one user-expanded."""
    return epath.Path(p) if is_remote(p) else epath.Path(os.path.expanduser(os.fspath(p)))


def join(base, *names):
    """`base/names...` as a string, for remote URIs and local paths alike."""
    return os.fspath(path(base).joinpath(*names))


def absolute(p):
    """A local path made absolute; a remote URI as it is."""
    return os.fspath(p) if is_remote(p) else os.path.abspath(os.path.expanduser(os.fspath(p)))


def check(p, what):
    """A one-line ValueError, before any work, when the filesystem of `p`'s scheme is not installed."""
    s = scheme(p)
    if s is None:
        return
    if s in LOCAL_SCHEMES:
        raise ValueError(f"{what}={p}: give a local path without {s}://.")
    if s == "gs" and importlib.util.find_spec("tensorflow") is not None:
        return  # epath then writes gs:// through TensorFlow's gfile
    try:
        fsspec.get_filesystem_class(s)
    except ValueError:
        raise ValueError(f"{what}={p}: no filesystem knows the scheme {s}://; use a local path, gs://, s3:// "
                         "or another fsspec scheme.") from None
    except ImportError as e:
        package = PACKAGES.get(s)
        hint = f"pip install {package}" if package else str(e).splitlines()[0]
        raise ValueError(f"{what}={p} is on {s}://, whose filesystem is not installed: {hint}.") from None


def write_bytes(p, data):
    """Written whole: a local file through a rename (a reader never sees half of it), a remote object in one put."""
    p = os.fspath(p)
    if is_remote(p):
        path(p).write_bytes(data)
    else:
        with open(p + ".tmp", "wb") as f:
            f.write(data)
        os.replace(p + ".tmp", p)


def read_json(p):
    return json.loads(path(p).read_text())


def write_json(p, value, **kwargs):
    write_bytes(p, json.dumps(value, **kwargs).encode())


def save_safetensors(arrays, p):
    from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
    write_bytes(p, save(arrays))


def load_safetensors(p):
    from safetensors.numpy import load, load_file  # pylint: disable=import-outside-toplevel
    return load(path(p).read_bytes()) if is_remote(p) else load_file(os.path.expanduser(os.fspath(p)))


def save_image(image, p):
    """A PIL image to a local or remote file (format from the suffix)."""
    if not is_remote(p):
        image.save(p)
        return
    buffer = io.BytesIO()
    image.save(buffer, format=path(p).suffix[1:].upper().replace("JPG", "JPEG"))
    path(p).write_bytes(buffer.getvalue())


def mirror(p):
    """The local directory that stands for remote directory `p` where a library reads local files only."""
    digest = hashlib.sha1(os.fspath(path(p)).encode()).hexdigest()[:12]
    return os.path.join(CACHE, "remote", f"{scheme(p)}_{digest}", path(p).name)


def local_dir(p):
    """`p` user-expanded when local, else its mirror: where caches go that libraries keep on local disk."""
    return mirror(p) if is_remote(p) else os.path.expanduser(os.fspath(p))


def download(src, dst, last=None):
    """Copies the files of directory `src` (remote) into local directory `dst`, the tree kept; `last` as in
    upload."""
    for root, _, files in path(src).walk():
        rel = os.fspath(root)[len(os.fspath(path(src))):].strip("/")
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for name in sorted(files, key=lambda n: not rel and n == last):
            with open(os.path.join(dst, rel, name), "wb") as f:
                f.write(root.joinpath(name).read_bytes())


def upload(src, dst, last=None):
    """Copies the files of local directory `src` into remote directory `dst`, the tree kept; the top-level file
    named `last` (a manifest) after all others, so a reader that finds it finds everything."""
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = path(dst) if rel == "." else path(dst).joinpath(*rel.split(os.sep))
        target.mkdir(parents=True, exist_ok=True)
        for name in sorted(files, key=lambda n: rel == "." and n == last):
            with open(os.path.join(root, name), "rb") as f:
                target.joinpath(name).write_bytes(f.read())


@contextlib.contextmanager
def local_copy(p):
    """A local path to remote file or directory `p` (copied into a temporary directory) while the block runs;
    a local `p` itself."""
    if not is_remote(p):
        yield os.path.expanduser(os.fspath(p))
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, path(p).name)
        if path(p).is_dir():
            download(p, local)
        else:
            with open(local, "wb") as f:
                f.write(path(p).read_bytes())
        yield local


# ------------------------------------------------------------------------------------------ fsspec schemes in epath

class _Backend(epath_backend._FileSystemSpecBackend):  # pylint: disable=protected-access
    """epath's fsspec backend for any protocol (epath's own maps only gs, s3, az and hf, the rest to local)."""

    def fs(self, p):
        return _filesystem(scheme(p))


@functools.lru_cache()
def _filesystem(name):
    return fsspec.filesystem(name)


class FsspecPath(gpath.PosixGPath):
    """An epath.Path on an fsspec filesystem: `scheme://rest` is held as the parts ('/', scheme, *rest)."""

    def __new__(cls, *parts):
        full = "/".join(os.fspath(p) for p in parts)
        s, rest = full.split("://", 1) if "://" in full else (None, full)
        if s is None:  # a child made from parts that already hold the scheme
            return abstract_path.Path.__new__(cls, full)
        return abstract_path.Path.__new__(cls, f"/{s}/{rest.lstrip('/')}")

    @property
    def _uri_scheme(self):
        return self.parts[1]

    @property
    def _backend(self):
        return _BACKEND

    @property
    def _path_str(self):
        return f"{self.parts[1]}://" + "/".join(self.parts[2:])

    def resolve(self, strict=False):
        return self

    def walk(self, *, top_down=True, on_error=None):
        for root, dirs, files in self._backend.walk(self._path_str, top_down=top_down, on_error=on_error):
            yield type(self)(f"{self.parts[1]}://{os.fspath(root).split('://')[-1].lstrip('/')}"), dirs, files

    def expanduser(self):
        return self


_BACKEND = _Backend()
_SCHEMES = sorted(set(fsspec.available_protocols()) - set(EPATH_SCHEMES) - set(LOCAL_SCHEMES))
epath.register_path_cls([f"{s}://" for s in _SCHEMES])(FsspecPath)


# ------------------------------------------------------------------------------------------ TensorBoard event files

class RewrittenFile:
    """A file that grows (metrics.jsonl, TensorBoard's event file) on a remote filesystem. Object stores do not
    append, so each flush rewrites the object with everything so far (as tensorboardX's own gs:// writer does)."""

    def __init__(self, p, binary=True):
        self.path, self.binary = path(p), binary
        self.data = bytearray(self.path.read_bytes() if self.path.exists() else b"")

    def write(self, data):
        self.data += data if self.binary else data.encode()

    def flush(self):
        self.path.write_bytes(bytes(self.data))

    def close(self):
        self.flush()


def append_file(p):
    """A text file opened for appending, locally or (RewrittenFile) remotely."""
    return RewrittenFile(p, binary=False) if is_remote(p) else open(p, "a")


class _EventFiles:
    def open(self, p):
        return RewrittenFile(p)

    def directory_check(self, p):
        path(p).mkdir(parents=True, exist_ok=True)


def summary_writer(logdir):
    """tensorboardX's SummaryWriter for a local or remote `logdir` (remote event files written through epath)."""
    # tensorboardX imports torch, if it can, only to accept torch tensors, which we never pass: 1.7 s of every
    # run's start-up. Hidden while it imports; torch stays importable afterwards.
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter, record_writer  # pylint: disable=import-outside-toplevel
    finally:
        if hidden:
            del sys.modules["torch"]
    if is_remote(logdir):
        record_writer.register_writer_factory(scheme(logdir), _EventFiles())
    return SummaryWriter(logdir)
