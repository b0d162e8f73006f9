"""Prompt -> streamed tokens from an OpenAI-compatible HTTP server: llama.cpp's `llama-server`,
llama-cpp-python's `python -m llama_cpp.server`, vLLM. The same Generator as LlamaGenerator.

The answer streams from POST /v1/chat/completions as server-sent events; setting the pipeline's
stop event closes the connection, which tells the server to stop writing.

Counting tokens for the prompt budget, without the model in this process, asks the server's own
tokenizer when it has one (llama-cpp-python: POST /extras/tokenize/count; llama.cpp: POST /tokenize),
and otherwise estimates on the high side (`estimate_tokens`), so a prompt never outgrows the budget.

English answers ban the tokens that write Chinese (see rag/llm/generation.py) by `logit_bias`, which
needs the served model's token ids: they are read from the local copy of that model's vocabulary
when the served model's name is a registry model installed here. Otherwise the ban is skipped and
`english_note` says so.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from json import JSONDecodeError, loads
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ModelError
from rag.llm.generation import Usage

if TYPE_CHECKING:
    from rag.config import Settings

# Ideographs, CJK and full-width punctuation (as generation._CHINESE): about one token each or more.
_ONE_TOKEN_EACH = re.compile("[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef0-9]")
BAN = -100.0  # OpenAI's strongest logit bias ("ban"); llama.cpp's servers accept it too
_log = logging.getLogger(__name__)
_MAX_COUNTS = 4096  # remembered token counts (prompt building asks for the same texts again)


def estimate_tokens(text: str) -> int:
    """An estimate that errs high, for a server with no tokenizer: one token for each Chinese character
    or digit (tokenizers give each its own token or less), one per 3 other characters (~4 in English).

    Example: estimate_tokens("训练成本 cost 557.6") -> 4 + 4 + ceil(7 / 3) = 11
    """
    each = len(_ONE_TOKEN_EACH.findall(text))
    return each + math.ceil((len(text) - each) / 3)


class ServerGenerator:
    """Implements rag.llm.generation.Generator over HTTP. Thread-safe: the server queues requests."""

    def __init__(
        self,
        url: str,
        model: str = "",
        api_key: str = "",
        temperature: float = 0.0,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 60.0,
        vocabulary: str = "",
        models_dir: Path | None = None,
    ) -> None:
        """`model` "" = the server's first model. `vocabulary`: the registry model whose token ids
        the server uses ("" = the served model's name, when that is a registry name)."""
        import httpx

        # OpenAI clients take the URL with /v1; this takes either.
        self.url = re.sub(r"/v1/?$", "", url.rstrip("/"))
        self.temperature = temperature
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env=False: the URL is used as given. A proxy from the environment (HTTP_PROXY) would
        # carry the prompts, passages of the user's documents, off to another machine.
        self._client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            trust_env=False,
        )
        self._usage = Usage()
        self._counts: dict[str, int] = {}
        self._probe_lock = threading.Lock()
        self.tokenizer = ""  # which counts tokens: "llama-cpp-python", "llama.cpp" or "estimate" (after the first)
        self.name = model or self._first_model()
        self.banned: list[int] = []
        self.english_note = self._load_ban(vocabulary or self.name, models_dir)
        if self.english_note:
            _log.warning(self.english_note)

    @property
    def usage(self) -> Usage:
        return self._usage

    # ------------------------------------------------------------ talking to the server

    def _fail(self, exc: Exception, what: str) -> ModelError:
        """The message for a person when `what` (e.g. "the chat request") failed with an httpx error."""
        import httpx

        server = f"The LLM server at {self.url}"
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return ModelError(
                f"Cannot connect to the LLM server at {self.url} ({what}): {exc or exc.__class__.__name__}.",
                "Start the server (e.g. python -m llama_cpp.server --model MODEL.gguf --port 8080), or fix llm_url "
                '(RAG_LLM_URL); llm_url = "" answers with the local llama.cpp model.',
            )
        if isinstance(exc, httpx.TimeoutException):
            return ModelError(
                f"{server} sent nothing for {self.timeout_s:g} s ({what}).",
                "Check that it is running and not overloaded; if its answers are only slow, raise llm_timeout_s.",
            )
        if isinstance(exc, httpx.HTTPStatusError):
            code = exc.response.status_code
            if code in (401, 403):
                return ModelError(
                    f"{server} refused {what} (HTTP {code}).",
                    "Set llm_api_key (RAG_LLM_API_KEY) to the key the server expects.",
                )
            return ModelError(
                f"{server} answered {what} with HTTP {code}: {exc.response.text[:300]}",
                f"llm_url must be the server's base URL (http://host:port) and llm_model ('{getattr(self, 'name', '')}') "
                "a model it serves; its log says more.",
            )
        return ModelError(
            f"The connection to the LLM server at {self.url} broke ({what}): {exc}.",
            "Check the server's log and try again.",
        )

    def _post(self, path: str, body: dict[str, Any], what: str) -> Any:
        """POST `body` as JSON; the decoded reply. httpx errors become ModelError."""
        import httpx

        try:
            response = self._client.post(path, json=body)
            response.raise_for_status()
            return response.json()
        except httpx.HTTPError as exc:
            raise self._fail(exc, what) from exc

    def _first_model(self) -> str:
        """The id of the first model the server lists (a llama.cpp server serves one)."""
        import httpx

        try:
            response = self._client.get("/v1/models")
            response.raise_for_status()
            models = response.json().get("data") or []
        except httpx.HTTPError as exc:
            raise self._fail(exc, "listing its models") from exc
        except (JSONDecodeError, AttributeError) as exc:
            raise ModelError(f"{self.url}/v1/models is not an OpenAI-compatible model list.", "Check llm_url.") from exc
        if not models:
            raise ModelError(
                f"The LLM server at {self.url} lists no model.", "Start it with a model, or set llm_model."
            )
        return str(models[0]["id"])

    def _load_ban(self, vocabulary: str, models_dir: Path | None) -> str:
        """Fill `banned` with the vocabulary's Chinese token ids; a note when the ban is not possible."""
        from rag.models import get_spec, is_installed, locate

        try:
            spec = get_spec(vocabulary)
        except Exception:  # noqa: BLE001 - not a registry name: the server's own model
            spec = None
        if spec is None or models_dir is None or spec.kind != "chat" or not is_installed(spec, models_dir):
            return (
                f"English answers may use Chinese tokens: '{vocabulary}' is not a chat model installed here, "
                "so its token ids for logit_bias are unknown (set llm_model to its registry name to ban them)."
            )
        from llama_cpp import Llama

        from rag.llm.generation import chinese_tokens

        vocab = Llama(model_path=str(locate(spec.name, models_dir)), vocab_only=True, verbose=False)
        self.banned = [int(i) for i in chinese_tokens(vocab)]
        return ""

    # ------------------------------------------------------------ Generator

    def count_tokens(self, text: str) -> int:
        if text not in self._counts:
            if len(self._counts) >= _MAX_COUNTS:
                self._counts.clear()
            self._counts[text] = self._count(text)
        return self._counts[text]

    def _count(self, text: str) -> int:
        """Ask the server's tokenizer; the first call finds which endpoint it has (or none)."""
        with self._probe_lock:
            if not self.tokenizer:
                self.tokenizer = self._find_tokenizer()
        if self.tokenizer == "llama-cpp-python":
            return int(
                self._post("/extras/tokenize/count", {"model": self.name, "input": text}, "counting tokens")["count"]
            )
        if self.tokenizer == "llama.cpp":
            return len(self._post("/tokenize", {"content": text}, "counting tokens")["tokens"])
        return estimate_tokens(text)

    def _find_tokenizer(self) -> str:
        import httpx

        probes = (("llama-cpp-python", "/extras/tokenize/count", {"model": self.name, "input": "a"}, "count"),
                  ("llama.cpp", "/tokenize", {"content": "a"}, "tokens"))  # fmt: skip
        for kind, path, body, key in probes:
            try:
                response = self._client.post(path, json=body)
                if response.status_code == 200 and key in response.json():
                    return kind
            except (JSONDecodeError, AttributeError, TypeError):
                continue
            except httpx.HTTPError as exc:
                raise self._fail(exc, "counting tokens") from exc
        return "estimate"

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None,
        english: bool = False,
    ) -> Iterator[str]:  # fmt: skip
        """Yield text pieces as the server writes them; stops early (closing the stream) when `stop` is set.
        `english`: no token that writes Chinese is chosen, when the vocabulary is known (see `english_note`)."""
        import httpx

        body = self._request(messages, max_tokens, english)
        usage, reported = Usage(), None
        try:
            with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.is_error:
                    response.read()
                    response.raise_for_status()
                for delta, chunk_usage in self._events(response.iter_lines()):
                    if stop is not None and stop.is_set():
                        break
                    reported = chunk_usage or reported
                    if delta:
                        usage.completion_tokens += 1
                        yield delta
            usage.prompt_tokens = sum(self.count_tokens(m["content"]) for m in messages)
            if reported:
                usage.prompt_tokens = int(reported.get("prompt_tokens") or usage.prompt_tokens)
                usage.completion_tokens = int(reported.get("completion_tokens") or usage.completion_tokens)
        except httpx.HTTPError as exc:
            raise self._fail(exc, "the chat request") from exc
        finally:
            self._usage = usage

    def _request(self, messages: list[dict[str, str]], max_tokens: int, english: bool) -> dict[str, Any]:
        """The body of a streamed chat completion, sampled as LlamaGenerator samples."""
        body: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},  # the token counts, from servers that send them
        }
        with self._probe_lock:
            if not self.tokenizer:
                self.tokenizer = self._find_tokenizer()
        if self.tokenizer == "llama-cpp-python":
            # Its server penalises repeats by default (1.1); llama_cpp.Llama, which answers in process, does
            # not (1.0). The same sampling gives the same answer, token for token, at temperature 0.
            body["repeat_penalty"] = 1.0
        if english and self.banned:
            body["logit_bias"] = {str(i): BAN for i in self.banned}
        return body

    def _events(self, lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(text piece, usage or None) for each event of the stream, until [DONE].

        A server that keeps the stream open with keep-alive comments (": ping") but writes no
        text for `timeout_s` is given up on, like one that sends nothing.
        """
        last = time.monotonic()
        for line in lines:
            if time.monotonic() - last > self.timeout_s:
                raise ModelError(
                    f"The LLM server at {self.url} wrote no answer for {self.timeout_s:g} s.",
                    "Check that it is not stuck or overloaded; if its answers are only slow, raise llm_timeout_s.",
                )
            if not line.startswith("data:"):
                continue  # comments, event names, blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = loads(data)
            except JSONDecodeError as exc:
                raise ModelError(f"The LLM server at {self.url} sent a malformed event: {data[:200]!r}.",
                                 "Is llm_url an OpenAI-compatible server?") from exc  # fmt: skip
            if "error" in chunk:
                raise ModelError(f"The LLM server at {self.url} failed mid-answer: {chunk['error']}.",
                                 "See the server's log.")  # fmt: skip
            choices = chunk.get("choices") or [{}]
            delta = (choices[0].get("delta") or {}).get("content") or ""
            last = time.monotonic()
            yield delta, chunk.get("usage")

    def close(self) -> None:
        self._client.close()


def from_settings(settings: Settings) -> ServerGenerator:
    """The server generator that `settings` (with llm_url set) describe."""
    s = settings
    return ServerGenerator(
        s.llm_url, s.llm_model, s.llm_api_key, s.temperature, s.llm_connect_timeout_s, s.llm_timeout_s,
        models_dir=s.models_dir,
    )  # fmt: skip
