"""REPA's projector width by recipe (issue 14): the paper's 2048 for DiT-B and up, 256 for DiT-S, DiT-T and the
toys, an explicit repa.projector_dim kept, and that width is the one the train step's Alignment builds."""

import importlib.util
import os

import pytest

from dit_jax.data import repa as repa_data
from dit_jax.training import checks
from dit_jax.training.repa import alignment

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name, arg, width", [
    ("tiny", None, 256), ("fashion_tiny", None, 256), ("fashion_scenes", None, 256), ("small", None, 256),
    ("base", None, 2048), ("large", None, 2048), ("xl", None, 2048),
    ("xl", "runlocal", 256), ("small", "variant=DiT-B/4", 2048),
])
def test_the_projector_scales_with_the_model(name, arg, width):
    config = load(name, arg)
    config.repa.weight = 0.5
    assert config.repa.projector_dim == 0  # the recipes leave it to the model's width
    assert repa_data.projector_dim(config) == width


def test_an_explicit_width_is_kept_and_reaches_the_alignment():
    config = load("tiny")
    config.repa.weight = 0.5
    kwargs = {**config.model.to_dict(), "input_size": config.data.resolution}
    assert alignment(config, kwargs).projector_dim == 256  # inception features: prepared, so nothing loads
    config.repa.projector_dim = 512
    assert alignment(config, kwargs).projector_dim == 512


def test_a_negative_width_fails_in_one_line():
    config = load("tiny")
    config.repa.update(weight=0.5, projector_dim=-1)
    with pytest.raises(ValueError, match=r"repa.projector_dim must be 0 \(by the model's width\) or more"):
        checks.validate(config)
