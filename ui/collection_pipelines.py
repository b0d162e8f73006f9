"""One Pipeline per collection, made when first chosen; the chat models and the embedder are shared.

The page's own Pipeline serves the collection it started with (settings.collection). Any
other collection gets a Pipeline of its own (its index loaded once, on first use) that
borrows the embedder of the first and, for each answer, the generator of the chosen chat
model from ChatModels, so a collection never loads a model a second time. Answers run one at
a time (the page's "chat" queue), so handing a Pipeline a generator before each answer is safe.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from rag.answer.pipeline import Pipeline
from rag.collections import collection_names, for_collection
from rag.config import Settings
from ui.chat_models import ChatModels


class CollectionPipelines:
    """collection name -> its Pipeline; `base` are the settings as loaded (see rag/collections.py)."""

    def __init__(self, base: Settings, models: ChatModels) -> None:
        self.base = base
        self.models = models
        self.home = base.collection  # the collection models.base already serves
        self._pipelines: dict[str, Pipeline] = {self.home: models.base}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The collections to offer; the page's own one even when it is not on disk any more."""
        names = collection_names(self.base)
        return names if self.home in names else [self.home, *names]

    def settings(self, name: str | None) -> Settings:
        """The settings of collection `name` (the page's own when None): its corpus and index folders."""
        return self.for_index(name).settings

    def for_index(self, name: str | None) -> Pipeline:
        """The collection's Pipeline for index work (status, rebuild, uploads): no chat model loaded."""
        name = name or self.home
        with self._lock:
            pipeline = self._pipelines.get(name)
            if pipeline is None:
                # The passage KV store is built in the background for the page's own collection only.
                settings = replace(for_collection(self.base, name), kv_cache=False)
                pipeline = Pipeline(settings, embedder=self.models.base.get_embedder())
                self._pipelines[name] = pipeline
            return pipeline

    def for_answer(self, name: str | None, model: str | None) -> Pipeline:
        """The Pipeline that answers in collection `name` with chat model `model`, its generator loaded."""
        name = name or self.home
        answering = self.models.pipeline(model)
        if name == self.home:
            return answering
        pipeline = self.for_index(name)
        pipeline.generator = answering.generator  # borrowed: ChatModels decides what stays loaded
        return pipeline
