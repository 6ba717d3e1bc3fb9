"""The model service and the batching engine on the tiny trained checkpoint and its real LanceDB index:
batched greedy answers equal one-at-a-time answers, per-row limits inside one batch, streamed events
agree with the final object, incremental decoding, dynamic batching, the bounded queue, deadlines, and a
failing request that fails alone."""
from __future__ import annotations

import time

import pytest

from tests.serving.conftest import ARTHUR, DERRICKSON, OBAMA, PARIS, assert_same_answer, one_thread, tiny_params, tiny_project


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from tasks.serving.service import ModelService

    with one_thread():
        paths = tiny_project(tmp_path_factory)
        yield ModelService(tiny_params(paths))


def _ask(service, questions, **opts):
    from tasks.serving.service import QuietChannel

    o = service.ask_options(**opts)
    return service.run_ask([(service.ask_input(q, o), QuietChannel()) for q in questions])


def _link(service, texts, **opts):
    from tasks.serving.service import QuietChannel

    o = service.link_options(**opts)
    return service.run_link([(service.link_input(t, o), QuietChannel()) for t in texts])


def test_the_tiny_model_answers_and_retrieves(service):
    (res,) = _ask(service, [ARTHUR])
    assert res["answer"] == "Arthur's Magazine" and res["finish_reason"] == "eos"
    assert [e["hits"][0]["doc_id"] for e in res["retrievals"]] == ["arthurs-magazine", "first-for-women"]
    hit = res["retrievals"][0]["hits"][0]
    assert set(hit) == {"rank", "id", "doc_id", "title", "text", "score"} and hit["rank"] == 1
    assert hit["title"] == "Arthur's Magazine" and -1.0 <= hit["score"] <= 1.0
    c = res["counts"]
    # the continuation holds the sampled tokens and the two pasted passages
    assert c["retrievals"] == 2 and c["generated_tokens"] > 0 and c["pasted_tokens"] > 0
    assert c["prompt_tokens"] == len(service.seg.prompt(f"The question is: {ARTHUR}\n"))


def test_batched_answers_equal_one_at_a_time_answers_for_greedy_decoding(service):
    questions = [ARTHUR, DERRICKSON, "Who founded Arthur's Magazine?", "Where does Scott Derrickson live?"]
    alone = [_ask(service, [q])[0] for q in questions]
    together = _ask(service, questions)
    assert [r["batch"]["rows"] for r in together] == [4] * 4
    for a, b in zip(alone, together):
        assert_same_answer(a, b)
    links_alone = [_link(service, [t])[0] for t in (OBAMA, PARIS)]
    links_together = _link(service, [OBAMA, PARIS])
    for a, b in zip(links_alone, links_together):
        assert [(m["start"], m["end"], m["entity"]["id"]) for m in a["mentions"]] == \
               [(m["start"], m["end"], m["entity"]["id"]) for m in b["mentions"]]


def test_rows_of_one_batch_keep_their_own_token_budget_and_top_k(service):
    from tasks.serving.service import QuietChannel

    short = service.ask_input(ARTHUR, service.ask_options(max_new_tokens=1, top_k=1))
    full = service.ask_input(ARTHUR, service.ask_options(top_k=3))
    a, b = service.run_ask([(short, QuietChannel()), (full, QuietChannel())])
    assert a["finish_reason"] == "length" and a["counts"]["generated_tokens"] == 1
    assert all(len(e["hits"]) == 1 for e in a["retrievals"])
    assert b["finish_reason"] == "eos" and all(len(e["hits"]) == 3 for e in b["retrievals"])
    assert_same_answer(b, _ask(service, [ARTHUR], top_k=3)[0])


