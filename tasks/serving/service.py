"""The trained checkpoint and its index, loaded once, answering batches of questions and texts to link.

Everything a user-facing command needs beyond the one-pass engine (`onegen_core.inference.generation`):
- prompts built as training built them (`SegmentTokenizer.prompt`, `question_prompt`), so serving a
  checkpoint reads exactly what it was trained and evaluated on;
- the stamp check: the index must have been encoded by this checkpoint, or nothing is served;
- per-row streaming through `StreamHooks`: each sampled token is decoded incrementally (a multi-byte
  character split over two tokens is held back until complete), each retrieval is reported with its
  hits (rank, score, title, unit text) before the passage is pasted;
- per-row limits inside one batch: `max_new_tokens` and `top_k` may differ between rows of a batch
  (the engine runs the largest; a row stops at its own budget, its hits are cut to its own k);
  sampling settings and the retrieval cap are per batch, so only requests that agree on them share one
  (`AskOptions.batch_key`);
- entity linking as the evaluation links (`onegen_core.evaluation.linking.link_windows`): the text is cut
  into windows of `evaluate.el_max_chars`, each copied under `CopyConstraint` in mode "link", each
  `[RQ]` after `</MENTION>` searching the `entities` table.

One JSON shape per task is built here and nowhere else: `onegen ask --json`, `POST /v1/ask`, the web page
and the SSE `done` event all carry `ask_result`'s object (likewise for link).
"""
from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from onegen_core.config import BackboneConfig, Params
from onegen_core.data.elevant import linked_article
from onegen_core.evaluation.linking import PredictedMention
from onegen_core.evaluation.multihop import final_answer
from onegen_core.inference.copy_constraint import CopyConstraint
from onegen_core.inference.generation import EngineStats, RetrievalEvent, RetrievalPolicy, StreamHooks, generate
from onegen_core.inference.index import Hit, IndexMismatchError
from onegen_core.inference.token_bytes import token_bytes
from onegen_core.method.control_tokens import control_tokens
from onegen_core.method.encoding import SegmentTokenizer
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.method.prompts import question_prompt
from onegen_core.method.tokens import SPECIAL_TOKENS
from onegen_core.prepare.labelling import text_windows
from tasks.adapters.index_contents import contents

log = logging.getLogger("onegen.serve")


class InvalidRequest(ValueError):
    """A request the service refuses; `param` names the field (the API's error `param`)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


# ------------------------------------------------------------------------------------------ options

@dataclass(frozen=True)
class AskOptions:
    """Per-request settings of a question (R→G). temperature 0 = greedy (the evaluated decoding)."""

    max_new_tokens: int
    max_retrievals: int
    top_k: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # strings that end the answer where the model writes one (OpenAI's `stop`): checked on the text the
    # model samples (pasted passages excluded), per row, so they are not part of the batch key
    stop: tuple[str, ...] = ()

    def batch_key(self) -> tuple:
        """Rows share a batch only when the engine treats them alike: one retrieval cap, one sampler.
        Greedy rows ignore temperature, top_p and seed, so every greedy request with the same cap fits."""
        if self.temperature == 0:
            return ("ask", self.max_retrievals, "greedy")
        return ("ask", self.max_retrievals, "sample", self.temperature, self.top_p, self.seed)


@dataclass(frozen=True)
class LinkOptions:
    """Per-request settings of entity linking (G→R): candidates per mention, [RQ] cap per window."""

    top_k: int
    max_retrievals: int

    def batch_key(self) -> tuple:
        return ("link", self.max_retrievals)


# ------------------------------------------------------------------------------------------ channels

class Channel(Protocol):
    """Where one request's streamed events go, and whether it should stop (client gone, deadline)."""

    def emit(self, event: dict) -> None: ...

    def stop_reason(self) -> str | None: ...


class QuietChannel:
    """No streaming, never stopped: a plain batch call (`onegen ask --json`, tests)."""

    def emit(self, event: dict) -> None:
        pass

    def stop_reason(self) -> str | None:
        return None


@dataclass
class CallbackChannel:
    """Events handed to a function as they happen (`onegen ask` printing to the terminal)."""

    on_event: Callable[[dict], None]

    def emit(self, event: dict) -> None:
        self.on_event(event)

    def stop_reason(self) -> str | None:
        return None


