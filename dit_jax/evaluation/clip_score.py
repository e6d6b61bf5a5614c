"""CLIP score: how well images match their prompts in a CLIP model's joint space.

100 x the cosine of the image and text embeddings, floored at 0, averaged (as
in Hessel et al. 2021 and torchmetrics). Needs a CLIP model with its vision
tower (a hub id or a local directory); no CLIP weights ship in any package.
"""

import numpy as np


def clip_score(images, captions, path, batch_size=64):
    """images: uint8 (N, H, W, C); captions: N strings. Returns (mean score, per-image scores)."""
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    try:
        model = transformers.CLIPModel.from_pretrained(path).eval()
        processor = transformers.CLIPProcessor.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"No CLIP model at {path!r} ({e.__class__.__name__}): pass a local directory with "
                                "config.json, weights and processor files, or a hub id when online.") from None
    scores = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pils = [Image.fromarray(x.squeeze(-1) if x.shape[-1] == 1 else x).convert("RGB")
                    for x in images[i:i + batch_size]]
            inputs = processor(text=list(captions[i:i + batch_size]), images=pils, return_tensors="pt",
                               padding=True, truncation=True)
            out = model(**inputs)
            cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
            scores.append(torch.clamp(100 * cosine, min=0).numpy())
    scores = np.concatenate(scores)
    return float(scores.mean()), scores