def test_streamed_events_agree_with_the_final_object(service):
    from tasks.serving.service import CallbackChannel

    events: list[dict] = []
    item = service.ask_input(ARTHUR, service.ask_options())
    (res,) = service.run_ask([(item, CallbackChannel(events.append))])
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["type"] for e in events][:2] == ["token", "retrieval"]  # [RQ], then its search
    assert [{k: v for k, v in e.items() if k != "type"} for e in events if e["type"] == "retrieval"] == res["retrievals"]
    assert len(tokens) == res["counts"]["generated_tokens"]
    # the streamed text is the sampled text: the continuation without the pasted passages
    sampled = service.tokenizer.decode([e["id"] for e in tokens], skip_special_tokens=False)
    assert "".join(e["text"] for e in tokens) == sampled
    assert sampled.endswith("<FINAL-ANSWER>Arthur's Magazine</FINAL-ANSWER>") and "<paragraph>" not in sampled
    assert tokens[0]["special"] and tokens[0]["text"] == "[RQ]"


def test_a_row_stopped_by_its_client_stops_alone(service):
    from tasks.serving.service import CallbackChannel, QuietChannel

    class LeavesAfterTwoTokens(CallbackChannel):
        def stop_reason(self):
            return "cancelled" if sum(e["type"] == "token" for e in seen) >= 2 else None

    seen: list[dict] = []
    o = service.ask_options()
    gone, stays = service.run_ask([(service.ask_input(ARTHUR, o), LeavesAfterTwoTokens(seen.append)),
                                   (service.ask_input(DERRICKSON, o), QuietChannel())])
    assert gone["finish_reason"] == "cancelled" and gone["counts"]["generated_tokens"] == 2
    assert_same_answer(stays, _ask(service, [DERRICKSON])[0])


def test_incremental_decoding_never_splits_a_character(char_tokenizer):
    from tasks.serving.service import IncrementalDecoder

    text = "naïve café – 東京 [RQ] ok"
    ids = char_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # byte-level: multi-byte characters span several tokens
    dec = IncrementalDecoder(char_tokenizer)
    deltas = [dec.push(i) for i in ids]
    assert "".join(deltas) == char_tokenizer.decode(ids) and not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # held back while a character was incomplete


def test_link_marks_spans_with_offsets_and_top_k_candidates(service):
    (res,) = _link(service, [OBAMA], top_k=2)
    spans = [(m["start"], m["end"], m["text"]) for m in res["mentions"]]
    assert spans == [(0, 5, "Obama"), (18, 26, "Honolulu")]
    assert [m["entity"]["id"] for m in res["mentions"]] == ["Q76", "Q18094"]
    assert all(len(m["candidates"]) == 2 and m["candidates"][0]["id"] == m["entity"]["id"] for m in res["mentions"])
    assert res["counts"] == {"windows": 1, "mentions": 2, "linked": 2, "abstained": 0,
                             "generated_tokens": res["counts"]["generated_tokens"]}


def test_linking_abstains_below_the_nil_threshold(service, tmp_path):
    """A mention whose nearest entity scores below the threshold is NIL, its candidates still shown; the
    threshold comes from serve.link_nil: fixed, or auto from the link_threshold stage's file only when
    it was chosen for the served checkpoint."""
    import json

    from tasks.serving.service import ModelService, nil_threshold

    paths = {"checkpoint": service.checkpoint, "index": service.index_uri}
    (res,) = _link(service, [OBAMA], top_k=2)
    scores = [m["entity"]["score"] for m in res["mentions"]]  # Obama, Honolulu
    cut = (min(scores) + max(scores)) / 2
    picky = ModelService(tiny_params(paths, link_nil="fixed", link_min_score=cut))
    (res2,) = _link(picky, [OBAMA], top_k=2)
    low = scores.index(min(scores))
    assert [m["abstained"] for m in res2["mentions"]] == [k == low for k in range(2)]
    assert res2["mentions"][low]["entity"] is None and res2["mentions"][low]["candidates"][0]["score"] == min(scores)
    assert res2["mentions"][1 - low]["entity"] == res["mentions"][1 - low]["entity"]
    assert res2["counts"]["abstained"] == 1 and res2["counts"]["linked"] == 1
    # auto: the stage's file counts only for the checkpoint it was chosen for
    f = tmp_path / "link_threshold.json"
    s = tiny_params(paths, link_threshold_path=str(f)).serve
    assert nil_threshold(s, service.checkpoint_id)[0] is None  # no file: never abstains, and says why
    f.write_text(json.dumps({"checkpoint_id": "someone-else", "threshold": 0.5}))
    t, why = nil_threshold(s, service.checkpoint_id)
    assert t is None and "someone-else" in why
    f.write_text(json.dumps({"checkpoint_id": service.checkpoint_id, "threshold": 0.25, "f1": 0.6, "f1_without": 0.5}))
    assert nil_threshold(s, service.checkpoint_id)[0] == 0.25
    assert nil_threshold(tiny_params(paths, link_nil="off").serve, service.checkpoint_id)[0] is None


