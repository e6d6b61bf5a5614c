"""The loader: seeded global shuffle, exact resume, disjoint process shares, augmentation."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from dit_jax.data import pipeline, records
from test_prepare import ROOT, tiny_config
from conftest import FAST_COMPILE_FLAG

N, BATCH = 64, 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    config = tiny_config(max_examples=N)
    data_dir = str(tmp_path_factory.mktemp("data"))
    return config, pipeline.ensure_prepared(config, data_dir), data_dir


def sharding():
    return NamedSharding(jax.make_mesh((len(jax.devices()),), ("data",)), P("data"))


def stored_images(manifest):
    """uint8 bytes of each stored image -> its record index (emoji images are all different)."""
    import grain
    paths = [os.path.join(manifest["dir"], s["file"]) for s in manifest["shards"]]
    rows = [records.decode(r) for r in grain.sources.ArrayRecordDataSource(paths)]
    return {r["image"].tobytes(): r["index"] for r in rows}


def as_indices(images, lookup):
    return [lookup[np.round((np.asarray(x) + 1) * 127.5).astype(np.uint8).tobytes()] for x in images]


def test_batches_and_exact_resume(prepared):
    config, manifest, _ = prepared
    loader = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=sharding())
    batch = next(loader)
    assert batch["image"].shape == (BATCH, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["text"].shape == (BATCH, 32, 384) and batch["text_mask"].dtype == bool
    assert batch["pooled"].shape == (BATCH, 384) and batch["label"].shape == (BATCH,)
    assert batch["image"].sharding == sharding() and -1 <= float(batch["image"].min()) < float(batch["image"].max()) <= 1
    for _ in range(2):
        next(loader)
    state = loader.get_state()
    expected = [next(loader) for _ in range(4)]
    resumed = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=sharding())
    resumed.set_state(state)
    for want, got in zip(expected, (next(resumed) for _ in range(4))):
        for key in want:
            np.testing.assert_array_equal(np.asarray(want[key]), np.asarray(got[key]))


def test_epochs_cover_the_data_and_reshuffle(prepared):
    config, manifest, _ = prepared
    lookup = stored_images(manifest)
    loader = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=sharding())
    epochs = [[i for _ in range(N // BATCH) for i in as_indices(next(loader)["image"], lookup)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(lookup.values())
    assert epochs[0] != epochs[1]
    other_seed = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=1, sharding=sharding())
    assert as_indices(next(other_seed)["image"], lookup) != epochs[0][:BATCH]


def test_process_shares_are_disjoint_and_cover(prepared):
    config, manifest, _ = prepared
    lookup = stored_images(manifest)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shares = []
    for p in range(2):
        loader = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=device,
                                      process_index=p, process_count=2)
        shares.append([i for _ in range(N // BATCH) for i in as_indices(next(loader)["image"], lookup)])
    assert len(shares[0]) == len(shares[1]) == N // 2
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == set(lookup.values())


WORKER = """
import sys, numpy as np, jax
jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2, process_id={pid})
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, "tests")
from dit_jax.data import prepare, pipeline
from test_prepare import tiny_config
config = tiny_config(max_examples={n})
manifest = pipeline.ensure_prepared(config, {data_dir!r})
sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P("data"))
loader = pipeline.make_loader(config, manifest, global_batch_size={batch}, seed=0, sharding=sharding)
local = []
for _ in range({n} // {batch}):
    image = next(loader)["image"]
    assert image.shape[0] == {batch}
    local += [np.asarray(s.data) for s in image.addressable_shards]
np.save({out!r}, np.concatenate(local))
"""


def test_two_processes_read_disjoint_shares(prepared, tmp_path):
    _, manifest, data_dir = prepared
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAG}")
    outs = [str(tmp_path / f"{pid}.npy") for pid in range(2)]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER.format(port=port, pid=pid, n=N, batch=BATCH,
                                                                     data_dir=data_dir, out=outs[pid])],
                                cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-2000:]
    lookup = stored_images(manifest)
    shares = [set(as_indices(np.load(out), lookup)) for out in outs]
    assert len(shares[0]) == len(shares[1]) == N // 2
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(lookup.values())


def test_augmentation_is_deterministic(prepared):
    config, manifest, _ = prepared
    config.data.update(flip=True, color_jitter=0.3, rotation=10.0)
    make = lambda: pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=sharding())
    a, b = next(make()), next(make())
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    config.data.update(flip=False, color_jitter=0.0, rotation=0.0)
    plain = next(make())
    images = np.asarray(a["image"])
    assert -1 <= images.min() and images.max() <= 1 and not np.allclose(images, np.asarray(plain["image"]))
    np.testing.assert_array_equal(np.asarray(a["text"]), np.asarray(plain["text"]))
