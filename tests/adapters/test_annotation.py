"""onegen_core.prepare.decomposition: prompt, strict parser, heuristic, JSONL cache and the resumable run loop.

Backends here are in-process fakes; the real HTTP backend is exercised in test_annotators_http.py.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from onegen_core.data.multihop import MultiHopRecord, Paragraph, SupportingFact
from onegen_core.prepare.decomposition import (
    REJECTION_REASONS,
    AnnotationRejected,
    Decomposition,
    Step,
    build_prompt,
    heuristic_decomposition,
    parse_decomposition,
    prompt_documents,
    prompt_hash,
    to_hops,
)
from tasks.adapters.annotation_cache import AnnotationCache, AnnotationResult, cache_key
from tasks.adapters.annotation_runner import annotate
from tasks.adapters.annotators import BackendError


def make_record(record_id: str = "q1", first_title: str = "Alpha") -> MultiHopRecord:
    """Two supporting paragraphs (first_title, Beta) and one distractor (Gamma)."""
    context = (
        Paragraph("Gamma", ("Gamma is a distractor.",)),
        Paragraph(first_title, ("Alpha was founded by Bob.", " Bob lives in Paris.")),
        Paragraph("Beta", ("Bob is a painter.", " Bob was born in 1950.")),
    )
    facts = (SupportingFact(first_title, 0), SupportingFact("Beta", 1), SupportingFact(first_title, 1))
    return MultiHopRecord(id=record_id, question=f"When was the founder of {first_title} born?", answer="1950",
                          supporting_facts=facts, context=context, type="bridge", level="easy", evidences=(),
                          source="hotpotqa")


def step(question: str, document: str, answer: str, k: int = 1) -> str:
    """Step k in the Fig. 13 answer format."""
    return (f"<SUB-QUESTION-{k}>{question}</SUB-QUESTION-{k}>\n<CORRESPONDING-DOC-{k}>{document}"
            f"</CORRESPONDING-DOC-{k}>\n<SUB-ANSWER-{k}>{answer}</SUB-ANSWER-{k}>\n")


def tags(k: int, question: str | None = None, document: str | None = None, answer: str | None = None) -> str:
    """Step k with only the given tags (None = tag absent)."""
    out = ""
    for name, value in (("SUB-QUESTION", question), ("CORRESPONDING-DOC", document), ("SUB-ANSWER", answer)):
        if value is not None:
            out += f"<{name}-{k}>{value}</{name}-{k}>"
    return out


Q1 = step("Who founded Alpha?", "[1]", "Bob")
FINAL = "<FINAL-ANSWER>1950</FINAL-ANSWER>"
GOOD = step("Who founded Alpha?", "[1]", "Bob") + step("When was Bob born?", "[2]", "1950", 2) + FINAL


def render(decomposition: Decomposition, record: MultiHopRecord) -> str:
    """A well-formed LLM answer for the steps of a decomposition (documents by number)."""
    numbers = {p.title: n for n, p in enumerate(prompt_documents(record), start=1)}
    body = "".join(step(f"What about {s.doc_title}?", f"[{numbers[s.doc_title]}]", "x", k)
                   for k, s in enumerate(decomposition.steps, start=1))
    return body + f"<FINAL-ANSWER>{decomposition.final_answer}</FINAL-ANSWER>"


# --------------------------------------------------------------------------- prompt


def test_prompt_numbers_the_supporting_documents_in_supporting_facts_order():
    record = make_record()
    prompt = build_prompt(record)  # Fig. 13, the default
    assert prompt.endswith("<QUESTION> When was the founder of Alpha born? </QUESTION>\n<ANSWER> 1950 </ANSWER>\n"
                           "<RELATED-DOC-1>\nwiki title: Alpha\ncontent: Alpha was founded by Bob. Bob lives in Paris.\n"
                           "</RELATED-DOC-1>\n<RELATED-DOC-2>\nwiki title: Beta\ncontent: Bob is a painter. Bob was "
                           "born in 1950.\n</RELATED-DOC-2>\n\nPlease format your output as shown above and refrain "
                           "from including any additional content.")
    assert "Gamma" not in prompt
    assert [p.title for p in prompt_documents(record)] == ["Alpha", "Beta"]


def test_numbered_prompt_is_a_named_alternative():
    record = make_record()
    prompt = build_prompt(record, "numbered")
    assert "Question: When was the founder of Alpha born?\nAnswer: 1950\n" in prompt
    documents = ("[1] Alpha: Alpha was founded by Bob. Bob lives in Paris.\n"
                 "[2] Beta: Bob is a painter. Bob was born in 1950.")
    assert documents in prompt
    assert "Gamma" not in prompt
    with pytest.raises(ValueError, match="unknown prompt style 'fig14'"):
        build_prompt(record, "fig14")


def test_prompt_hash_depends_on_prompt_and_model():
    a = prompt_hash("p", "openai/m1")
    assert a == prompt_hash("p", "openai/m1") and len(a) == 20 and int(a, 16) >= 0
    assert a != prompt_hash("p", "openai/m2")
    assert a != prompt_hash("p2", "openai/m1")


# --------------------------------------------------------------------------- parser: accepted


def test_parse_good_answer():
    decomposition = parse_decomposition(GOOD, make_record())
    assert decomposition == Decomposition(
        "q1",
        (Step("Who founded Alpha?", "Alpha", "Bob"), Step("When was Bob born?", "Beta", "1950")),
        "1950",
    )


@pytest.mark.parametrize("document, title", [
    ("[2]", "Beta"),
    ("2", "Beta"),
    ("[2] Beta", "Beta"),
    ("[2]: beta", "Beta"),
    ("Document 2", "Beta"),
    ("document [2]", "Beta"),
    ("Beta", "Beta"),
    ("'Beta'", "Beta"),
])
def test_parse_accepts_document_reference_forms(document, title):
    text = step("Who founded Alpha?", "[1]", "Bob") + step("When?", document, "1950", 2) + FINAL
    assert parse_decomposition(text, make_record()).steps[1].doc_title == title


def test_parse_ignores_text_outside_tags_and_tag_case():
    lowered = GOOD.replace("SUB-QUESTION", "sub-question").replace("FINAL-ANSWER>", "final-answer>")
    text = "Sure! Here it is:\n```\n" + lowered + "\n```"
    assert [s.doc_title for s in parse_decomposition(text, make_record()).steps] == ["Alpha", "Beta"]


def test_a_title_that_looks_like_a_number_is_a_title():
    record = make_record(first_title="1984")
    text = step("Who founded 1984?", "1984", "Bob") + step("When?", "[2]", "1950", 2) + FINAL
    assert [s.doc_title for s in parse_decomposition(text, record).steps] == ["1984", "Beta"]


# --------------------------------------------------------------------------- parser: rejected



@pytest.mark.parametrize("text, reason", [
    ("", "no_steps"),
    ("The answer is 1950.", "no_steps"),
    (FINAL, "no_steps"),
    ("<SUB-QUESTION-1>Q" + FINAL, "malformed_tags"),
    (Q1 + "</SUB-ANSWER-1>" + FINAL, "malformed_tags"),
    (Q1 + step("When?", "[2]", "1950", 3) + FINAL, "malformed_tags"),  # no step 2
    (tags(1, " ", " ", "") + FINAL, "empty_step"),
    (tags(1, None, "[1]", "Bob") + FINAL, "missing_sub_question"),
    (tags(1, " ", "[1]", "B") + FINAL, "missing_sub_question"),
    (tags(1, "Who?", None, "Bob") + FINAL, "missing_document"),
    (tags(1, "Who?", "", "B") + FINAL, "missing_document"),
    (tags(1, "Who?", "[1]") + FINAL, "missing_sub_answer"),
    (tags(1, "Who?", "[1]", "B") + "<CORRESPONDING-DOC-1>[2]</CORRESPONDING-DOC-1>" + FINAL, "malformed_tags"),
    (Q1 + step("When?", "[3]", "1950", 2) + FINAL, "unknown_document"),
    (Q1 + step("When?", "[0]", "1950", 2) + FINAL, "unknown_document"),
    (Q1 + step("When?", "[2] Alpha", "1950", 2) + FINAL, "unknown_document"),
    (Q1 + step("When?", "Delta", "1950", 2) + FINAL, "unknown_document"),
    (Q1 + step("When?", "Gamma", "1950", 2) + FINAL, "distractor_document"),
    (Q1, "missing_final_answer"),
    (Q1 + "<FINAL-ANSWER>  </FINAL-ANSWER>", "missing_final_answer"),
    (Q1 + "<FINAL-ANSWER>1950", "missing_final_answer"),
    (Q1 + FINAL + FINAL, "malformed_tags"),
])
def test_parse_rejects_with_reason(text, reason):
    with pytest.raises(AnnotationRejected) as info:
        parse_decomposition(text, make_record())
    assert info.value.reason == reason
    assert reason in REJECTION_REASONS


def test_rejection_reasons_are_closed():
    with pytest.raises(ValueError):
        AnnotationRejected("something_else")


# --------------------------------------------------------------------------- records and the heuristic


def test_decomposition_dict_round_trip():
    decomposition = parse_decomposition(GOOD, make_record())
    assert Decomposition.from_dict(json.loads(json.dumps(decomposition.to_dict()))) == decomposition
    implicit = heuristic_decomposition(make_record())
    assert Decomposition.from_dict(implicit.to_dict()) == implicit


@pytest.mark.parametrize("raw, field", [
    ({"example_id": "q", "steps": [], "final_answer": "a"}, "steps"),
    ({"example_id": "q", "steps": [{"doc_title": ""}], "final_answer": "a"}, "doc_title"),
    ({"example_id": "q", "steps": [{"doc_title": "T", "sub_question": 3}], "final_answer": "a"}, "sub_question"),
    ({"example_id": "q", "steps": [{"doc_title": "T"}]}, "final_answer"),
    ({"steps": [{"doc_title": "T"}], "final_answer": "a"}, "example_id"),
])
def test_decomposition_from_dict_names_the_bad_field(raw, field):
    with pytest.raises(ValueError, match=field):
        Decomposition.from_dict(raw)


@pytest.fixture(scope="module")
def hotpot_records(shared_data):
    from onegen_core.data import load_hotpotqa

    return load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")


def test_heuristic_on_real_samples(hotpot_records):
    from onegen_core.prepare.multihop import hops_from_supporting_facts

    assert len(hotpot_records) == 100
    for record in hotpot_records:
        decomposition = heuristic_decomposition(record)
        assert decomposition.example_id == record.id
        assert decomposition.final_answer == record.answer
        assert [s.doc_title for s in decomposition.steps] == list(record.supporting_titles())
        assert all(s.sub_question is None and s.sub_answer is None for s in decomposition.steps)
        assert to_hops(decomposition, record) == hops_from_supporting_facts(record)


def test_well_formed_answers_for_real_samples_parse(hotpot_records):
    for record in hotpot_records:
        parsed = parse_decomposition(render(heuristic_decomposition(record), record), record)
        assert [s.doc_title for s in parsed.steps] == list(record.supporting_titles())
        hops = to_hops(parsed, record)
        assert all(hop.supporting_sentences and hop.sub_question for hop in hops)


# --------------------------------------------------------------------------- cache


def accepted(record_id: str = "q1") -> AnnotationResult:
    return AnnotationResult(record_id, "accepted", 1, parse_decomposition(GOOD, make_record(record_id)),
                            response=GOOD)


def rejected(record_id: str = "q2") -> AnnotationResult:
    return AnnotationResult(record_id, "rejected", 3, reason="no_steps", detail="no <SUB-QUESTION-k> block", response="hm")


def test_cache_round_trip(tmp_path):
    path = tmp_path / "sub" / "cache.jsonl"
    with AnnotationCache(path) as cache:
        assert len(cache) == 0 and cache.get(("q1", "h")) is None
        cache.put(("q1", "h"), accepted("q1"))
        cache.put(("q2", "h"), rejected("q2"))
    assert path.read_text().count("\n") == 2
    with AnnotationCache(path) as cache:
        assert len(cache) == 2 and cache.truncated_lines == 0
        assert cache.get(("q1", "h")) == accepted("q1")
        assert cache.get(("q2", "h")) == rejected("q2")
        assert ("q1", "other-hash") not in cache
        assert dict(cache) == {("q1", "h"): accepted("q1"), ("q2", "h"): rejected("q2")}


def test_cache_never_duplicates_a_key(tmp_path):
    path = tmp_path / "cache.jsonl"
    with AnnotationCache(path) as cache:
        cache.put(("q1", "h"), accepted("q1"))
        with pytest.raises(KeyError):
            cache.put(("q1", "h"), rejected("q1"))
    assert path.read_text().count("\n") == 1


def test_cache_tolerates_a_truncated_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    with AnnotationCache(path) as cache:
        cache.put(("q1", "h"), accepted("q1"))
        cache.put(("q2", "h"), rejected("q2"))
    good = path.read_bytes()
    line = json.dumps({"key": ["q3", "h"], "result": rejected("q3").to_dict()})
    path.write_bytes(good + line[: len(line) // 2].encode())  # a crash mid-write
    with AnnotationCache(path) as cache:
        assert len(cache) == 2 and cache.truncated_lines == 1
        assert path.read_bytes() == good  # cut back to the last complete line
        cache.put(("q3", "h"), rejected("q3"))
    with AnnotationCache(path) as cache:
        assert len(cache) == 3 and cache.truncated_lines == 0


def test_cache_keeps_a_complete_last_line_without_newline(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"key": ["q1", "h"], "result": accepted("q1").to_dict()}))
    with AnnotationCache(path) as cache:
        assert len(cache) == 1 and cache.truncated_lines == 0
        cache.put(("q2", "h"), rejected("q2"))
    with AnnotationCache(path) as cache:
        assert len(cache) == 2


def test_cache_corruption_before_the_last_line_raises(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text("{not json\n" + json.dumps({"key": ["q1", "h"], "result": accepted("q1").to_dict()}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        AnnotationCache(path)


def test_cache_keeps_the_first_of_repeated_keys(tmp_path):
    path = tmp_path / "cache.jsonl"
    lines = [json.dumps({"key": ["q1", "h"], "result": r.to_dict()}) for r in (accepted("q1"), rejected("q1"))]
    path.write_text("\n".join(lines) + "\n")
    with AnnotationCache(path) as cache:
        assert len(cache) == 1 and cache.duplicate_lines == 1
        assert cache.get(("q1", "h")).status == "accepted"


# --------------------------------------------------------------------------- annotate


class ScriptedBackend:
    """Answers from a per-example script of responses (a string, or an exception to raise)."""

    name = "fake"

    def __init__(self, script, model: str = "m", delay_s: float = 0.0, max_concurrency: int = 1):
        self.script = script  # callable(record_id, call_number) -> str | Exception
        self.model = model
        self.delay_s = delay_s
        self.max_concurrency = max_concurrency
        self.calls: dict[str, int] = {}
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def complete(self, prompt: str) -> str:
        record_id = prompt.split("founder of ")[1].split(" born?")[0]
        with self._lock:
            self.calls[record_id] = self.calls.get(record_id, 0) + 1
            n = self.calls[record_id]
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay_s)
            out = self.script(record_id, n)
        finally:
            with self._lock:
                self.active -= 1
        if isinstance(out, Exception):
            raise out
        return out


def records(n: int) -> list[MultiHopRecord]:
    """Records whose id is also the paragraph title named in the question (the fake reads it back)."""
    return [make_record(f"r{i}", first_title=f"r{i}") for i in range(n)]


def good_for(record_id: str) -> str:
    return GOOD.replace("Alpha", record_id)


def test_annotate_accepts_caches_and_resumes_without_paying_twice(tmp_path):
    backend = ScriptedBackend(lambda rid, n: good_for(rid))
    progress = []
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate(records(4), backend, cache, max_attempts=2, on_progress=lambda r: progress.append(r.done))
    assert report.to_dict() | {"error_examples": {}} == {
        "total": 4, "cached": 0, "accepted": 4, "rejected": {}, "rejected_total": 0, "errors": 0, "duplicates": 0,
        "requests": 4, "error_examples": {}}
    assert progress == [0, 1, 2, 3, 4]
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        again = annotate(records(4), backend, cache, max_attempts=2)
        assert [result.decomposition.steps[0].doc_title for _, result in cache] == ["r0", "r1", "r2", "r3"]
    assert (again.cached, again.accepted, again.requests) == (4, 0, 0)
    assert backend.calls == {"r0": 1, "r1": 1, "r2": 1, "r3": 1}


def test_annotate_retries_a_malformed_answer(tmp_path):
    backend = ScriptedBackend(lambda rid, n: "no idea" if n == 1 else good_for(rid))
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate(records(2), backend, cache, max_attempts=3)
        assert {r.attempts for _, r in cache} == {2}
    assert (report.accepted, report.requests) == (2, 4)


def test_annotate_rejects_after_max_attempts_and_caches_the_rejection(tmp_path):
    backend = ScriptedBackend(lambda rid, n: good_for(rid).replace("[2]", "[7]"))
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate(records(3), backend, cache, max_attempts=3)
        result = cache.get(cache_key(records(1)[0], backend))
    assert report.rejected == {"unknown_document": 3} and report.requests == 9
    assert (result.status, result.reason, result.attempts) == ("rejected", "unknown_document", 3)
    assert "[7]" in result.response and "[7]" in result.detail
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        assert annotate(records(3), backend, cache, max_attempts=3).cached == 3
    assert backend.calls == {"r0": 3, "r1": 3, "r2": 3}


def test_backend_errors_are_counted_not_cached_and_retried_next_run(tmp_path):
    failing = ScriptedBackend(lambda rid, n: BackendError("HTTP 503") if rid == "r1" else good_for(rid))
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate(records(3), failing, cache, max_attempts=3)
        assert len(cache) == 2
    assert (report.accepted, report.errors, report.requests) == (2, 1, 3)
    assert report.error_examples == {"r1": "BackendError: HTTP 503"}
    timeouts = ScriptedBackend(lambda rid, n: TimeoutError("timed out") if n == 1 else good_for(rid))
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate(records(3), timeouts, cache, max_attempts=3)
        assert len(cache) == 2  # r1 failed again (first call of this backend times out)
        assert annotate(records(3), timeouts, cache, max_attempts=3).accepted == 1
        assert len(cache) == 3
    assert (report.cached, report.errors) == (2, 1)


def test_a_bug_in_the_backend_is_not_swallowed(tmp_path):
    backend = ScriptedBackend(lambda rid, n: AttributeError("bug"))
    with AnnotationCache(tmp_path / "c.jsonl") as cache, pytest.raises(AttributeError):
        annotate(records(1), backend, cache, max_attempts=1)


def test_cache_key_includes_the_model(tmp_path):
    record = records(1)[0]
    assert cache_key(record, ScriptedBackend(None, model="a")) != cache_key(record, ScriptedBackend(None, model="b"))
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        annotate([record], ScriptedBackend(lambda rid, n: good_for(rid), model="a"), cache, max_attempts=1)
        report = annotate([record], ScriptedBackend(lambda rid, n: good_for(rid), model="b"), cache, max_attempts=1)
    assert (report.cached, report.accepted) == (0, 1)


def test_duplicate_records_are_sent_once(tmp_path):
    backend = ScriptedBackend(lambda rid, n: good_for(rid))
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate(records(2) + records(1), backend, cache, max_attempts=1)
    assert (report.total, report.accepted, report.duplicates, report.requests) == (3, 2, 1, 2)


@pytest.mark.parametrize("bound", [1, 3])
def test_concurrency_is_bounded(tmp_path, bound):
    backend = ScriptedBackend(lambda rid, n: good_for(rid), delay_s=0.02, max_concurrency=bound)
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate(records(9), backend, cache, max_attempts=1)
    assert report.accepted == 9 and backend.peak == bound


def test_annotate_validates_its_bounds(tmp_path):
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        with pytest.raises(ValueError):
            annotate(records(1), ScriptedBackend(None), cache, max_attempts=0)
        with pytest.raises(ValueError):
            annotate(records(1), ScriptedBackend(None), cache, max_attempts=1, max_concurrency=0)


def test_decomposition_module_imports_only_the_standard_library():
    import sys

    from tests.test_core_purity import imported_top_levels

    names = imported_top_levels(Path(__file__).resolve().parents[2] / "onegen_core" / "prepare" / "decomposition.py")
    assert {n for n in names if n not in sys.stdlib_module_names} == {"onegen_core"}


class RegexRecorder:
    """A backend that records the regex it was asked to keep to, and answers in the format."""

    name, model, max_concurrency = "fake", "m", 1

    def __init__(self) -> None:
        self.regexes: list[str | None] = []

    def complete(self, prompt: str, regex: str | None = None) -> str:
        self.regexes.append(regex)
        return GOOD


def test_structured_output_sends_each_records_answer_regex_and_caches_apart(tmp_path):
    from onegen_core.prepare.decomposition import answer_regex

    record = make_record()
    backend = RegexRecorder()
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        report = annotate([record], backend, cache, max_attempts=1, structured=True)
        assert report.accepted == 1 and backend.regexes == [answer_regex(record)]
        assert cache_key(record, backend, "fig13", True) in cache
        assert cache_key(record, backend, "fig13", False) not in cache  # a constrained answer is another answer
        annotate([record], backend, cache, max_attempts=1)  # unconstrained: asked again, without a regex
    assert backend.regexes == [answer_regex(record), None]
