"""`prepare --runner`: an unknown runner fails in one line that lists the valid ones, before any work; Beam's
DirectRunner with two worker processes writes the folder an in-process prepare writes, byte for byte."""

import json
import os
import shutil
import types

import pytest
from absl import flags

from dit_jax import prepare as prepare_cli
from dit_jax.data import prepare
from test_prepare import tiny_config
from test_prepare_multihost import folder_bytes

TWO_WORKERS = "--direct_num_workers=2 --direct_running_mode=multi_processing"


def no_work(*args, **kwargs):
    raise AssertionError("work started before the runner was checked")


@pytest.mark.parametrize("runner", ["direct", "DirectRunnr", "PortableRunner"])
def test_unknown_runner_fails_in_one_line_before_any_work(runner, monkeypatch):
    monkeypatch.setattr(prepare_cli.distributed, "initialize", no_work)
    monkeypatch.setattr(prepare_cli.prepare, "prepare", no_work)
    monkeypatch.setattr(flags, "FLAGS", types.SimpleNamespace(runner=runner, config=None, data_dir="/nowhere"))
    with pytest.raises(SystemExit) as error:
        prepare_cli.main([])
    message = str(error.value.code)
    assert message.startswith(f"prepare: unknown --runner={runner!r}") and "\n" not in message
    assert all(name in message for name in ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner"))


def test_runner_without_beam_installed_says_how_in_one_line(monkeypatch):
    real = prepare_cli.importlib.util.find_spec
    monkeypatch.setattr(prepare_cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "apache_beam" else real(name, *a))
    with pytest.raises(SystemExit) as error:
        prepare_cli.check_runner("FlinkRunner")
    message = str(error.value.code)
    assert "pip install --no-deps apache-beam==2.77.0" in message and "\n" not in message
    prepare_cli.check_runner("")  # no runner: prepared in this process


def test_direct_runner_with_two_workers_writes_what_one_process_does(tmp_path, monkeypatch, capsys):
    """Seven emoji in shards of two (four shards over two worker processes); shard 0 was finished by an earlier
    run and is kept. The launcher builds nothing but the raw dataset: no Preparer (models) in this process."""
    from dit_jax.data import beam_prepare  # pylint: disable=import-outside-toplevel
    config = tiny_config(max_examples=7, shard_size=2)
    reference = prepare.prepare(config, tmp_path / "one")
    assert [s["count"] for s in reference["shards"]] == [2, 2, 2, 1]
    folder = prepare.prepared_dir(config, tmp_path / "beam")
    os.makedirs(folder)
    os.symlink(tmp_path / "one" / "tfds", tmp_path / "beam" / "tfds")  # the raw emoji dataset, built once
    first = "data.array_record-00000-of-00004"
    for name in (first, first + ".json"):
        shutil.copy2(os.path.join(reference["dir"], name), folder)
    finished_at = os.path.getmtime(os.path.join(folder, first))

    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # main() sets it; restored after the test
    monkeypatch.setattr(prepare_cli.distributed, "initialize", no_work)  # the launcher joins no JAX job
    monkeypatch.setattr(flags, "FLAGS", types.SimpleNamespace(
        runner="DirectRunner", beam_options=TWO_WORKERS, config=config, data_dir=str(tmp_path / "beam")))
    prepare_cli.main([])
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])  # the JSON summary main() prints last
    assert summary["dir"] == folder and summary["examples"] == 7
    assert not beam_prepare._PREPARERS  # pylint: disable=protected-access  # the shards were the workers' work
    assert os.path.getmtime(os.path.join(folder, first)) == finished_at
    assert folder_bytes(folder) == folder_bytes(reference["dir"])  # the shards, their summaries and the manifest
