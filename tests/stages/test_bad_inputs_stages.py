"""Issue 16, stages: one bad record is a counted, reported skip under the skip-rate gate (never a crash,
never a silent drop); 0 records out is a failure; no output is replaced by an empty one unasked; the API
key never reaches a stored file or a log; a resume from outside the storage path and a checkpoint id that
disagrees with its weights or escapes a directory are refused."""
from __future__ import annotations

import gzip
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from onegen_core.config import load_params
from onegen_core.data import DataError

ROOT = Path(__file__).resolve().parents[2]
REUTERS = "entity_linking/elevant/reuters-128.benchmark.jsonl"


# --------------------------------------------------------------------------- a small project in tmp_path


def hotpot(shared_data) -> list[dict]:
    return json.loads((shared_data / "hotpotqa" / "train_sample.json").read_text())


def insert_text(article: dict, pos: int, text: str) -> dict:
    """`text` inserted at character `pos` of an ELEVANT article, every span after it shifted."""
    a = json.loads(json.dumps(article))
    a["text"] = a["text"][:pos] + text + a["text"][pos:]
    shift = lambda x: x + len(text) if x >= pos else x  # noqa: E731
    a["evaluation_span"] = [shift(a["evaluation_span"][0]), a["evaluation_span"][1] + len(text)]
    for lb in a["labels"]:
        lb["span"] = [shift(lb["span"][0]), shift(lb["span"][1])]
    return a


def make_params(tmp_path: Path, shared_data: Path, records: list[dict] | None = None, articles: list[dict] | None = None,
                **over):
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    hp = inp / "train.json"
    hp.write_text(json.dumps(records if records is not None else hotpot(shared_data)))
    el = inp / "reuters-128.benchmark.jsonl"
    if articles is None:
        articles = [json.loads(line) for line in (shared_data / REUTERS).read_text().splitlines()[:8]]
    el.write_text("".join(json.dumps(a) + "\n" for a in articles))
    settings = {
        "prepare.hotpotqa_train": [str(hp)], "prepare.hotpotqa_dev": "", "prepare.wiki2_eval": [],
        "prepare.elevant": [str(el)], "prepare.el_eval_benchmarks": [], "prepare.kb_passages": [],
        "prepare.kb_context_passages": [], "prepare.out_dir": str(tmp_path / "prepared"),
        "annotate.out_dir": str(tmp_path / "annotate"), "label.out_dir": str(tmp_path / "label"),
        "label.val_fraction": 0.1, **over,
    }
    return load_params(ROOT / "params.yaml", settings)


def prepare_and_annotate(p):
    from tasks import annotate, prepare

    report = prepare.run(p.prepare)
    annotate.run(p.annotate, str(Path(p.prepare.out_dir) / "multihop_train.jsonl"))
    return report


def decompositions(p) -> Path:
    return Path(p.annotate.out_dir) / "decompositions.jsonl"


# --------------------------------------------------------------------------- prepare


def test_prepare_counts_each_bad_record_by_field_and_leaves_no_temporary_file(tmp_path, shared_data):
    from tasks import prepare

    recs = hotpot(shared_data)
    recs[3]["supporting_facts"] = []
    recs[5]["context"][2][0] = recs[5]["context"][0][0]  # two paragraphs with one title
    p = make_params(tmp_path, shared_data, recs, **{"prepare.max_skip_rate": 0.05})
    text = Path(p.prepare.hotpotqa_train[0]).read_text()
    Path(p.prepare.hotpotqa_train[0]).write_text(text.replace(json.dumps(recs[7]["answer"]), '"\\ud800"', 1))
    report = prepare.run(p.prepare)
    entry = report["files"][p.prepare.hotpotqa_train[0]]
    assert (entry["records_in"], entry["records_out"], entry["skipped"]) == (100, 97, 3)
    assert entry["skipped_by_field"] == {"supporting_facts": 1, "context[2][0]": 1, "answer": 1}
    assert any("lone surrogate" in s for s in entry["skips"])
    assert report["multihop"]["train_questions"] == 97
    assert list(Path(p.prepare.out_dir).glob("*.tmp*")) == []


