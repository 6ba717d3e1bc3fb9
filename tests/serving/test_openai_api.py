"""The OpenAI-compatible routes, driven by the real `openai` Python client (and httpx for what the client
would refuse to send) against a real uvicorn server on 127.0.0.1 over the tiny trained checkpoint:
chat and completions, plain and streamed, retrievals visible, stop strings, usage, refusals in OpenAI's
error shape, and answers equal to `/v1/ask`'s."""
from __future__ import annotations

import json

import pytest

from tests.serving.conftest import ARTHUR, DERRICKSON, tiny_params

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def url(service):
    from tasks.serving.app import create_app, serve_in_thread

    cfg = tiny_params({"checkpoint": service.checkpoint, "index": service.index_uri}).serve
    with serve_in_thread(create_app(service, cfg)) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    # the client insists on a key; this server has none configured, so any value passes
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def asked(url):
    """`/v1/ask`'s answer to ARTHUR: what every route must agree with."""
    r = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_lists_the_served_checkpoint(client, service):
    models = client.models.list()
    assert [m.id for m in models.data] == [service.checkpoint_id]
    assert models.data[0].owned_by == "onegen" and models.data[0].object == "model"


def test_chat_answers_with_the_final_answer_and_its_retrievals(client, service, asked):
    r = client.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}])
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "onegen"
    (choice,) = r.choices
    msg = choice.message
    assert msg.role == "assistant" and msg.content == "Arthur's Magazine" == asked["answer"]
    assert choice.finish_reason == "stop"
    extra = msg.model_extra
    assert extra["final_answer"] == "Arthur's Magazine"
    assert extra["reasoning_content"] == asked["sampled_text"]
    assert extra["reasoning_content"].startswith("[RQ]") and "<FINAL-ANSWER>" in extra["reasoning_content"]
    # the same two retrievals as /v1/ask, each hit with its passage
    assert [[h["doc_id"] for h in e["hits"]] for e in extra["retrievals"]] == \
           [[h["doc_id"] for h in e["hits"]] for e in asked["retrievals"]]
    assert [e["hits"][0]["doc_id"] for e in extra["retrievals"]] == ["arthurs-magazine", "first-for-women"]
    assert r.usage.prompt_tokens == asked["counts"]["prompt_tokens"]
    assert r.usage.completion_tokens == asked["counts"]["generated_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the checkpoint's id and text parts are accepted as well
    r2 = client.chat.completions.create(model=service.checkpoint_id,
                                        messages=[{"role": "user", "content": [{"type": "text", "text": ARTHUR}]}])
    assert r2.choices[0].message.content == "Arthur's Magazine" and r2.model == service.checkpoint_id


def test_chat_streams_reasoning_retrievals_then_the_answer(client, asked):
    stream = client.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    retrievals = [d.model_extra["retrieval"] for d in deltas if d.model_extra.get("retrieval")]
    assert content == "Arthur's Magazine" and reasoning == asked["sampled_text"]
    assert [e["hits"][0]["doc_id"] for e in retrievals] == ["arthurs-magazine", "first-for-women"]
    assert [(e["query"], e["position"]) for e in retrievals] == [(e["query"], e["position"]) for e in asked["retrievals"]]
    # each retrieval arrives where it happened: after the [RQ] token's text, before the answer
    order = [("r" if d.model_extra.get("retrieval") else "c" if d.content else "t") for d in deltas
             if d.model_extra.get("retrieval") or d.content or d.model_extra.get("reasoning_content")]
    assert order[0] == "t" and order[-1] == "c" and order.count("r") == 2 and order.index("c") > max(
        i for i, k in enumerate(order) if k == "r")
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == asked["counts"]["generated_tokens"]


def test_completions_plain_and_streamed(client, asked):
    r = client.completions.create(model="onegen", prompt=ARTHUR)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == "Arthur's Magazine" and r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["retrievals"][0]["hits"][0]["doc_id"] == "arthurs-magazine"
    chunks = list(client.completions.create(model="onegen", prompt=[ARTHUR], stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Arthur's Magazine"
    assert "".join(c.choices[0].model_extra.get("reasoning_content") or "" for c in chunks) == asked["sampled_text"]
    assert sum(bool(c.choices[0].model_extra.get("retrieval")) for c in chunks) == 2


def test_max_tokens_ends_with_length_and_the_text_written_so_far(client):
    r = client.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}],
                                       max_tokens=3)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 3
    assert choice.message.model_extra["final_answer"] is None
    # no final answer was written: the content is what the model wrote, OneGen's tokens removed
    assert "[RQ]" not in choice.message.content and choice.message.model_extra["reasoning_content"].startswith("[RQ]")
    r = client.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}],
                                       max_completion_tokens=2)
    assert r.usage.completion_tokens == 2


