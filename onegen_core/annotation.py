"""LLM decomposition of multi-hop questions into retrieval steps (OneGen App. G.1, Fig. 13).

Each HotpotQA/2Wiki training question is shown to an instruction LLM together with its answer and its
related (supporting) documents; the LLM writes the sub-questions, the document each one needs, the
sub-answers and the final answer. Those steps become the hops of a training example
(:class:`onegen_core.reconstruct.multihop.Hop`, via :func:`to_hops`).

Why this module is strict and resumable:
- A wrong document reference would silently teach the model to retrieve the wrong passage, so
  :func:`parse_decomposition` rejects, with a countable reason, anything it cannot resolve against the
  record itself.
- Annotating ~100k questions with a 72B model costs hours and money, so every result is appended to an
  fsync'ed JSONL cache keyed by (example id, prompt hash) the moment it completes: a killed run loses
  at most its in-flight requests and a re-run pays for nothing twice.

Standard library only; the network and the model live behind the :class:`Backend` protocol (concrete
backends are in ``tasks/annotators.py``). :func:`heuristic_decomposition` is the no-LLM default.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Protocol, runtime_checkable

from onegen_core.data.multihop import MultiHopRecord, Paragraph

if TYPE_CHECKING:  # the reconstruction module imports torch: only needed by to_hops, imported there
    from onegen_core.reconstruct.multihop import Hop

__all__ = [
    "DECOMPOSITION_PROMPT",
    "REJECTION_REASONS",
    "AnnotationCache",
    "AnnotationRejected",
    "AnnotationReport",
    "AnnotationResult",
    "Backend",
    "BackendError",
    "CacheKey",
    "Decomposition",
    "Step",
    "annotate",
    "build_prompt",
    "cache_key",
    "heuristic_decomposition",
    "parse_decomposition",
    "prompt_documents",
    "prompt_hash",
    "to_hops",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- prompt

# Written from the paper's description of its Fig. 13 prompt (inputs: question, answer, related
# documents; outputs: sub-questions, the document each needs, sub-answers, final answer); the exact
# wording of the figure was not available. Tags make the answer machine-checkable; documents are
# numbered so that a reference is unambiguous even when titles are long or similar.
DECOMPOSITION_PROMPT = """\
You are given a multi-hop question, its correct answer, and the documents needed to answer it.
Decompose the question into the sequence of simpler sub-questions that a reader would answer one \
after another to reach the answer. Each sub-question must be answerable from exactly one of the \
documents below; name that document by its number, and give the sub-question's answer as found in \
that document. Later sub-questions may use the answers of earlier ones. Finish with the final answer \
to the original question.

Question: {question}
Answer: {answer}

Documents:
{documents}

