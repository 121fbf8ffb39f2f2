"""Shared fixtures: the tiny random Llama (fast, built in code) and SmolLM2 (real, offline)."""

from __future__ import annotations

import os
from dataclasses import dataclass
import socket

import pytest
import torch

# Nothing in the test suite may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

import workbench as wb  # noqa: E402
from workbench.methods import Method  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> wb.Model:
    return wb.load_model("tiny-random")


@pytest.fixture
def tiny_ids(tiny):
    return tiny.encode("the cat sat on the mat in the city of paris")


# Hooks the libraries install for themselves, once, the first time certain paths run
# (TransformerLens' residual capture, transformers' output capturing): not ours to remove.
_LIBRARY_HOOKS = ("_maybe_wire_capture_hooks", "output_capuring_hook", "output_capturing_hook")


def all_hook_handles(model: wb.Model) -> int:
    """How many hooks (TransformerLens or raw torch) are attached anywhere in the model,
    apart from the libraries' own permanent ones."""
    n = 0
    for mod in model.bridge.modules():
        hooks = [*mod._forward_hooks.values(), *mod._forward_pre_hooks.values(),
                 *getattr(mod, "_backward_hooks", {}).values()]
        n += sum(1 for fn in hooks if not any(k in getattr(fn, "__qualname__", "") for k in _LIBRARY_HOOKS))
    return n


class _NoNetwork:
    def __enter__(self):
        self._orig = socket.socket.connect

        def refuse(sock, *a, **k):
            raise OSError("network access attempted during an offline test")

        socket.socket.connect = refuse
        return self

    def __exit__(self, *exc):
        socket.socket.connect = self._orig


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory):
    """A fresh, empty weight cache, so the first load really dequantizes the GGUF."""
    return tmp_path_factory.mktemp("workbench-cache")


@pytest.fixture(scope="session")
def smol(smol_cache) -> wb.Model:
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_CACHE", str(smol_cache))
    try:
        with _NoNetwork():
            model = wb.load_model("smollm2-135m", device="cpu", progress=False)
    finally:
        mp.undo()
    return model


@pytest.fixture
def no_network():
    with _NoNetwork():
        yield


@dataclass
class GoldPrefixMethod(Method):
    """A synthetic method whose score is known (no model work): it writes the first ``copy``
    share of the gold's words. Tests register subclasses with a ``name`` of their own."""

    copy: float = 0.0

    def prompt(self, model, example):
        words = example.gold.split()
        return " ".join(words[: round(self.copy * len(words))]) or "zzz", {}

    def decoder(self):
        class Echo:
            info: dict = {}

            def decode(self, model, prompt, max_new_tokens):
                return prompt

        return Echo()