def test_a_stop_string_ends_the_answer_where_the_model_writes_it(client, asked):
    # the model writes "<FINAL-ANSWER>" before the answer: stopping there leaves no final answer
    full = asked["sampled_text"]
    stop = "<FINAL-ANSWER>"
    assert stop in full
    r = client.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}], stop=[stop])
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    assert choice.message.model_extra["reasoning_content"] == full[: full.find(stop)]
    assert choice.message.model_extra["final_answer"] is None
    assert r.usage.completion_tokens < asked["counts"]["generated_tokens"]  # the row stopped, not cut afterwards
    # streamed: the same text, nothing of the stop string sent
    chunks = list(client.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}],
                                                 stop=stop, stream=True))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    assert reasoning == full[: full.find(stop)] and "<FINAL" not in reasoning
    # a stop string the model never writes changes nothing
    r = client.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}], stop="zzqx")
    assert r.choices[0].message.content == "Arthur's Magazine" and r.choices[0].model_extra["stop_reason"] is None


def test_sampling_with_a_seed_is_repeatable(client):
    kw = {"model": "onegen", "messages": [{"role": "user", "content": DERRICKSON}], "temperature": 0.9,
          "top_p": 0.9, "seed": 7, "max_tokens": 24}
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert a.choices[0].message.model_extra["reasoning_content"] == b.choices[0].message.model_extra["reasoning_content"]


BAD_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": ARTHUR}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, "messages.1.role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "see [RQ] here"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "Hi<|endoftext|>"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "q", "foo": 1}]}, "messages.0.foo"),
    ({"messages": [{"role": "user", "content": "q"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "q"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "q"}], "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": [{"role": "user", "content": "q"}], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "q"}], "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 1, "max_completion_tokens": 1},
     "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "q"}], "temperature": 11}, "temperature"),
    ({"messages": [{"role": "user", "content": "q"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "q"}], "functions": []}, "functions"),
]


@pytest.mark.parametrize("body, param", BAD_CHAT, ids=[f"{p}-{n}" for n, (_, p) in enumerate(BAD_CHAT)])
def test_a_bad_chat_request_is_a_400_in_openais_shape_naming_the_field(url, body, param):
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(f"{param}: ") and err["code"] == 400, err
    assert err["type"] == "invalid_request_error"


def test_neutral_values_a_client_library_sends_are_accepted(url):
    body = {"model": "onegen", "messages": [{"role": "user", "content": ARTHUR}], "n": 1, "logprobs": False,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "u-1",
            "response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "max_tokens": 48}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text and r.json()["choices"][0]["message"]["content"] == "Arthur's Magazine"


def test_the_client_raises_openais_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": ARTHUR}])
    assert e.value.body["param"] == "model" and "not served here" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="onegen", messages=[{"role": "system", "content": "x"},
                                                                 {"role": "user", "content": ARTHUR}])
    assert e.value.body["param"] == "messages.0.role"
    with pytest.raises(openai.BadRequestError) as e:  # refused before the stream starts: a status, not an event
        list(client.completions.create(model="onegen", prompt=["a", "b"], stream=True))
    assert e.value.body["param"] == "prompt"


def test_an_error_mid_stream_reaches_the_client_as_an_error(service, paths):
    """A stream whose generation fails after it started: the client raises OpenAI's APIError."""
    from tasks.serving.app import create_app, serve_in_thread

    cfg = tiny_params(paths).serve
    app = create_app(service, cfg)
    real = service.run_ask

    def failing(items):
        items[0][1].emit({"type": "token", "id": 0, "text": "x", "special": False})
        raise RuntimeError("boom")

    service.run_ask = failing
    try:
        with serve_in_thread(app) as u:
            c = openai.OpenAI(base_url=f"{u}/v1", api_key="unused", max_retries=0, timeout=60)
            with pytest.raises(openai.APIError) as e:
                list(c.chat.completions.create(model="onegen", messages=[{"role": "user", "content": ARTHUR}],
                                               stream=True, temperature=0.5))
            assert "boom" in str(e.value)
            raw = httpx.post(f"{u}/v1/chat/completions", json={"messages": [{"role": "user", "content": ARTHUR}],
                                                                 "stream": True, "temperature": 0.5}, timeout=60)
            records = [json.loads(line[5:]) for line in raw.text.splitlines()
                       if line.startswith("data:") and line.strip() != "data: [DONE]"]
            assert records[-1]["error"]["code"] == 500 and raw.text.rstrip().endswith("data: [DONE]")
    finally:
        service.run_ask = real


def test_the_routes_are_in_the_openapi_schema(url):
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths.keys()
