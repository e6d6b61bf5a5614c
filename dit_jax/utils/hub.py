"""Where pretrained weights come from: a local directory, or a Hugging Face hub id."""

import os
import re

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "org/name" or "name"


def weights_source(path, what, howto):
    """`path` as a local directory (user-expanded) when it is one, else as a hub id; a one-line ValueError
    naming `what` and saying `howto` when it is neither."""
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return local
    if not HUB_ID.fullmatch(path):
        raise ValueError(f"{what} path {path!r} does not exist; {howto}.")
    return path