def test_zero_records_out_fails_the_gate_whatever_the_rate_and_keeps_the_outputs(tmp_path, shared_data):
    from tasks import prepare
    from tasks.stage_common import SkipRateExceeded

    p = make_params(tmp_path, shared_data)
    prepare.run(p.prepare)
    out = Path(p.prepare.out_dir) / "multihop_train.jsonl"
    before = out.read_text()
    bad = [{**r, "question": ""} for r in hotpot(shared_data)[:5]]
    p = make_params(tmp_path, shared_data, bad, **{"prepare.max_skip_rate": 1.0})
    with pytest.raises(SkipRateExceeded, match=r"train\.json: all 5 records skipped, 0 records out"):
        prepare.run(p.prepare)
    assert out.read_text() == before


def test_a_nan_skip_rate_cannot_switch_the_gate_off():
    from onegen_core.config import ConfigError

    with pytest.raises(ConfigError, match="prepare.max_skip_rate must be a finite number"):
        load_params(ROOT / "params.yaml", {"prepare.max_skip_rate": float("nan")})


def test_kb_context_passages_are_counted_and_gated(tmp_path, shared_data):
    from tasks import prepare
    from tasks.stage_common import SkipRateExceeded

    ctx = hotpot(shared_data)[:10]
    for r in ctx[:4]:  # 40 % malformed
        del r["answer"]
    f = tmp_path / "ctx.json"
    f.write_text(json.dumps(ctx))
    p = make_params(tmp_path, shared_data, **{"prepare.kb_context_passages": [str(f)]})
    with pytest.raises(SkipRateExceeded, match=r"ctx\.json: 4/10 records skipped"):
        prepare.run(p.prepare)
    ctx = hotpot(shared_data)
    del ctx[0]["answer"]  # 1 %: counted, reported under its own key
    f.write_text(json.dumps(ctx))
    report = prepare.run(p.prepare)
    entry = report["files"][f"{f} (kb_context_passages)"]
    assert (entry["records_in"], entry["skipped"], entry["skipped_by_field"]) == (100, 1, {"answer": 1})


def test_a_question_in_two_training_files_is_a_counted_skip(tmp_path, shared_data):
    from tasks import prepare

    recs = hotpot(shared_data)
    second = tmp_path / "second.json"
    dev = json.loads((shared_data / "hotpotqa" / "dev_distractor_sample.json").read_text())
    second.write_text(json.dumps([recs[0]] + dev[:99]))  # recs[0] is in the first file too
    p = make_params(tmp_path, shared_data, recs)
    p.prepare.hotpotqa_train.append(str(second))
    report = prepare.run(p.prepare)
    entry = report["files"][str(second)]
    assert entry["skipped_by_field"] == {"_id": 1} and "duplicate _id" in entry["skips"][0]
    assert report["multihop"]["train_questions"] == 199


def test_no_output_is_replaced_by_an_empty_one_unasked(tmp_path, caplog):
    from tasks.stage_common import EmptyOutputError, write_jsonl

    f = tmp_path / "out.jsonl"
    write_jsonl(f, [{"a": 1}, {"a": 2}])
    with pytest.raises(EmptyOutputError, match=r"out\.jsonl: 0 rows to write, the file holds 2; kept it"):
        write_jsonl(f, [])
    assert f.read_text() == '{"a": 1}\n{"a": 2}\n'
    # a setting that gives the output no input is named, and still no replacement unless the user says so
    with pytest.raises(EmptyOutputError, match=r"out\.jsonl: prepare\.wiki2_eval is empty, so this output would go "
                                               r"from 2 rows to none; kept it\. Set prepare\.allow_empty_outputs=true"):
        write_jsonl(f, [], "prepare.wiki2_eval is empty")
    assert f.read_text() == '{"a": 1}\n{"a": 2}\n'
    with caplog.at_level(logging.WARNING):
        write_jsonl(f, [], "prepare.wiki2_eval is empty", allow_empty=True)  # asked for: done, and said
    assert f.read_text() == "" and "replacing 2 rows with an empty output" in caplog.text


