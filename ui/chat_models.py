"""The chat models the page offers, loaded when first chosen, at most two at a time.

Each chat model gets its own Pipeline; all of them share the one embedder.
When a third model is chosen, the least recently used one is unloaded (its
Pipeline drops the generator; a question still being answered with it
keeps its own reference and finishes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

from rag.answer.pipeline import Pipeline
from rag.models import REGISTRY

# Roles shown in the model menu, in this order (see rag/models.py).
OFFERED_ROLES = ("default", "fast")


def offered_models(configured: str) -> list[tuple[str, str]]:
    """(role, model name) for the menu: the default and fast chat models, plus the configured one if different.

    >>> offered_models("smollm2-135m")
    [('configured', 'smollm2-135m'), ('default', 'qwen2.5-1.5b'), ('fast', 'qwen2.5-0.5b')]
    """
    offered = [(spec.role, spec.name) for role in OFFERED_ROLES for spec in REGISTRY.values()
               if spec.kind == "chat" and spec.role == role]  # fmt: skip
    if configured not in {name for _, name in offered}:
        offered.insert(0, ("configured", configured))
    return offered


class ChatModels:
    """name -> Pipeline for that chat model; `capacity` generators stay loaded at most."""

    def __init__(self, base: Pipeline, capacity: int = 2) -> None:
        self.base = base
        self.capacity = capacity
        self._pipelines: dict[str, Pipeline] = {base.settings.chat_model: base}
        self._recent: OrderedDict[str, None] = OrderedDict()  # loaded models, least recently used first
        if base.generator is not None:
            self._recent[base.settings.chat_model] = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        """Names of the models whose generator is in memory, least recently used first."""
        return [name for name in self._recent if self._pipelines[name].generator is not None]

    def is_loaded(self, name: str) -> bool:
        p = self._pipelines.get(name)
        return p is not None and p.generator is not None

    def pipeline(self, name: str | None) -> Pipeline:
        """The Pipeline answering with `name` (the configured model if None), its generator loaded."""
        name = name or self.base.settings.chat_model
        with self._lock:
            pipeline = self._pipelines.get(name)
            if pipeline is None:
                pipeline = Pipeline(replace(self.base.settings, chat_model=name), embedder=self.base.get_embedder())
                self._pipelines[name] = pipeline
            self._recent[name] = None
            self._recent.move_to_end(name)
            for old in list(self._recent)[: -self.capacity]:
                self._pipelines[old].generator = None
                self._pipelines[old].cached_generator = None  # its KV context holds the same model
                self._pipelines[old].block_lookup = None
                del self._recent[old]
            try:
                pipeline.get_generator()
            except Exception:
                del self._recent[name]
                raise
            return pipeline
