"""Workdirs, data and outputs on a remote filesystem: fsspec's in-memory one (memory://), through etils.epath.

No os.path or open() can reach memory://: a path that slipped through would raise, or appear as a local
folder named `memory:` in the working directory, which the tests run in and check stays empty.
One in-process round trip: prepare into memory://data, train one step into memory://run (a checkpoint,
metrics.jsonl, TensorBoard, run.json, a sample grid, the export), then sampling from the remote export,
evaluate's results and a local copy as convert reads a remote --src; checkpoints kept, replaced and restored on memory://; and the
one-line error for a scheme whose filesystem is not installed.
"""

import io
import json
import os

import numpy as np
import pytest
from etils import epath
from PIL import Image

from dit_jax.data import fashion_mnist, prepare
from dit_jax.training.recipe import base_config
from dit_jax.utils import paths
from test_data import write_idx_slice

pytestmark = pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR),
                                reason="apt-get install dataset-fashion-mnist")

RUN, DATA = "memory://remote-paths/run", "memory://remote-paths/data"


def tiny_config(idx):
    config = base_config()
    config.data.update(name="fashion_mnist", source_dir=str(idx), resolution=16)
    config.text.update(max_length=8)
    config.model.update(patch_size=8, hidden_size=32, depth=1, num_heads=2)
    config.sample.update(prompts=["a shirt", "a boot"], steps=2, every=1)
    config.update(steps=1, batch_size=8)
    config.log.every, config.checkpoint.every = 1, 1
    return config


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory):
    """A one-step run with workdir and data_dir on memory://, from an empty local working directory."""
    from dit_jax import train
    root = tmp_path_factory.mktemp("remote")
    write_idx_slice(root / "idx", n_train=8, n_test=4)
    cwd, empty = os.getcwd(), root / "cwd"
    empty.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "CACHE", str(root / "cache"))  # the local mirror of what only reads local files
        os.chdir(empty)
        try:
            config = tiny_config(root / "idx")
            state = train.train(config, RUN, DATA)
        finally:
            os.chdir(cwd)
    yield config, state, empty, root
    epath.Path("memory://remote-paths").rmtree(missing_ok=True)


def remote(*parts):
    return epath.Path(RUN).joinpath(*parts)


def test_training_writes_everything_to_the_remote_workdir(remote_run):
    config, state, cwd, root = remote_run
    assert os.listdir(cwd) == []  # nothing went to a local folder named after the URI
    assert isinstance(remote(), paths.FsspecPath)
    assert json.loads(remote("run.json").read_text())["config"]["steps"] == 1
    (line,) = [json.loads(line) for line in remote("metrics.jsonl").read_text().splitlines()]
    assert line["step"] == 1 and np.isfinite(line["loss"])
    (events,) = remote("tensorboard").iterdir()
    assert events.name.startswith("events.out.tfevents.") and len(events.read_bytes()) > 1000  # scalars + grid
    grid = Image.open(io.BytesIO(remote("samples", "step_00000001.png").read_bytes()))
    assert grid.size[0] > 0
    assert [p.name for p in remote("checkpoints").iterdir()] == ["1"]
    assert {p.name for p in remote("export").iterdir()} >= {"config.json", "model.safetensors", "sampling.json"}
    assert int(state["step"]) == 1
    shards = epath.Path(prepare.prepared_dir(config, DATA))
    manifest = json.loads((shards / prepare.MANIFEST).read_text())
    assert manifest["examples"] == 8 and all((shards / s["file"]).exists() for s in manifest["shards"])