def test_long_texts_are_linked_window_by_window_with_article_offsets(service):
    text = (OBAMA + " ") * 30  # 840 characters: two windows of evaluate.el_max_chars (600)
    item = service.link_input(text, service.link_options())
    assert len(item.windows) == 2 and item.windows[1].offset > 0
    (res,) = _link(service, [text])
    assert res["counts"]["windows"] == 2
    for m in res["mentions"]:
        assert text[m["start"]:m["end"]] == m["text"]
    assert any(m["start"] >= item.windows[1].offset for m in res["mentions"])


@pytest.mark.parametrize("kwargs, param", [
    ({"max_new_tokens": 0}, "max_tokens"), ({"max_new_tokens": 10**6}, "max_tokens"), ({"top_k": 0}, "top_k"),
    ({"top_k": 999}, "top_k"), ({"temperature": -0.5}, "temperature"), ({"top_p": 0.0}, "top_p"),
    ({"max_retrievals": -1}, "max_retrievals"),
])
def test_options_out_of_range_name_the_field(service, kwargs, param):
    from tasks.serving.service import InvalidRequest

    with pytest.raises(InvalidRequest) as e:
        service.ask_options(**kwargs)
    assert e.value.param == param and param in e.value.message


def test_texts_with_special_tokens_or_over_the_limit_are_refused(service):
    from tasks.serving.service import InvalidRequest

    o = service.ask_options()
    for bad, why in (("What is [RQ]?", "special token"), ("  ", "non-empty"), ("x" * 5000, "serve.max_text_chars")):
        with pytest.raises(InvalidRequest, match=why):
            service.ask_input(bad, o)
    assert service.ask_input("x" * 300, o, limit=None).question  # the command line has no character limit...
    with pytest.raises(InvalidRequest, match="exceed the model's context of 1024 positions"):
        service.ask_input("x" * 5000, o, limit=None)  # ...but the model's positions bound every prompt


def test_the_tokenizers_own_control_tokens_are_refused_in_questions_and_texts(service):
    """`<|endoftext|>` spelled in a question would tokenise to the control token itself (one id, not
    characters) and end or re-open the turn: refused like OneGen's tokens, for every task."""
    from onegen_core.method.control_tokens import control_tokens
    from tasks.serving.service import InvalidRequest

    tok = service.tokenizer
    assert len(tok("<|endoftext|>", add_special_tokens=False)["input_ids"]) == 1  # why: it is one control id
    assert {"<|endoftext|>", "<|pad|>", "[RQ]", "</MENTION>"} <= set(service.control) == set(control_tokens(tok))
    o = service.ask_options()
    for text in ("Who? <|endoftext|>", "a <|pad|> b"):
        with pytest.raises(InvalidRequest, match="tokenizer's control token") as e:
            service.ask_input(text, o)
        assert e.value.param == "question"
        with pytest.raises(InvalidRequest, match="tokenizer's control token"):
            service.link_input(text, service.link_options())
    assert service.ask_input("a <|endoftext| b", o).question  # not the token: plain text


# ------------------------------------------------------------------------------ the batching engine

def _job(service, question, kind="ask", deadline_s=60.0, prompt=None):
    from tasks.serving.batching import Job

    o = service.ask_options()
    item = service.ask_input(question, o)
    if prompt is not None:
        item.prompt_ids = prompt
    return Job(kind, item, 1, o.batch_key(), time.monotonic() + deadline_s)


