"""`sample` and `evaluate` sample a run with its own sampler unless told: a flow run its recipe's flow sampler
(else heun), a DDPM run dpmpp_2m; weights directories by their sampling.json."""

import dataclasses
import json
import os

import pytest

from dit_jax import evaluate, sampling
from dit_jax.sample import Options, read_setup, with_model_sampler
from dit_jax.training.recipe import base_config


def fake_run(folder, objective, sampler):
    """A training workdir's small files only: run.json and the export's config.json and sampling.json."""
    config = base_config()
    config.diffusion.objective = objective
    config.sample.sampler = sampler
    os.makedirs(os.path.join(folder, "export"))
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump(dict(config=config.to_dict()), f)
    with open(os.path.join(folder, "export", "config.json"), "w") as f:
        json.dump(dict(input_size=8, patch_size=4, in_channels=3, text_dim=0, num_classes=0), f)
    sampling.write_sampling_record(os.path.join(folder, "export"), sampling.run_record(config))
    return str(folder)


@pytest.mark.parametrize("objective, recipe_sampler, expected", [
    ("flow", "euler", "euler"), ("flow", "euler_maruyama", "euler_maruyama"), ("flow", "dpmpp_2m", "heun"),
    ("ddpm", "ddim", "dpmpp_2m"), ("ddpm", "dpmpp_2m", "dpmpp_2m")])
def test_the_default_sampler_is_the_models(tmp_path, objective, recipe_sampler, expected):
    workdir = fake_run(tmp_path / "run", objective, recipe_sampler)
    options = Options(workdir=workdir, data_dir=str(tmp_path / "data"))
    setup = read_setup(options)
    assert setup.objective == objective and setup.sampler == expected
    assert with_model_sampler(options, setup).sampler == expected
    assert with_model_sampler(dataclasses.replace(options, sampler="ddim"), setup).sampler == "ddim"  # told
    by_export = read_setup(Options(checkpoint=os.path.join(workdir, "export")))  # its sampling.json
    assert by_export.sampler == expected


def test_a_flow_model_refuses_a_ddpm_sampler_and_old_records_default_to_heun(tmp_path):
    workdir = fake_run(tmp_path / "run", "flow", "heun")
    options = Options(workdir=workdir, data_dir=str(tmp_path / "data"), eta=0.5)
    with pytest.raises(ValueError, match="eta is DDIM's; the heun sampler does not take it"):
        with_model_sampler(options, read_setup(options))
    record = os.path.join(workdir, "export", sampling.SAMPLING_FILE)
    with open(record) as f:
        old = {k: v for k, v in json.load(f).items() if k != "sampler"}  # written before the sampler was
    with open(record, "w") as f:
        json.dump(old, f)
    assert read_setup(Options(checkpoint=os.path.join(workdir, "export"))).sampler == "heun"
    assert evaluate.parse_samplers(None) is None and evaluate.parse_samplers(["heun:4"]) == [("heun", 4)]
