"""`prepare` in a multi-process job: each process writes its share of the shards, process 0 the manifest, and the
folder is the one a single process writes, file for file and byte for byte; a share killed half-way resumes."""

import os
import subprocess
import sys

import pytest

from dit_jax.data import prepare
from test_prepare import ROOT, tiny_config, write_image_folder

# image_folder's four entries (one unreadable, skipped and counted) in shards of one: four shards, so process 0
# writes 0 and 2 and process 1 writes 1 and 3.
SETTINGS = dict(name="image_folder", max_examples=0, shard_size=1)


class Killed(Exception):
    pass


def config_for(images):
    return tiny_config(source_dir=str(images), **SETTINGS)


def folder_bytes(folder):
    """{file: bytes} of a prepared folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multihost") / "images"
    write_image_folder(folder)
    return folder


@pytest.fixture(scope="module")
def two_processes(images):
    """launch/local.sh running `prepare` as 2 processes, started first so the one-process reference (next
    fixture) is prepared while they run."""
    data_dir = images.parent / "two"
    flags = [f"--config={ROOT}/configs/tiny.py:runlocal", f"--data_dir={data_dir}"]
    flags += [f"--config.data.{k}={v}" for k, v in dict(SETTINGS, source_dir=images).items()]
    process = subprocess.Popen(["bash", os.path.join(ROOT, "launch", "local.sh"), "2", "1", *flags], cwd=ROOT,
                               env=dict(os.environ, MODULE="dit_jax.prepare", PYTHON=sys.executable),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, data_dir


@pytest.fixture(scope="module")
def reference(images):
    return prepare.prepare(config_for(images), images.parent / "one")


def test_two_processes_write_what_one_does(two_processes, reference, images):
    process, data_dir = two_processes
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    with open(data_dir / "process_1.log") as f:
        assert "Process 1 of 2 prepares shards [1, 3] of 4." in f.read()
    assert "Process 0 of 2 prepares shards [0, 2] of 4." in output
    folder = prepare.prepared_dir(config_for(images), data_dir)
    assert os.path.basename(folder) == os.path.basename(reference["dir"])
    assert reference["examples"] == 3 and reference["skipped"] == 1 and len(reference["shards"]) == 4
    assert folder_bytes(folder) == folder_bytes(reference["dir"])  # the shards, their summaries and the manifest


def test_share_killed_then_resumed_by_one_process(reference, images, tmp_path, monkeypatch):
    """Process 1 of two writes its share and the job dies while it waits for process 0; a one-process run then
    writes only the rest, keeping the finished shards, and the result is the reference's."""
    def killed(name):
        raise Killed(name)
    monkeypatch.setattr(prepare.distributed, "barrier", killed)
    config = config_for(images)
    os.symlink(images.parent / "one" / "tfds", tmp_path / "tfds")  # the raw dataset, built once
    with pytest.raises(Killed, match="shards"):
        prepare.Preparer(config, tmp_path).run(1, 2)
    folder = prepare.prepared_dir(config, tmp_path)
    assert sorted(os.listdir(folder)) == [f"data.array_record-0000{i}-of-00004{ext}" for i in (1, 3)
                                          for ext in ("", ".json")]
    written = {name: os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder)}
    prepare.prepare(config, tmp_path)
    assert {name: os.path.getmtime(os.path.join(folder, name)) for name in written} == written
    assert folder_bytes(folder) == folder_bytes(reference["dir"])


def test_data_dir_not_shared_fails_in_one_line(images, reference, tmp_path, monkeypatch):
    """Process 0 of two whose partner wrote elsewhere (each process sees the same): the first missing shard is
    named, with what to do."""
    monkeypatch.setattr(prepare.distributed, "barrier", lambda name: None)
    os.symlink(images.parent / "one" / "tfds", tmp_path / "tfds")
    with pytest.raises(ValueError, match="-00001-of-00004.json is missing") as error:
        prepare.Preparer(config_for(images), tmp_path).run(0, 2)
    assert "--data_dir must be a folder every process sees" in str(error.value) and "\n" not in str(error.value)