Reply in exactly this format, with one <step> block per sub-question, in the order they are answered, \
and nothing else:
<step>
<sub-question>the sub-question</sub-question>
<document>[number of the document it needs]</document>
<sub-answer>its answer</sub-answer>
</step>
<final-answer>the final answer</final-answer>"""


def prompt_documents(record: MultiHopRecord) -> tuple[Paragraph, ...]:
    """The related documents shown to the LLM, in the order they are numbered ([1], [2], ...).

    They are the supporting paragraphs, in supporting-facts order: every step must land on a
    paragraph with gold sentences, or the hop it becomes has no positive to learn from. The parser
    calls this too, so prompt numbering and reference resolution cannot drift apart.
    """
    return tuple(record.paragraph(title) for title in record.supporting_titles())


def build_prompt(record: MultiHopRecord) -> str:
    """The decomposition prompt for one record (documents numbered and titled)."""
    documents = "\n".join(
        f"[{number}] {paragraph.title}: {paragraph.text().strip()}"
        for number, paragraph in enumerate(prompt_documents(record), start=1)
    )
    return DECOMPOSITION_PROMPT.format(question=record.question.strip(), answer=record.answer.strip(),
                                       documents=documents)


def prompt_hash(prompt: str, model_name: str) -> str:
    """A short, stable digest of what was asked and of whom: a changed template, record or model
    gives a new cache key, so stale answers are never reused."""
    digest = hashlib.sha256(f"{model_name}\x00{prompt}".encode("utf-8")).hexdigest()
    return digest[:20]


# --------------------------------------------------------------------------- decomposition


@dataclass(frozen=True)
class Step:
    """One retrieval step: the document it needs and, when an LLM wrote it, its question and answer."""

    sub_question: str | None
    doc_title: str
    sub_answer: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"sub_question": self.sub_question, "doc_title": self.doc_title, "sub_answer": self.sub_answer}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "step") -> Step:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming the field for anything malformed."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
        return cls(
            sub_question=_optional_text(raw, "sub_question", where),
            doc_title=_required_text(raw, "doc_title", where),
            sub_answer=_optional_text(raw, "sub_answer", where),
        )


@dataclass(frozen=True)
class Decomposition:
    """A question's steps in answering order, and the final answer."""

    example_id: str
    steps: tuple[Step, ...]
    final_answer: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "example_id": self.example_id,
            "steps": [step.to_dict() for step in self.steps],
            "final_answer": self.final_answer,
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "decomposition") -> Decomposition:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming the field for anything malformed."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
        steps = raw.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ValueError(f"{where}: field 'steps' must be a non-empty array")
        return cls(
            example_id=_required_text(raw, "example_id", where),
            steps=tuple(Step.from_dict(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)),
            final_answer=_required_text(raw, "final_answer", where),
        )


