"""Every recipe loads, passes start-up validation, and its runlocal form is a toy."""

import importlib.util
import os

import pytest

from dit_jax.models.pretrained import abstract_model, count_parameters
from dit_jax.training.checks import validate

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RECIPES = ["tiny", "fashion_tiny", "small", "base", "large", "xl"]


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_shrinks(name):
    config = load(name)
    validate(config)  # 8 CPU devices in tests: every recipe's mesh fits
    small = load(name, "runlocal")
    validate(small)
    assert small.data.name == "emoji" and small.steps <= 200 and small.model.hidden_size <= 64
    assert config.data.name and config.text.encoder and config.data.resolution


def test_validation_reads_attention_specs():
    config = load("tiny")
    config.model.attention = "splash:local=64,strided=8"  # a backend with a sparse pattern
    validate(config)
    config.model.attention = "splash:window=64"
    with pytest.raises(ValueError, match="use local=W and/or strided=S"):
        validate(config)


def test_xl_recipe_is_the_reference_dit_xl2():
    config = load("xl")
    kwargs = dict(config.model.to_dict(), input_size=32, in_channels=4, num_classes=1000, text_dim=0)
    assert count_parameters(abstract_model(kwargs)) == 675_129_632
