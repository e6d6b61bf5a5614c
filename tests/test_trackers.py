"""log.wandb and log.mlflow: the same scalars, sample grids and config as TensorBoard, read back offline.

One MetricWriter with all three on writes two steps and a grid; each tracker's own files are read back:
TensorBoard's event file, the offline W&B run's .wandb log (its records through wandb's protobuf schema),
and the MLflow file store through MlflowClient.
"""

import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from dit_jax.training import writers

pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install -e .[wandb]")
pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e .[mlflow]")

CONFIG = {"model": {"depth": 2, "hidden_size": 32}, "steps": 3, "sample": {"prompts": ["a red apple", "a rocket"]},
          "optim": {"lr": 1e-4}}
SCALARS = {1: {"loss": 0.5, "lr": 0.125}, 2: {"loss": 0.25, "lr": 0.25}}
GRID = np.random.default_rng(0).integers(0, 256, (12, 20, 3), np.uint8)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run's reports to all three trackers: W&B offline under the workdir, MLflow in its default file store."""
    path = tmp_path_factory.mktemp("trackers") / "run"
    path.mkdir()
    saved = dict(os.environ)
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(path), WANDB_SILENT="true")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        writer = writers.MetricWriter(str(path), ConfigDict(dict(tensorboard=True, wandb=True, mlflow=True)), CONFIG)
        for step, values in SCALARS.items():
            writer.scalars(step, values)
        writer.image(2, "samples", Image.fromarray(GRID))
        writer.close()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return str(path)


def framed(data, offset, block=None):
    """The payloads of a record log: TFRecord framing (block None) or LevelDB's log blocks (W&B's .wandb)."""
    out, chunk = [], b""
    while offset < len(data):
        if block is None:
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            out.append(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            continue
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        chunk += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL, LAST
            out.append(chunk)
            chunk = b""
    return out


def tensorboard(workdir):
    """{step: {name: value}}, {step: image}, config of the event file."""
    from tensorboardX.proto import event_pb2
    scalars, images, config = {}, {}, None
    (path,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    for payload in framed(open(path, "rb").read(), 0):
        event = event_pb2.Event.FromString(payload)
        for v in event.summary.value:
            if v.HasField("image"):
                images[event.step] = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
            elif v.tag.startswith("config"):
                config = json.loads(v.tensor.string_val[0].decode().replace("\n    ", "\n"))
            else:
                scalars.setdefault(event.step, {})[v.tag] = v.simple_value
    return scalars, images, config


def weights_and_biases(workdir):
    """{step: {name: value}}, {step: image}, config of the offline run's .wandb record log."""
    from wandb.proto import wandb_internal_pb2
    (path,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    scalars, images, config = {}, {}, None
    for payload in framed(data, 7, block=32768):
        record = wandb_internal_pb2.Record.FromString(payload)
        if record.HasField("run"):
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update if u.key != "_wandb"}
        if record.HasField("history"):
            items = {tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in record.history.item}
            step = record.history.step.num
            for key, value in items.items():
                if len(key) == 1 and not key[0].startswith("_"):
                    scalars.setdefault(step, {})[key[0]] = value
                if key[1:] == ("path",):
                    images[step] = np.asarray(Image.open(os.path.join(os.path.dirname(path), "files", value)))
    return scalars, images, config


def mlflow_store(workdir):
    """{step: {name: value}}, {step: image}, config of the run in the MLflow store, through MlflowClient."""
    from mlflow import MlflowClient
    client = MlflowClient("file://" + os.path.join(workdir, "mlruns"))
    run_id = open(os.path.join(workdir, writers.MLFLOW_RUN_FILE)).read().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    scalars, images = {}, {}
    for name in run.data.metrics:
        for m in client.get_metric_history(run_id, name):
            scalars.setdefault(m.step, {})[name] = m.value
    for f in client.list_artifacts(run_id, "images"):
        name = os.path.basename(f.path)
        if name.startswith("samples+step+") and name.endswith(".png") and "compressed" not in name:
            images[int(name.split("+")[2])] = np.asarray(Image.open(client.download_artifacts(run_id, f.path)))
    config = json.loads(open(client.download_artifacts(run_id, "config.json")).read())
    assert run.data.params == {k: str(v) for k, v in writers.flat_config(CONFIG).items()}
    return scalars, images, config


def test_wandb_and_mlflow_hold_what_tensorboard_holds(workdir):
    logged = tensorboard(workdir)
    assert logged[0] == SCALARS and logged[2] == CONFIG
    np.testing.assert_array_equal(logged[1][2], GRID)
    for read in (weights_and_biases, mlflow_store):
        scalars, images, config = read(workdir)
        assert scalars == SCALARS, read.__name__
        assert sorted(images) == [2], read.__name__
        np.testing.assert_array_equal(images[2], GRID)
        assert config == CONFIG, read.__name__


def test_a_missing_tracker_names_its_extra(monkeypatch):
    real = writers.importlib.util.find_spec
    monkeypatch.setattr(writers.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(ValueError, match=r"log.mlflow is on but mlflow is not installed: pip install -e \.\[mlflow\]"):
        writers.check_trackers(ConfigDict(dict(tensorboard=True, wandb=False, mlflow=True)))
    writers.check_trackers(ConfigDict(dict(tensorboard=True, wandb=True, mlflow=False)))


def test_a_resumed_run_continues_its_mlflow_run(workdir, tmp_path, monkeypatch):
    import shutil
    from mlflow import MlflowClient
    copy = str(shutil.copytree(workdir, tmp_path / "run"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    writer = writers.MetricWriter(copy, ConfigDict(dict(tensorboard=False, wandb=False, mlflow=True)),
                                  dict(CONFIG, steps=4))  # a run extended on resume
    writer.scalars(3, {"loss": 0.125, "lr": 0.5})
    writer.close()
    client = MlflowClient("file://" + os.path.join(copy, "mlruns"))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == open(os.path.join(copy, writers.MLFLOW_RUN_FILE)).read().strip()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert run.data.params["steps"] == "3" and run.info.status == "FINISHED"  # MLflow keeps a param's first value
    assert json.loads(open(client.download_artifacts(run.info.run_id, "config.json")).read())["steps"] == 4


def test_tensorboard_writer_starts_without_importing_torch(tmp_path):
    """tensorboardX would import torch (seconds of every run's start-up); the writer hides it, and only then."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    code = ("import sys; from dit_jax.utils import paths; paths.summary_writer(sys.argv[1]).close(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; import torch; print(torch.tensor(2) * 3)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tb")], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    assert out.strip() == "tensor(6)" and glob.glob(str(tmp_path / "tb" / "events.out.tfevents*"))