@pytest.mark.parametrize("override, output, words", [
    ({"wiki2_eval": []}, "2wiki_heldout.jsonl", "prepare.wiki2_eval is empty"),
    ({"dev_train_count": 1000}, "hotpotqa_heldout.jsonl", "prepare.dev_train_count (1000) takes all 150"),
    ({"elevant": [], "el_eval_benchmarks": []}, "kb.jsonl", "prepare.elevant is empty, so 0 entities"),
])
def test_a_setting_that_empties_a_prepare_output_is_an_error_naming_it(tmp_path, shared_data, override, output,
                                                                       words):
    """`-S prepare.wiki2_eval=[]` used to replace a non-empty file with an empty one after a warning."""
    import dataclasses

    from tasks import prepare
    from tasks.stage_common import EmptyOutputError

    p = make_params(tmp_path, shared_data, **{
        "prepare.wiki2_eval": [str(shared_data / "2wikimultihopqa" / "dev_sample.jsonl")],
        "prepare.hotpotqa_dev": str(shared_data / "hotpotqa" / "dev_distractor_sample.json"),
        "prepare.dev_train_count": 100})
    prepare.run(p.prepare)
    before = (Path(p.prepare.out_dir) / output).read_bytes()
    assert before
    changed = dataclasses.replace(p.prepare, **override)
    with pytest.raises(EmptyOutputError, match=re.escape(words)):
        prepare.run(changed)
    assert (Path(p.prepare.out_dir) / output).read_bytes() == before
    prepare.run(dataclasses.replace(changed, allow_empty_outputs=True))  # said explicitly: done
    assert (Path(p.prepare.out_dir) / output).read_bytes() == b""


def test_a_write_that_fails_keeps_the_old_file_and_no_temporary(tmp_path):
    from tasks.stage_common import write_jsonl

    f = tmp_path / "out.jsonl"
    write_jsonl(f, [{"a": 1}])
    with pytest.raises(ValueError, match=r"out\.jsonl: text not encodable as UTF-8"):
        write_jsonl(f, [{"a": "\ud800"}])
    assert f.read_text() == '{"a": 1}\n' and list(tmp_path.iterdir()) == [f]


# --------------------------------------------------------------------------- label


def test_label_skips_bad_decompositions_by_reason_and_trains_a_duplicate_once(tmp_path, shared_data):
    from tasks import label

    p = make_params(tmp_path, shared_data)
    prepare_and_annotate(p)
    lines = decompositions(p).read_text().splitlines()
    first = json.loads(lines[0])
    first["steps"][0]["doc_title"] = "No Such Paragraph"
    lines[0] = json.dumps(first)
    lines.append(lines[5])  # the same example twice
    decompositions(p).write_text("\n".join(lines) + "\n")
    report = label.run(p)
    assert report["multihop_examples"] == 99
    skipped = report["skipped"]["multihop"]
    assert sum(skipped.values()) == 2 and report["multihop_skipped"] == 2
    assert any("steps[…].doc_title" in reason for reason in skipped)
    msgs = report["skips"]
    assert any(f"{decompositions(p)}:1: field 'steps[0].doc_title': 'No Such Paragraph'" in m for m in msgs)
    assert any(f"{decompositions(p)}:101: duplicate decomposition" in m for m in msgs)
    ids = [json.loads(x)["id"] for f in ("train.jsonl", "val.jsonl") for x in (Path(p.label.out_dir) / f).open()]
    assert len(ids) == len(set(ids))


def test_missing_decompositions_are_counted_and_gated(tmp_path, shared_data):
    from tasks import label
    from tasks.stage_common import SkipRateExceeded

    p = make_params(tmp_path, shared_data)
    prepare_and_annotate(p)
    lines = decompositions(p).read_text().splitlines()
    decompositions(p).write_text("\n".join(lines[:-1]) + "\n")  # 1 of 100 missing: within the 2 %
    report = label.run(p)
    assert report["multihop_examples"] == 99
    assert report["skipped"]["multihop"] == {"no decomposition in decompositions.jsonl": 1}
    assert any(f"multihop_train.jsonl: record '{json.loads(lines[-1])['example_id']}': no decomposition" in m
               for m in report["skips"])
    decompositions(p).write_text("\n".join(lines[:50]) + "\n")  # 50 missing
    with pytest.raises(SkipRateExceeded, match=r"label: multi-hop records: 50/100 records skipped"):
        label.run(p)


def test_a_decomposition_line_that_is_not_json_names_file_and_line(tmp_path, shared_data):
    from tasks import label

    p = make_params(tmp_path, shared_data)
    prepare_and_annotate(p)
    good = decompositions(p).read_bytes().splitlines()
    lines = [b"\xef\xbb\xbf" + good[0], *good[1:]]  # a BOM at the start is fine
    lines[2] = b'{"example_id": "x", "steps": ['
    lines[3] = lines[3].replace(b'"', b'"\xff', 1)
    decompositions(p).write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as e:
        label.run(p)
    assert (e.value.file, e.value.record, e.value.field) == (str(decompositions(p)), "line 3", "<json>")
    lines[2] = good[2]
    decompositions(p).write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as e:
        label.run(p)
    assert (e.value.record, e.value.field) == ("line 4", "<encoding>") and "not valid UTF-8" in e.value.message


