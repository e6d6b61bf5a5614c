"""`prepare --runner`: an unknown runner fails in one line that lists the valid ones, before any work."""

import types

import pytest
from absl import flags

from dit_jax import prepare as prepare_cli


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


def test_known_runner_says_beam_is_missing_in_one_line():
    with pytest.raises(SystemExit) as error:
        prepare_cli.check_runner("DirectRunner")
    message = str(error.value.code)
    assert "Apache Beam" in message and "leave --runner out" in message and "\n" not in message
    prepare_cli.check_runner("")  # no runner: prepared in this process