def _required_text(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _optional_text(raw: dict, key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string or null, got {type(value).__name__}")
    return value


def heuristic_decomposition(record: MultiHopRecord) -> Decomposition:
    """The embedded default, no LLM: one implicit step (no sub-question, no sub-answer) per supporting
    paragraph in supporting-facts order, and the dataset's answer as final answer."""
    steps = tuple(Step(sub_question=None, doc_title=title, sub_answer=None) for title in record.supporting_titles())
    return Decomposition(example_id=record.id, steps=steps, final_answer=record.answer)


def to_hops(decomposition: Decomposition, record: MultiHopRecord) -> list[Hop]:
    """The reconstruction hops of a decomposition: each step's positives are the supporting
    sentences of its document. (Imports the torch-based reconstruction module only when called.)"""
    from onegen_core.reconstruct.multihop import Hop

    hops = []
    for step in decomposition.steps:
        sentences = tuple(sorted({f.sentence for f in record.supporting_facts if f.title == step.doc_title}))
        hops.append(Hop(title=step.doc_title, positive_sentences=sentences,
                        sub_question=step.sub_question, sub_answer=step.sub_answer))
    return hops


# --------------------------------------------------------------------------- parsing

REJECTION_REASONS: tuple[str, ...] = (
    "malformed_tags",  # unbalanced <step>…</step>, or a tag repeated inside one step
    "no_steps",  # no <step> block at all
    "empty_step",  # a <step> block with nothing in it
    "missing_sub_question",
    "missing_document",  # a sub-question without a document
    "missing_sub_answer",
    "unknown_document",  # a reference that resolves to no paragraph of the record's context
    "distractor_document",  # a context paragraph that is not one of the related (supporting) documents
    "missing_final_answer",
)


class AnnotationRejected(ValueError):
    """An LLM answer that cannot be used; ``reason`` is one of :data:`REJECTION_REASONS` (counted),
    ``detail`` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        return (type(self), (self.reason, self.detail))


_FLAGS = re.IGNORECASE | re.DOTALL
_STEP_OPEN = re.compile(r"<step>", re.IGNORECASE)
_STEP_CLOSE = re.compile(r"</step>", re.IGNORECASE)
_STEP = re.compile(r"<step>(.*?)</step>", _FLAGS)
_FINAL = re.compile(r"<final-answer>(.*?)</final-answer>", _FLAGS)
_NUMBERED = re.compile(r"^(?:doc(?:ument)?\s*)?\[?\s*(\d+)\s*\]?\s*[:.\-–]?\s*(.*)$", _FLAGS)


def _tag(block: str, name: str, step_no: int) -> str | None:
    """The stripped content of the one ``<name>`` tag in a step block; None if absent or blank."""
    found = re.findall(rf"<{name}>(.*?)</{name}>", block, _FLAGS)
    if len(found) > 1:
        raise AnnotationRejected("malformed_tags", f"step {step_no} has {len(found)} <{name}> tags")
    value = found[0].strip() if found else ""
    return value or None


def _resolve_document(reference: str, record: MultiHopRecord, step_no: int) -> str:
    """The title a step's ``<document>`` refers to: ``[n]``, ``[n] Title`` or an exact title."""
    related = prompt_documents(record)
    titles = [p.title for p in related]
    cleaned = reference.strip().strip("\"'")
    for title in titles:  # an exact title wins (titles such as "1984" look like numbers)
        if cleaned.casefold() == title.casefold():
            return title
    if any(p.title.casefold() == cleaned.casefold() for p in record.context):
        raise AnnotationRejected("distractor_document", f"step {step_no} uses {cleaned!r}, not a related document")
    numbered = _NUMBERED.match(cleaned)
    if numbered:
        number, named = int(numbered.group(1)), numbered.group(2).strip().strip("\"'")
        if not 1 <= number <= len(related):
            raise AnnotationRejected("unknown_document",
                                     f"step {step_no} refers to document [{number}], there are {len(related)}")
        title = titles[number - 1]
        if named and named.casefold() != title.casefold():
            raise AnnotationRejected("unknown_document",
                                     f"step {step_no}: document [{number}] is {title!r}, not {named!r}")
        return title
    raise AnnotationRejected("unknown_document", f"step {step_no} refers to {reference!r}, not in the context")


def _parse_step(block: str, record: MultiHopRecord, step_no: int) -> Step:
    if not block.strip():
        raise AnnotationRejected("empty_step", f"step {step_no} is empty")
    sub_question = _tag(block, "sub-question", step_no)
    reference = _tag(block, "document", step_no)
    sub_answer = _tag(block, "sub-answer", step_no)
    if sub_question is None:
        raise AnnotationRejected("missing_sub_question", f"step {step_no} has no <sub-question>")
    if reference is None:
        raise AnnotationRejected("missing_document", f"step {step_no} ({sub_question!r}) has no <document>")
    if sub_answer is None:
        raise AnnotationRejected("missing_sub_answer", f"step {step_no} has no <sub-answer>")
    return Step(sub_question=sub_question, doc_title=_resolve_document(reference, record, step_no),
                sub_answer=sub_answer)


def parse_decomposition(text: str, record: MultiHopRecord) -> Decomposition:
    """Parse an LLM answer written in the :data:`DECOMPOSITION_PROMPT` format, strictly.

    Text outside the tags (a preamble, a code fence) is ignored; everything inside must be complete
    and every document reference must resolve to one of the record's related documents. Raises
    :class:`AnnotationRejected` otherwise.
    """
    opened, closed = len(_STEP_OPEN.findall(text)), len(_STEP_CLOSE.findall(text))
    if opened != closed:
        raise AnnotationRejected("malformed_tags", f"{opened} <step> but {closed} </step>")
    blocks = _STEP.findall(text)
    if not blocks:
        raise AnnotationRejected("no_steps", "no <step> block")
    steps = tuple(_parse_step(block, record, k) for k, block in enumerate(blocks, start=1))
    finals = _FINAL.findall(text)
    if len(finals) > 1:
        raise AnnotationRejected("malformed_tags", f"{len(finals)} <final-answer> tags")
    if not finals or not finals[0].strip():
        raise AnnotationRejected("missing_final_answer", "no <final-answer>")
    return Decomposition(example_id=record.id, steps=steps, final_answer=finals[0].strip())


# --------------------------------------------------------------------------- backend protocol


@runtime_checkable
class Backend(Protocol):
    """Something that completes a prompt. ``name`` and ``model`` enter the cache key (see
    :func:`cache_key`), so answers from different models are never mixed. It may set
    ``max_concurrency`` (default 1): how many prompts :func:`annotate` may have in flight at once."""

    name: str
    model: str

    def complete(self, prompt: str) -> str: ...


class BackendError(RuntimeError):
    """A backend gave up on a prompt (timeouts, HTTP errors, after its own retries). :func:`annotate`
    records it per example and does not cache it, so the next run tries again. Messages must never
    contain credentials."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


CacheKey = tuple[str, str]  # (example id, prompt hash)


def cache_key(record: MultiHopRecord, backend: Backend) -> CacheKey:
    """(example id, hash of this record's prompt and of the backend's name and model)."""
    return record.id, prompt_hash(build_prompt(record), f"{backend.name}/{backend.model}")


# --------------------------------------------------------------------------- cache

Status = Literal["accepted", "rejected"]


@dataclass(frozen=True)
class AnnotationResult:
    """The final outcome for one key: an accepted decomposition, or a rejection with its reason.
    ``response`` is the last raw LLM answer, kept so rejections can be audited without paying again."""

    example_id: str
    status: Status
    attempts: int
    decomposition: Decomposition | None = None
    reason: str | None = None
    detail: str = ""
    response: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("accepted", "rejected"):
            raise ValueError(f"status must be 'accepted' or 'rejected', got {self.status!r}")
        if (self.status == "accepted") != (self.decomposition is not None):
            raise ValueError("an accepted result needs a decomposition, a rejected one has none")
        if self.status == "rejected" and not self.reason:
            raise ValueError("a rejected result needs a reason")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"example_id": self.example_id, "status": self.status, "attempts": self.attempts}
        if self.decomposition is not None:
            out["decomposition"] = self.decomposition.to_dict()
        if self.reason is not None:
            out["reason"] = self.reason
            out["detail"] = self.detail
        out["response"] = self.response
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> AnnotationResult:
        if not isinstance(raw, dict):
            raise ValueError(f"expected an object, got {type(raw).__name__}")
        decomposition = raw.get("decomposition")
        return cls(
            example_id=_required_text(raw, "example_id", "result"),
            status=raw.get("status"),
            attempts=int(raw.get("attempts", 0)),
            decomposition=None if decomposition is None else Decomposition.from_dict(decomposition),
            reason=raw.get("reason"),
            detail=raw.get("detail", ""),
            response=raw.get("response", ""),
        )


class AnnotationCache:
    """Append-only JSONL of final results, one line ``{"key": [id, hash], "result": {...}}`` each.

    Each :meth:`put` writes one line, flushes and fsyncs before returning, so a result the caller saw
    stored survives a crash or SIGKILL. On open, a truncated last line (a crash mid-write) is counted
    in ``truncated_lines`` and cut off so the next append starts on a clean line; a malformed line
    elsewhere is corruption and raises. A key seen twice on load keeps its first result
    (``duplicate_lines``); :meth:`put` refuses a key already present.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.truncated_lines = 0
        self.duplicate_lines = 0
        self._entries: dict[CacheKey, AnnotationResult] = {}
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    # -- loading

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # After a clean write the file ends with "\n", so the last split item is b"".
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            is_last = number == len(lines)
            try:
                key, result = self._decode(line)
            except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                if not is_last:
                    raise ValueError(f"{self.path}: line {number}: malformed cache entry: {exc}") from None
                self._cut_truncated_tail(len(data) - len(line), number)
                return
            if is_last:  # complete JSON whose newline was lost: keep it, end the line
                with open(self.path, "ab") as f:
                    f.write(b"\n")
            self._keep(key, result, number)
        logger.info("annotation cache %s: %d results loaded", self.path, len(self._entries))

    @staticmethod
    def _decode(line: bytes) -> tuple[CacheKey, AnnotationResult]:
        raw = json.loads(line)
        key = raw["key"]
        if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError(f"key must be [example id, prompt hash], got {key!r}")
        return (key[0], key[1]), AnnotationResult.from_dict(raw["result"])

    def _cut_truncated_tail(self, offset: int, number: int) -> None:
        self.truncated_lines += 1
        logger.warning("annotation cache %s: line %d is truncated (interrupted write); dropping it",
                       self.path, number)
        os.truncate(self.path, offset)

    def _keep(self, key: CacheKey, result: AnnotationResult, number: int) -> None:
        if key in self._entries:
            self.duplicate_lines += 1
            logger.warning("annotation cache %s: line %d repeats key %s; keeping the first", self.path, number, key)
            return
        self._entries[key] = result

    # -- access

    def get(self, key: CacheKey) -> AnnotationResult | None:
        return self._entries.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[CacheKey, AnnotationResult]]:
        return iter(list(self._entries.items()))

    def put(self, key: CacheKey, result: AnnotationResult) -> None:
        """Append one result durably. ``KeyError`` if the key is already stored: paying twice for
        the same answer is a bug in the caller."""
        line = json.dumps({"key": list(key), "result": result.to_dict()}, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self._entries:
                raise KeyError(f"annotation cache {self.path}: key {key} is already stored")
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._entries[key] = result

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> AnnotationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- annotation run


@dataclass
class AnnotationReport:
    """What a run did. ``cached``: already final in the cache (no request); ``accepted`` and
    ``rejected`` (by reason): decided in this run; ``errors``: backend failures, not cached, retried by
    the next run; ``duplicates``: records repeating a key already seen in this run; ``requests``:
    prompts sent to the backend."""

    total: int = 0
    cached: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    duplicates: int = 0
    requests: int = 0
    error_examples: dict[str, str] = field(default_factory=dict)  # example id → message (first few)

    MAX_ERROR_EXAMPLES = 20

    @property
    def done(self) -> int:
        """Records settled so far (cached, accepted, rejected, failed or duplicate)."""
        return self.cached + self.accepted + sum(self.rejected.values()) + self.errors + self.duplicates

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "cached": self.cached,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "errors": self.errors,
            "duplicates": self.duplicates,
            "requests": self.requests,
            "error_examples": dict(self.error_examples),
        }


@dataclass(frozen=True)
class _Outcome:
    """What one worker did for one record: a final result, or a backend error."""

    key: CacheKey
    requests: int
    result: AnnotationResult | None = None
    error: str | None = None


def annotate_one(record: MultiHopRecord, key: CacheKey, backend: Backend, max_attempts: int) -> _Outcome:
    """Prompt → backend → parse, retrying a malformed answer up to ``max_attempts`` times."""
    prompt = build_prompt(record)
    rejection: AnnotationRejected | None = None
    response = ""
    for attempt in range(1, max_attempts + 1):
        try:
            response = backend.complete(prompt)
        except (BackendError, OSError) as exc:  # OSError covers timeouts and connection errors
            return _Outcome(key, attempt, error=f"{type(exc).__name__}: {exc}")
        try:
            decomposition = parse_decomposition(response, record)
        except AnnotationRejected as exc:
            rejection = exc
            logger.debug("example %s: attempt %d/%d rejected (%s)", record.id, attempt, max_attempts, exc)
            continue
        return _Outcome(key, attempt, AnnotationResult(record.id, "accepted", attempt, decomposition,
                                                       response=response))
    assert rejection is not None
    return _Outcome(key, max_attempts, AnnotationResult(record.id, "rejected", max_attempts, reason=rejection.reason,
                                                        detail=rejection.detail, response=response))


def _record_outcome(outcome: _Outcome, cache: AnnotationCache, report: AnnotationReport) -> None:
    """Store a final result at once (durable before the next one is awaited) and count it."""
    report.requests += outcome.requests
    example_id = outcome.key[0]
    if outcome.result is None:
        report.errors += 1
        if len(report.error_examples) < report.MAX_ERROR_EXAMPLES:
            report.error_examples[example_id] = outcome.error or ""
        logger.warning("example %s: backend failed, not cached (next run retries): %s", example_id, outcome.error)
        return
    cache.put(outcome.key, outcome.result)
    if outcome.result.status == "accepted":
        report.accepted += 1
        return
    reason = outcome.result.reason or ""
    report.rejected[reason] = report.rejected.get(reason, 0) + 1
    logger.info("example %s: rejected after %d attempts: %s %s", example_id, outcome.result.attempts, reason,
                outcome.result.detail)


def _pending(records: Iterable[MultiHopRecord], backend: Backend, cache: AnnotationCache,
             report: AnnotationReport) -> list[tuple[MultiHopRecord, CacheKey]]:
    """Records still to annotate; cached ones and repeated keys are counted, not sent."""
    todo: list[tuple[MultiHopRecord, CacheKey]] = []
    seen: set[CacheKey] = set()
    for record in records:
        report.total += 1
        key = cache_key(record, backend)
        if key in seen:
            report.duplicates += 1
        elif key in cache:
            report.cached += 1
        else:
            todo.append((record, key))
        seen.add(key)
    return todo


# A runner executes `annotate_one(record, key, backend, max_attempts)` for every pending item with at
# most `concurrency` in flight and yields each outcome as it completes. Threads here; Ray tasks on a
# cluster (tasks/annotate_ray.py). Outcomes always come back to the caller, the single cache writer.
Runner = Callable[[list[tuple[MultiHopRecord, CacheKey]], Backend, int, int], Iterable["_Outcome"]]


def bounded(items: Iterable[Any], submit: Callable[[Any], Any],
            wait_some: Callable[[list], tuple[list, list]], concurrency: int) -> Iterator[Any]:
    """Keep at most `concurrency` submitted items in flight and yield finished handles as they come:
    never more queued than a killed run can lose. `wait_some(in_flight) -> (done, still_in_flight)`."""
    queue = iter(items)
    in_flight: list = []
    while True:
        for item in queue:
            in_flight.append(submit(item))
            if len(in_flight) >= concurrency:
                break
        if not in_flight:
            break
        done, in_flight = wait_some(in_flight)
        yield from done


def thread_runner(todo: list[tuple[MultiHopRecord, CacheKey]], backend: Backend, max_attempts: int,
                  concurrency: int) -> Iterator[_Outcome]:
    """In-process: a bounded thread pool (requests are I/O-bound)."""
    def wait_some(in_flight: list) -> tuple[list, list]:
        done, pending = wait(in_flight, return_when=FIRST_COMPLETED)
        return list(done), list(pending)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="annotate") as pool:
        submit = lambda item: pool.submit(annotate_one, item[0], item[1], backend, max_attempts)  # noqa: E731
        for future in bounded(todo, submit, wait_some, concurrency):
            yield future.result()