def test_a_literal_rq_in_an_entity_linking_article_is_escaped_not_a_crash(tmp_path, shared_data):
    from onegen_core.method.segments import Retrieval, Text
    from onegen_core.training.dataset import load_examples
    from tasks import label

    articles = [json.loads(line) for line in (shared_data / REUTERS).read_text().splitlines()[:8]]
    articles[0] = insert_text(articles[0], articles[0]["labels"][3]["span"][0], "[RQ] <CON> </MENTION> ")
    p = make_params(tmp_path, shared_data, articles=articles, **{"label.val_fraction": 0.0})
    prepare_and_annotate(p)
    report = label.run(p)
    assert report["el_articles_escaped"] == 1 and "entity_linking" not in report["skipped"]
    el = [e for e in load_examples(Path(p.label.out_dir) / "train.jsonl", ["entity_linking"]) if e.id.startswith("reuters-128/0@")]
    assert len(el) == 1
    ex = el[0]
    texts = "".join(s.text for s in ex.segments if isinstance(s, Text))
    assert "\uff3bRQ] \uff1cCON> \uff1c/MENTION>" in texts and "[RQ]" not in texts
    assert sum(isinstance(s, Retrieval) for s in ex.segments) == len(ex.queries) == 3  # Q790650 twice, Q713750


def test_label_never_writes_an_empty_training_file(tmp_path, shared_data):
    from tasks import label

    p = make_params(tmp_path, shared_data, **{"label.val_fraction": 0.99})
    prepare_and_annotate(p)
    report = label.run(p)
    assert report["train"] >= 1 and (Path(p.label.out_dir) / "train.jsonl").read_text().strip()


# --------------------------------------------------------------------------- secrets


KEY_ENV = "ONEGEN_BAD_INPUTS_KEY"
SECRET = "sk-bad-inputs-0f3a9c7e55d14b2a-ECHOED"


