"""The bottom layer, importing nothing else of dit_jax: accelerator peaks, pictures, profiles, weight paths."""