class IncrementalDecoder:
    """Text deltas of a growing token sequence. Decoding each token alone breaks characters whose bytes
    span two tokens and drops the spaces some tokenizers attach to the previous piece, so each step
    decodes a short tail with context (`prefix`) and emits what it adds once it no longer ends in an
    incomplete character (U+FFFD)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the context decoded with the new tokens
        self.read = 0  # tokens already turned into emitted text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=False)
        after = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=False)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


# ------------------------------------------------------------------------------------------ inputs

@dataclass
class AskInput:
    question: str
    options: AskOptions
    prompt_ids: list[int]


@dataclass
class LinkWindow:
    offset: int  # window start in the request's text (characters)
    text: str
    prompt_ids: list[int]
    max_new_tokens: int  # as `link_windows` budgets a window: copy twice over, four tokens per mention


@dataclass
class LinkInput:
    text: str
    options: LinkOptions
    windows: list[LinkWindow]


def hit_json(rank: int, h: Hit) -> dict:
    return {"rank": rank, "id": h.id, "doc_id": h.doc_id, "title": h.title, "text": h.text, "score": round(h.score, 6)}


def _new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


@dataclass
class _AskRow:
    item: AskInput
    channel: Channel
    decoder: IncrementalDecoder
    generated: int = 0
    retrievals: list[dict] = field(default_factory=list)
    stopped: str | None = None
    sampled: str = ""  # the text of the sampled tokens, as streamed (pasted passages excluded)
    stop_hit: str | None = None  # the `stop` string the sampled text reached


def load_model(checkpoint: str, dtype: str):
    """(model in eval mode, tokenizer, checkpoint id) of a saved checkpoint, with the OneGen tokens."""
    from pathlib import Path

    from onegen_core.method.backbone import checkpoint_id, load_pretrained

    if not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such directory (train one with `make run`, or pass "
                                f"--checkpoint)")
    if not (Path(checkpoint) / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint}: no config.json, so not a saved checkpoint (an empty or "
                                f"unfinished folder?); train one with `make run`, or pass --checkpoint")
    lm, tok, _ = load_pretrained(checkpoint, BackboneConfig(name=checkpoint, dtype=dtype))
    return lm.eval(), tok, checkpoint_id(checkpoint)


def open_index(uri: str, table: str, checkpoint: str, ck: str):
    """The LanceDB table, refused with both ids named when another checkpoint encoded it."""
    from pathlib import Path

    from tasks.adapters.lance_index import LanceIndex, table_names

    if "://" not in uri and not Path(uri).is_dir():  # connecting would create the folder: nothing is made here
        raise FileNotFoundError(f"index {uri}: no such directory (encode one with `dvc repro encode` or "
                                f"`onegen index add PATH --index {uri}`)")
    if table not in table_names(uri):
        raise FileNotFoundError(f"index {uri}: no table {table!r} (encode one with `dvc repro encode` or "
                                f"`onegen index add PATH --table {table}`)")
    index = LanceIndex(uri, table)
    if index.checkpoint_id != ck:
        raise IndexMismatchError(
            f"index {uri}/{table} was encoded by checkpoint {index.checkpoint_id}, but the checkpoint {checkpoint} "
            f"is {ck}: vectors of two checkpoints are not comparable; re-encode the index with this checkpoint "
            f"(`dvc repro encode`, or `onegen index add` into a new table) or serve the checkpoint that encoded it")
    return index


class ModelService:
    """One checkpoint, its passage table (`ask`) and its entity table (`link`, optional)."""

    def __init__(self, params: Params, checkpoint: str | None = None, index_uri: str | None = None,
                 units_table: str | None = None, kb_table: str | None = None) -> None:
        self.params = params
        self.checkpoint = checkpoint or params.evaluate.checkpoint
        self.index_uri = index_uri or params.encode.uri
        self.units_table = units_table or params.encode.table
        self.kb_table = kb_table or params.encode.kb_table
        self.dtype = resolve_inference_dtype(params.backbone.inference_dtype)
        t0 = time.perf_counter()
        self.model, self.tokenizer, self.checkpoint_id = load_model(self.checkpoint, self.dtype)
        self.units = open_index(self.index_uri, self.units_table, self.checkpoint, self.checkpoint_id)
        try:
            self.entities = open_index(self.index_uri, self.kb_table, self.checkpoint, self.checkpoint_id)
        except FileNotFoundError:
            self.entities = None  # `link` answers with the reason; `ask` works without a KB
        # requests are tokenised on the server's event loop while the engine thread generates: each side
        # gets its own tokenizer object (a fast tokenizer is one Rust object whose state calls may borrow)
        self.seg = SegmentTokenizer(copy.deepcopy(self.tokenizer))
        self.vocab_bytes = token_bytes(self.tokenizer)
        self.special_ids = {self.seg.ids[t] for t in SPECIAL_TOKENS} | {self.seg.ids.eos}
        # every string that would tokenise to a control token: OneGen's and the tokenizer's own
        self.control = control_tokens(self.tokenizer)
        self.lock = threading.Lock()  # one batch at a time on the model (the engine thread; the CLI)
        self._refreshed = 0.0  # when the tables last looked for a newer version (`refresh_tables`)
        self._problems: dict[tuple[str, int], str | None] = {}  # (table, version) → what is wrong, if anything
        self.nil_threshold, self.nil_source = nil_threshold(params.serve, self.checkpoint_id)
        self.load_seconds = time.perf_counter() - t0
        log.info("serving checkpoint %s (%s, %s) with %s/%s%s in %.1f s", self.checkpoint, self.checkpoint_id,
                 self.dtype, self.index_uri, self.units_table,
                 f" and {self.kb_table}" if self.entities is not None else " (no entity table: link disabled)",
                 self.load_seconds)

    # ---------------------------------------------------------------- defaults and validation

    def ask_options(self, max_new_tokens: int | None = None, max_retrievals: int | None = None,
                    top_k: int | None = None, temperature: float | None = None, top_p: float | None = None,
                    seed: int | None = None, stop: str | Sequence[str] | None = None) -> AskOptions:
        """A request's settings: what it gives, else what the checkpoint was evaluated with; limits from
        `serve` (errors name the request field)."""
        s, e = self.params.serve, self.params.evaluate
        opts = AskOptions(
            max_new_tokens=min(e.max_new_tokens, s.max_new_tokens) if max_new_tokens is None else max_new_tokens,
            max_retrievals=e.max_retrievals if max_retrievals is None else max_retrievals,
            top_k=s.top_k if top_k is None else top_k,
            temperature=0.0 if temperature is None else float(temperature),
            top_p=1.0 if top_p is None else float(top_p),
            seed=seed, stop=stop_strings(stop))
        _range("max_tokens", opts.max_new_tokens, 1, s.max_new_tokens, "serve.max_new_tokens")
        _range("max_retrievals", opts.max_retrievals, 0, 64, None)
        _range("top_k", opts.top_k, 1, s.max_top_k, "serve.max_top_k")
        if not 0.0 <= opts.temperature <= 10.0:
            raise InvalidRequest("temperature", f"temperature: {opts.temperature} is outside [0, 10] (0 = greedy)")
        if not 0.0 < opts.top_p <= 1.0:
            raise InvalidRequest("top_p", f"top_p: {opts.top_p} is outside (0, 1]")
        if opts.seed is not None:  # torch.Generator.manual_seed's range: past it the whole batch would fail
            _range("seed", opts.seed, -(2**63), 2**64 - 1, None)
        return opts

    def link_options(self, top_k: int | None = None, max_retrievals: int | None = None) -> LinkOptions:
        s, e = self.params.serve, self.params.evaluate
        opts = LinkOptions(top_k=s.top_k if top_k is None else top_k,
                           max_retrievals=e.el_max_retrievals if max_retrievals is None else max_retrievals)
        _range("top_k", opts.top_k, 1, s.max_top_k, "serve.max_top_k")
        _range("max_retrievals", opts.max_retrievals, 1, 256, None)
        return opts

    def check_text(self, value: str, param: str, limit: int | None) -> str:
        """Non-empty, within `limit` characters (the server's `serve.max_text_chars`; None on the command
        line), and free of special-token strings (tokenised, they would be the control tokens themselves
        and steer the model)."""
        if not isinstance(value, str) or not value.strip():
            raise InvalidRequest(param, f"{param}: must be a non-empty string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON may escape a lone surrogate (\ud800); no tokenizer takes it
            raise InvalidRequest(param, f"{param}: not valid Unicode text (a lone surrogate "
                                        f"{value[e.start]!r} at character {e.start})") from None
        if limit is not None and len(value) > limit:
            raise InvalidRequest(param, f"{param}: {len(value)} characters, more than the limit {limit} "
                                        f"(serve.max_text_chars)")
        for t in self.control:
            if t in value:
                whose = "special token" if t in SPECIAL_TOKENS else "tokenizer's control token"
                raise InvalidRequest(param, f"{param}: contains the {whose} {t!r}, which only the model writes")
        return value

    def ask_input(self, question: str, options: AskOptions, param: str = "question",
                  limit: int | None = -1) -> AskInput:
        """A question as the engine takes it; `limit` -1 = `serve.max_text_chars`, None = no limit."""
        limit = self.params.serve.max_text_chars if limit == -1 else limit
        q = " ".join(self.check_text(question, param, limit).split())
        ids = self.seg.prompt(question_prompt(q))
        self.check_context(len(ids), options.max_new_tokens, param)
        return AskInput(q, options, ids)

    def context_length(self) -> int | None:
        """The positions the model was built for (`max_position_embeddings`), if its config says."""
        lm = getattr(self.model, "lm", self.model)
        n = getattr(getattr(lm, "config", None), "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def check_context(self, prompt_tokens: int, max_new_tokens: int, param: str) -> None:
        """Refuse a prompt that, with the tokens it may generate, does not fit the model's positions: past
        them a model answers from positions it was never trained on (pasted passages need room too)."""
        n = self.context_length()
        if n is not None and prompt_tokens + max_new_tokens > n:
            raise InvalidRequest(param, f"{param}: {prompt_tokens} prompt tokens + max_tokens {max_new_tokens} "
                                        f"exceed the model's context of {n} positions; shorten it or lower max_tokens")

    def link_input(self, text: str, options: LinkOptions, param: str = "text", limit: int | None = -1) -> LinkInput:
        """A text cut into windows as the evaluation cuts articles (`evaluate.el_max_chars`)."""
        limit = self.params.serve.max_text_chars if limit == -1 else limit
        if self.entities is None:
            raise InvalidRequest(None, f"entity linking is unavailable: the index {self.index_uri} has no table "
                                       f"{self.kb_table!r} (encode.kb / `onegen index add --table {self.kb_table}`)")
        self.check_text(text, param, limit)
        windows = []
        for s, e in text_windows(text, [], self.params.evaluate.el_max_chars):
            w = text[s:e]
            if not w.strip():
                continue
            n_text = len(self.seg(w))
            windows.append(LinkWindow(s, w, self.seg.prompt(w + "\n"), 2 * n_text + 4 * options.max_retrievals + 8))
        return LinkInput(text, options, windows)

    # ---------------------------------------------------------------- R→G: questions

    def run_ask(self, items: Sequence[tuple[AskInput, Channel]]) -> list[dict]:
        """Answer every question of one batch (their options share `batch_key`). Returns one
        `ask_result` object per item, in order; streams events to each item's channel meanwhile."""
        if not items:
            return []
        keys = {it.options.batch_key() for it, _ in items}
        if len(keys) != 1:
            raise ValueError(f"one batch, one sampler and retrieval cap: got {sorted(map(str, keys))}")
        first = items[0][0].options
        rows = [_AskRow(it, ch, IncrementalDecoder(self.tokenizer)) for it, ch in items]
        seed = first.seed if first.seed is not None else secrets.randbits(31)
        policy = RetrievalPolicy(mode="rag", top_k=max(it.options.top_k for it, _ in items),
                                 max_retrievals=first.max_retrievals,
                                 max_new_tokens=max(it.options.max_new_tokens for it, _ in items),
                                 do_sample=first.temperature > 0, temperature=first.temperature or 1.0,
                                 top_p=first.top_p, seed=seed)

        def on_token(b: int, token_id: int) -> None:
            r = rows[b]
            r.generated += 1
            text = r.decoder.push(token_id)
            r.sampled += text
            r.channel.emit({"type": "token", "id": token_id, "text": text, "special": token_id in self.special_ids})

        def on_retrieval(b: int, ev: RetrievalEvent, hits: list[Hit]) -> None:
            r = rows[b]
            event = {"query": ev.query_id, "position": ev.position,
                     "hits": [hit_json(k + 1, h) for k, h in enumerate(hits[: r.item.options.top_k])]}
            r.retrievals.append(event)
            r.channel.emit({"type": "retrieval", **event})

        def should_stop(b: int) -> str | None:
            r = rows[b]
            # a stop string reached by the last token wins over the budget that token may also have used up
            r.stop_hit = r.stop_hit or next((s for s in r.item.options.stop if s in r.sampled), None)
            if r.stop_hit is not None:
                return "stop"
            if r.generated >= r.item.options.max_new_tokens:
                return "length"
            r.stopped = r.channel.stop_reason()
            return r.stopped

        stats = EngineStats()
        with self.lock:
            self.refresh_tables()
            results = generate(self.model, self.tokenizer, [it.prompt_ids for it, _ in items], self.units, policy,
                               checkpoint_id=self.checkpoint_id, stats=stats,
                               hooks=StreamHooks(on_token, on_retrieval, should_stop))
        batch = {"rows": len(items), "forward_passes": stats.forward_passes, "searches": stats.searches,
                 "seconds": round(stats.seconds, 4)}
        out = []
        for r, res in zip(rows, results):
            text, sampled, finish = res.text, r.sampled, res.finish_reason
            if r.stop_hit is None and finish not in ("timeout", "cancelled"):
                # the last token reached a stop string and ended the row otherwise (its budget, EOS, the cap)
                r.stop_hit = next((s for s in r.item.options.stop if s in sampled), None)
            if r.stop_hit is not None:
                # the answer ends before the stop string, which is not returned (as OpenAI and vLLM do). The
                # string was completed by the last sampled tokens: its last occurrence in the full text is
                # that one (a passage is pasted after it only when the string ends with `[RQ]`)
                finish = "stop"
                sampled = sampled[: sampled.find(r.stop_hit)]
                text = text[: max(text.rfind(r.stop_hit), 0)]
            out.append({
                "id": _new_id("ask"), "object": "ask", "created": int(time.time()), "model": self.checkpoint_id,
                "question": r.item.question,
                "answer": final_answer(text),
                "text": text,
                "sampled_text": sampled,
                "stop": r.stop_hit,
                "retrievals": r.retrievals,
                "finish_reason": finish,
                "counts": {"prompt_tokens": len(res.prompt_ids), "generated_tokens": r.generated,
                           "pasted_tokens": len(res.token_ids) - r.generated, "retrievals": len(r.retrievals)},
                "batch": dict(batch),
            })
        return out

    # ---------------------------------------------------------------- G→R: entity linking

    def run_link(self, items: Sequence[tuple[LinkInput, Channel]]) -> list[dict]:
        """Link every text of one batch: all their windows are rows of one constrained generation."""
        if not items:
            return []
        keys = {it.options.batch_key() for it, _ in items}
        if len(keys) != 1:
            raise ValueError(f"one batch, one retrieval cap: got {sorted(map(str, keys))}")
        rows = [(i, w) for i, (it, _) in enumerate(items) for w in it.windows]  # (item, window) per row
        per_item: list[dict[str, Any]] = [{"mentions": [], "finish": [], "generated": 0} for _ in items]
        stats = EngineStats()
        if rows:
            chooser = CopyConstraint(self.tokenizer, [w.text for _, w in rows], [len(w.prompt_ids) for _, w in rows],
                                     self.vocab_bytes)
            generated = [0] * len(rows)

            def mention(row: int, k: int, hits: list[Hit] | None) -> dict:
                i, w = rows[row]
                s, e = chooser.spans[row][k]
                top = hits[: items[i][0].options.top_k] if hits else []
                # NIL: the nearest entity is too far (serve.link_nil); its candidates are still shown
                abstained = bool(top) and self.nil_threshold is not None and top[0].score < self.nil_threshold
                ent = ({"id": top[0].id, "title": top[0].title, "score": round(top[0].score, 6)}
                       if top and not abstained else None)
                return {"start": w.offset + s, "end": w.offset + e, "text": w.text[s:e], "entity": ent,
                        "abstained": abstained,
                        "candidates": [{"id": h.id, "title": h.title, "score": round(h.score, 6)} for h in top]}

            def on_token(b: int, token_id: int) -> None:
                generated[b] += 1

            def on_retrieval(b: int, ev: RetrievalEvent, hits: list[Hit]) -> None:
                # the chooser has read `</MENTION>` (it forced this [RQ] after it): the span is complete
                m = mention(b, ev.query_id, hits)
                i = rows[b][0]
                per_item[i]["mentions"].append(m)
                items[i][1].emit({"type": "mention", **m})

            def should_stop(b: int) -> str | None:
                i, w = rows[b]
                if generated[b] >= w.max_new_tokens:
                    return "length"
                return items[i][1].stop_reason()

            policy = RetrievalPolicy(mode="link", top_k=max(it.options.top_k for it, _ in items),
                                     max_retrievals=items[0][0].options.max_retrievals,
                                     max_new_tokens=max(w.max_new_tokens for _, w in rows))
            with self.lock:
                self.refresh_tables()
                results = generate(self.model, self.tokenizer, [w.prompt_ids for _, w in rows], self.entities,
                                   policy, checkpoint_id=self.checkpoint_id, choose=chooser, stats=stats,
                                   hooks=StreamHooks(on_token, on_retrieval, should_stop))
            for b, res in enumerate(results):
                i = rows[b][0]
                # the chooser reads a row's tokens when it is next asked; a row that stopped right after
                # `</MENTION>` has one span it has not read yet (as `link_windows` does)
                chooser._advance(b, res.prompt_ids + res.token_ids)
                for k in range(len(res.retrievals), len(chooser.spans[b])):
                    m = mention(b, k, None)  # marked, but the retrieval cap or the budget came first
                    per_item[i]["mentions"].append(m)
                    items[i][1].emit({"type": "mention", **m})
                per_item[i]["finish"].append(res.finish_reason)
                per_item[i]["generated"] += generated[b]
        batch = {"rows": len(rows), "forward_passes": stats.forward_passes, "searches": stats.searches,
                 "seconds": round(stats.seconds, 4)}
        out = []
        for (it, _), acc in zip(items, per_item):
            mentions = sorted(acc["mentions"], key=lambda m: (m["start"], m["end"]))
            worst = next((f for f in acc["finish"] if f != "eos"), "eos")
            out.append({
                "id": _new_id("link"), "object": "link", "created": int(time.time()), "model": self.checkpoint_id,
                "text": it.text,
                "mentions": mentions,
                "finish_reason": worst,
                "counts": {"windows": len(it.windows), "mentions": len(mentions),
                           "linked": sum(m["entity"] is not None for m in mentions),
                           "abstained": sum(m["abstained"] for m in mentions),
                           "generated_tokens": acc["generated"]},
                "batch": dict(batch),
            })
        return out

    # ---------------------------------------------------------------- description

    REFRESH_S = 1.0  # how often a batch looks for a newer table version (a cheap check of the table's manifest)

    def refresh_tables(self, force: bool = False) -> None:
        """Serve the tables' latest committed versions: documents `onegen index add` wrote while the server
        runs are searched from the next batch on, without a restart. Called under `self.lock`, between
        batches, so a batch searches one version throughout; a Lance version is a complete commit, never a
        half-written one (an add of many documents commits batch by batch, and each is served as it lands)."""
        now = time.monotonic()
        if not force and now - self._refreshed < self.REFRESH_S:
            return
        self._refreshed = now
        for index in (self.units, self.entities):
            if index is not None and hasattr(index, "refresh"):
                index.refresh()

    def index_problems(self) -> dict[str, str]:
        """What is wrong with the served tables, by role ("units", "entities"), for `GET /v1/health`: unit ids
        stored more than once (a table two writers appended to), which every search refuses, or a table
        that can no longer be read. Checked once per table version; never raises."""
        cache = self._problems
        problems = {}
        for role, index in (("units", self.units), ("entities", self.entities)):
            if index is None:
                continue
            try:
                key = (index.table_name, index.table.version)
                if key not in cache:
                    dup = index.duplicate_ids()
                    cache[key] = (f"{index.uri}/{index.table_name}: {len(dup)} unit ids stored more than once "
                                  f"(e.g. {next(iter(dup))!r}); every search fails until `onegen index repair`"
                                  if dup else None)
                problem = cache[key]
            except Exception as e:  # noqa: BLE001 (a vanished or corrupt table: reported, not raised)
                problem = f"{index.uri}/{index.table_name}: unreadable ({type(e).__name__}: {e})"
            if problem:
                problems[role] = problem
        return problems

    def info(self) -> dict:
        """What `GET /v1/info` and `onegen index info` report: checkpoint, tables (the versions served),
        request defaults."""
        with self.lock:
            self.refresh_tables(force=True)
        lm = getattr(self.model, "lm", self.model)
        s, e = self.params.serve, self.params.evaluate
        return {
            "model": {"checkpoint": self.checkpoint, "checkpoint_id": self.checkpoint_id, "dtype": self.dtype,
                      "architecture": type(lm).__name__,
                      "parameters": sum(p.numel() for p in lm.parameters()), "vocab_size": len(self.tokenizer),
                      "chat_template": self.seg.chat is not None},
            "index": {"uri": self.index_uri, "units": contents(self.units),
                      "entities": contents(self.entities) if self.entities is not None else None},
            "defaults": {"ask": {"max_tokens": min(e.max_new_tokens, s.max_new_tokens),
                                 "max_retrievals": e.max_retrievals, "top_k": s.top_k, "temperature": 0.0},
                         "link": {"top_k": s.top_k, "max_retrievals": e.el_max_retrievals,
                                  "window_chars": e.el_max_chars, "nil_threshold": self.nil_threshold,
                                  "nil_threshold_source": self.nil_source}},
            "limits": {"max_text_chars": s.max_text_chars, "max_tokens": s.max_new_tokens, "max_top_k": s.max_top_k,
                       "max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms, "max_queue": s.max_queue,
                       "request_timeout_s": s.request_timeout_s},
        }