@pytest.fixture()
def echo_server(shared_data):
    """An OpenAI-compatible endpoint that answers well, and echoes the request's bearer token inside
    the successful completion (a sub-answer), as a careless proxy might."""
    from onegen_core.data import load_hotpotqa
    from onegen_core.prepare.decomposition import heuristic_decomposition, prompt_documents

    by_question = {r.question.strip(): r for r in load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            question = re.findall(r"^<QUESTION> (.*) </QUESTION>$", prompt, re.M)[-1]  # Fig. 13's input line
            rec = by_question[question]
            numbers = {p.title: n for n, p in enumerate(prompt_documents(rec), start=1)}
            echo = self.headers.get("Authorization", "")
            steps = "".join(f"<SUB-QUESTION-{k}>What of {s.doc_title}?</SUB-QUESTION-{k}>"
                            f"<CORRESPONDING-DOC-{k}>[{numbers[s.doc_title]}]</CORRESPONDING-DOC-{k}>"
                            f"<SUB-ANSWER-{k}>seen {echo}</SUB-ANSWER-{k}>"
                            for k, s in enumerate(heuristic_decomposition(rec).steps, start=1))
            content = steps + f"<FINAL-ANSWER>{rec.answer} ({echo})</FINAL-ANSWER>"
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_an_api_key_echoed_in_a_completion_is_stored_nowhere(tmp_path, shared_data, echo_server, monkeypatch, caplog):
    from tasks import annotate, label, prepare

    monkeypatch.setenv(KEY_ENV, SECRET)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    recs = hotpot(shared_data)[:20]
    p = make_params(tmp_path, shared_data, recs, **{
        "annotate.backend": "openai", "annotate.base_url": echo_server, "annotate.api_key_env": KEY_ENV,
        "annotate.model": "echo", "annotate.timeout_s": 5.0, "annotate.max_retries": 0, "annotate.max_concurrency": 4})
    with caplog.at_level(logging.DEBUG):
        prepare.run(p.prepare)
        report = annotate.run(p.annotate, str(Path(p.prepare.out_dir) / "multihop_train.jsonl"))
        label.run(p)
    assert report["accepted"] == 20
    written = [f.read_text() for d in (p.annotate.out_dir, p.label.out_dir) for f in Path(d).iterdir()]
    assert len(written) == 6 and all(SECRET not in text for text in written + [caplog.text])
    assert "Bearer ***" in (Path(p.annotate.out_dir) / "cache.jsonl").read_text()  # the echo was there, redacted


# --------------------------------------------------------------------------- trust boundaries


def test_resume_from_outside_the_storage_path_is_refused_unless_trusted(tmp_path, caplog):
    from tasks import train
    from tasks.adapters.train_checkpoint import UntrustedResume, check_resume_trust

    storage, outside = tmp_path / "runs" / "ray", tmp_path / "elsewhere" / "checkpoint_000001"
    storage.mkdir(parents=True)
    outside.mkdir(parents=True)
    inside = storage / "onegen-x" / "checkpoint_000001"
    inside.mkdir(parents=True)
    check_resume_trust(str(inside), str(storage), trusted=False)  # this project's own runs: fine
    with pytest.raises(UntrustedResume, match=r"resume_from=.*elsewhere.* is outside distributed\.storage_path"):
        check_resume_trust(str(outside), str(storage), trusted=False)
    with pytest.raises(UntrustedResume):  # a path that climbs out is outside too
        check_resume_trust(str(storage / ".." / ".." / "elsewhere" / "checkpoint_000001"), str(storage), trusted=False)
    with caplog.at_level(logging.WARNING):
        check_resume_trust(str(outside), str(storage), trusted=True)
    assert "distributed.trust_resume: resuming from" in caplog.text
    p = load_params(ROOT / "params.yaml", {"distributed.storage_path": str(storage),
                                           "distributed.resume_from": str(outside)})
    with pytest.raises(UntrustedResume):  # the driver refuses before anything runs (no fingerprint, no Ray)
        train.run(p)


def test_checkpoint_id_is_the_weights_digest_and_a_safe_path_component(tmp_path):
    import torch
    from safetensors.torch import save_file

    from onegen_core.method.backbone import META_FILE, checkpoint_id, weights_digest
    from tasks.adapters.result_cache import ResultCache

    ck = tmp_path / "ck"
    ck.mkdir()
    save_file({"w": torch.zeros(3)}, str(ck / "model.safetensors"))
    digest = weights_digest(ck)
    (ck / META_FILE).write_text(json.dumps({"checkpoint_id": digest}))
    assert checkpoint_id(ck) == digest
    (ck / META_FILE).write_text(json.dumps({"checkpoint_id": "0123456789abcdef"}))
    with pytest.raises(ValueError, match=rf"onegen\.json: field 'checkpoint_id' is '0123456789abcdef' but the weights' digest is '{digest}'"):
        checkpoint_id(ck)
    (ck / META_FILE).write_text(json.dumps({"checkpoint_id": "../../../escape"}))
    with pytest.raises(ValueError, match=r"field 'checkpoint_id' '\.\./\.\./\.\./escape' is not a safe path component"):
        checkpoint_id(ck)
    root = tmp_path / "runs" / "evaluate"
    with pytest.raises(ValueError, match="not a safe path component"):
        ResultCache(root, {"checkpoint_id": "../../outside"})
    assert not (tmp_path / "outside-").exists() and not root.exists()


def test_the_elevant_export_reads_bom_and_gzip_inputs(tmp_path, shared_data):
    from onegen_core.data import load_elevant
    from onegen_core.data.elevant import article_sources, write_linked_articles

    lines = (shared_data / REUTERS).read_text().splitlines()[:3]
    f = tmp_path / "reuters-128.benchmark.jsonl.gz"
    f.write_bytes(gzip.compress(("\ufeff" + "\n".join(lines) + "\n").encode("utf-8")))
    articles = load_elevant(f)
    write_linked_articles(articles, {}, article_sources([f]), tmp_path / "out", "exp", "a test", None)
    out = [json.loads(x) for x in (tmp_path / "out" / "exp.reuters-128.linked_articles.jsonl").read_text().splitlines()]
    assert [a["id"] for a in out] == [0, 1, 2] and out[0]["text"] == json.loads(lines[0])["text"]


def test_settings_that_leave_no_kb_page_keep_the_old_pages(tmp_path, shared_data):
    import dataclasses

    from tasks import prepare
    from tasks.stage_common import EmptyOutputError

    p = make_params(tmp_path, shared_data, **{
        "prepare.kb_context_passages": [str(shared_data / "hotpotqa" / "train_sample.json")]})
    prepare.run(p.prepare)
    pages = Path(p.prepare.out_dir) / "kb_pages.jsonl"
    before = pages.read_bytes()
    assert before
    with pytest.raises(EmptyOutputError, match="give no page, so this output would go empty; kept it"):
        prepare.run(dataclasses.replace(p.prepare, kb_context_passages=[]))
    assert pages.read_bytes() == before
