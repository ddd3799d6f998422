"""SPACE decoding as a transformers `custom_generate` method: `model.generate(..., custom_generate=<the folder
above this one>, trust_remote_code=True)`. The code lives in the installed `space` package
(`space.decoding.generation.generate`), where it is tested; this file only names it, as the convention asks."""

from space.decoding.generation import generate

__all__ = ["generate"]