def test_remote_export_loads_and_samples_and_evaluation_results_write(remote_run, monkeypatch):
    from dit_jax import sample, sampling
    from dit_jax.evaluate import write_results
    from dit_jax.models.pretrained import load_pretrained
    _, _, cwd, root = remote_run
    monkeypatch.setattr(paths, "CACHE", str(root / "cache"))
    monkeypatch.chdir(cwd)
    model, model_config = load_pretrained(RUN + "/export")
    assert model_config["hidden_size"] == 32
    setup = sampling.read_setup(RUN, data_dir=DATA)
    assert setup.export == RUN + "/export" and setup.model_config["hidden_size"] == 32
    assert setup.text["max_length"] == 8  # from the manifest on memory://
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1), np.uint8)
    out = sampling.Samples(images, ["a shirt", "a boot"], None, None)
    options = sample.Options(workdir=RUN, out=RUN + "/sampled/grid.png", npz=RUN + "/sampled/all.npz")
    sample.write_outputs(options, out, sampling.Settings())
    assert {p.name for p in remote("sampled").iterdir()} == {"grid.png", "grid_0000.png", "grid_0001.png",
                                                             "all.npz"}
    with np.load(io.BytesIO(remote("sampled", "all.npz").read_bytes())) as saved:
        np.testing.assert_array_equal(saved["arr_0"], images)
    write_results(RUN + "/eval", [dict(sampler="ddim", steps=2, fid_16=3.5)], 2)
    assert json.loads(remote("eval", "metrics.json").read_text())[0]["fid_16"] == 3.5
    assert any(p.name.startswith("events") for p in remote("eval", "tensorboard").iterdir())
    with paths.local_copy(RUN + "/export") as local:  # what convert reads a remote --src through
        assert json.load(open(os.path.join(local, "config.json")))["hidden_size"] == 32
    assert not os.path.exists(local)
    from dit_jax import serve
    serve.check_run(RUN)  # the demo serves a remote run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serve.check_run("memory://remote-paths/missing")
    assert os.listdir(cwd) == []


def test_checkpoints_are_kept_replaced_and_restored_on_memory(tmp_path, monkeypatch):
    import jax.numpy as jnp
    from ml_collections import ConfigDict
    from dit_jax.training.checkpoint import Checkpointer
    monkeypatch.setattr(paths, "CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    workdir, cfg = "memory://remote-paths/ckpt", ConfigDict(dict(every=1, keep=2, keep_every=0))
    state = {"w": jnp.arange(3.0)}
    checkpoints = Checkpointer(workdir, cfg)
    for step in (1, 2, 3):
        checkpoints.save(step, {"w": state["w"] * step}, {"epoch": step})
    checkpoints.close()
    steps = epath.Path(workdir, "checkpoints")
    assert sorted(p.name for p in steps.iterdir()) == ["2", "3"]  # keep=2: step 1 removed remotely too
    restored = Checkpointer(workdir, cfg)  # a fresh mirror, copied down from memory://
    step, got, data = restored.restore({"w": jnp.zeros(3)})
    restored.close()
    assert step == 3 and data == {"epoch": 3}
    np.testing.assert_array_equal(got["w"], np.arange(3.0) * 3)
    assert sorted(os.listdir(tmp_path)) == ["cache"]
    epath.Path(workdir).rmtree()


@pytest.mark.parametrize("uri", ["gs://bucket/run", "s3://bucket/run"])
def test_a_scheme_without_its_filesystem_fails_in_one_line_before_any_work(uri, monkeypatch):
    from dit_jax import train
    real = paths.fsspec.get_filesystem_class

    def missing(protocol):  # as on a machine without gcsfs / s3fs (and without TensorFlow)
        if protocol in ("gs", "s3"):
            raise ImportError(f"Install {paths.PACKAGES[protocol]} to access {protocol}")
        return real(protocol)
    monkeypatch.setattr(paths.fsspec, "get_filesystem_class", missing)
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(train, "validate", lambda config: None)
    monkeypatch.setattr(train, "check_trackers", lambda cfg: None)
    with pytest.raises(ValueError) as error:
        train.train(base_config(), uri, "/tmp/unused")
    assert str(error.value) == (f"--workdir={uri} is on {uri[:2]}://, whose filesystem is not installed: "
                                f"pip install {paths.PACKAGES[uri[:2]]}.")