def test_engine_batches_concurrent_requests_up_to_the_max_wait(service):
    from tasks.serving.batching import BatchingEngine

    engine = BatchingEngine(service, max_batch_size=3, max_wait_ms=1500, max_queue=8)
    try:
        t0 = time.monotonic()
        jobs = [engine.submit(_job(service, q)) for q in (ARTHUR, DERRICKSON)]
        results = [j.future.result(30) for j in jobs]
        # two of three rows arrived: the batch left when the first request had waited max_wait
        assert [r["batch"]["rows"] for r in results] == [2, 2] and time.monotonic() - t0 >= 1.4
        jobs = [engine.submit(_job(service, q)) for q in (ARTHUR, DERRICKSON, ARTHUR)]
        results = [j.future.result(30) for j in jobs]
        assert [r["batch"]["rows"] for r in results] == [3, 3, 3]  # full: no waiting
        assert all(r["batch"]["queue_ms"] < 1400 for r in results)
        assert results[0]["answer"] == results[2]["answer"] == "Arthur's Magazine"
        s = engine.status()
        assert s["completed"] == 5 and s["batches"] == 2 and s["failed"] == 0
    finally:
        engine.close()


def test_engine_queue_is_bounded_and_deadlines_are_kept(service):
    from tasks.serving.batching import BatchingEngine, QueueFull, RequestTimeout

    engine = BatchingEngine(service, max_batch_size=4, max_wait_ms=1000, max_queue=1)
    try:
        first = engine.submit(_job(service, ARTHUR))  # waits for company: it keeps its queue slot
        with pytest.raises(QueueFull, match="serve.max_queue = 1"):
            engine.submit(_job(service, DERRICKSON))
        assert first.future.result(30)["answer"] == "Arthur's Magazine"
        late = engine.submit(_job(service, ARTHUR, deadline_s=-1.0))
        with pytest.raises(RequestTimeout):
            late.future.result(30)
        s = engine.status()
        assert s["rejected"] == 1 and s["timed_out"] == 1 and s["alive"]
    finally:
        engine.close()


def test_a_failing_request_fails_alone_and_the_engine_goes_on(service):
    from tasks.serving.batching import BatchingEngine

    engine = BatchingEngine(service, max_batch_size=3, max_wait_ms=500, max_queue=8)
    try:
        good = engine.submit(_job(service, ARTHUR))
        bad = engine.submit(_job(service, DERRICKSON, prompt=[]))  # the engine refuses an empty prompt
        other = engine.submit(_job(service, DERRICKSON))
        with pytest.raises(ValueError, match="empty prompt"):
            bad.future.result(30)
        assert good.future.result(30)["answer"] == "Arthur's Magazine"
        assert other.future.result(30)["answer"] == "yes"
        after = engine.submit(_job(service, ARTHUR))
        assert after.future.result(30)["batch"]["rows"] == 1
        assert engine.status()["failed"] == 1 and engine.status()["alive"]
    finally:
        engine.close()


@pytest.mark.parametrize("key, value, words", [
    ("serve.port", 70000, "serve.port"), ("serve.max_batch_size", 0, "serve.max_batch_size"),
    ("serve.max_wait_ms", -1.0, "serve.max_wait_ms"), ("serve.request_timeout_s", 0.0, "serve.request_timeout_s"),
    ("serve.top_k", 30, "serve.max_top_k"), ("serve.api_key_env", "MY KEY", "serve.api_key_env"),
    ("serve.threads", -1, "serve.threads"), ("serve.max_queue", "many", "serve.max_queue"),
])
def test_serve_settings_are_range_checked_and_name_the_key(key, value, words):
    from onegen_core.config import ConfigError, load_params
    from tests.conftest import ROOT

    assert load_params(ROOT / "params.yaml").serve.host == "127.0.0.1"
    with pytest.raises(ConfigError, match=words):
        load_params(ROOT / "params.yaml", {key: value})