def nil_threshold(serve, checkpoint_id: str) -> tuple[float | None, str]:
    """(the score below which linking abstains, where it comes from) under `serve.link_nil`: auto reads
    the link_threshold stage's choice when it was made for this checkpoint; otherwise none, and why."""
    if serve.link_nil == "off":
        return None, "off (serve.link_nil)"
    if serve.link_nil == "fixed":
        return serve.link_min_score, "serve.link_min_score"
    from onegen_core.evaluation.nil_threshold import read_threshold

    threshold, why = read_threshold(serve.link_threshold_path, checkpoint_id)
    if threshold is None:
        log.info("entity linking never abstains: %s", why)
    return threshold, why


MAX_STOP = 4  # OpenAI's bound on `stop` strings
MAX_STOP_CHARS = 200


def stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """A request's `stop` (one string or a list, OpenAI's shape) as a tuple, range-checked: at most
    MAX_STOP non-empty strings of at most MAX_STOP_CHARS characters."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    if len(items) > MAX_STOP:
        raise InvalidRequest("stop", f"stop: {len(items)} strings, more than {MAX_STOP}")
    for k, s in enumerate(items):
        if not isinstance(s, str) or not s:
            raise InvalidRequest("stop", f"stop: string {k} must be non-empty, got {s!r}")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidRequest("stop", f"stop: string {k} has {len(s)} characters, more than {MAX_STOP_CHARS}")
    return tuple(dict.fromkeys(items))


def _range(param: str, value: int, lo: int, hi: int, setting: str | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(param, f"{param}: expected an integer, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        where = f" ({setting})" if setting else ""
        raise InvalidRequest(param, f"{param}: {value} is outside [{lo}, {hi}]{where}")


def elevant_article(result: dict, article_id: int | str = 0, recognized_by: str = "onegen") -> dict:
    """A `link` result as ELEVANT's linked-articles JSONL writes an article: built by the function that
    builds the evaluate stage's export (`onegen_core.data.elevant.linked_article`), so both have one
    shape (keys in ELEVANT's order, `entity_mentions` by span, an unlinked mention `<NIL>`, sorted
    `candidates` that include the linked id)."""
    mentions = [PredictedMention(m["start"], m["end"], m["entity"]["id"] if m["entity"] else None,
                                 candidates=[c["id"] for c in m["candidates"]]) for m in result["mentions"]]
    return linked_article({"id": article_id, "text": result["text"]}, mentions, recognized_by)
