"""Shared fixtures: tiny random models built in-process (CPU, fp32, seeded). Nothing is downloaded."""

import pytest
import torch

from space.cache import CompactCache
from space.decoding import batch, common
from space.testing import tiny_llama, tiny_text_tokenizer


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)  # same reduction order on every machine, and no oversubscription under xdist


@pytest.fixture
def tiny_model():
    return tiny_llama(seed=0)


def random_prompt(length: int, seed: int, low: int = 3, high: int = 80) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (1, length), generator=generator)


def capture_caches(monkeypatch) -> list:
    """Record every `CompactCache` a decoder creates (in its preamble, `Run.start`, or the batch loop's), to inspect
    it after decoding."""
    caches = []

    class Recording(CompactCache):
        @classmethod
        def for_model(cls, model, capacity, rows=1):
            cache = super().for_model(model, capacity, rows)
            caches.append(cache)
            return cache

    monkeypatch.setattr(common, "CompactCache", Recording)
    monkeypatch.setattr(batch, "CompactCache", Recording)
    return caches


@pytest.fixture
def no_model_loading(monkeypatch):
    """`space.load_model` fails the test: for checks that must run before any model is loaded."""
    import space

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(space, "load_model", refuse)


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory):
    """A saved tiny LLaMA with k=3 mask tokens and a text tokenizer: what the evaluation CLI tests load."""
    path = tmp_path_factory.mktemp("eval") / "model"
    tokenizer = tiny_text_tokenizer()
    tiny_llama(seed=2, vocab_size=len(tokenizer) + 1, mask_num=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