def annotate(
    records: Iterable[MultiHopRecord],
    backend: Backend,
    cache: AnnotationCache,
    max_attempts: int,
    on_progress: Callable[[AnnotationReport], None] | None = None,
    max_concurrency: int | None = None,
    runner: Runner | None = None,
) -> AnnotationReport:
    """Decompose every record not already final in ``cache``; return the counts.

    At most ``max_concurrency`` prompts are in flight (default: the backend's ``max_concurrency``
    attribute, else 1). Each result is written to the cache as soon as it completes, from this thread,
    so killing the process loses at most the in-flight requests. ``on_progress`` is called with the
    report after every settled record. ``runner`` decides where requests run (default: threads).
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    concurrency = max_concurrency if max_concurrency is not None else int(getattr(backend, "max_concurrency", 1))
    if concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {concurrency}")
    report = AnnotationReport()
    todo = _pending(records, backend, cache, report)
    logger.info("annotation with %s/%s: %d records, %d cached, %d duplicates, %d to send (concurrency %d)",
                backend.name, backend.model, report.total, report.cached, report.duplicates, len(todo), concurrency)
    if on_progress is not None:
        on_progress(report)
    for outcome in (runner or thread_runner)(todo, backend, max_attempts, concurrency):
        _record_outcome(outcome, cache, report)
        if on_progress is not None:
            on_progress(report)
    logger.info("annotation done: %s", json.dumps(report.to_dict()))
    return report
