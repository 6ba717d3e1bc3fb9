"""Every `onegen` example of the README and docs/SERVING.md runs, and the examples fit the default run.

1. Each command line of their bash blocks is run against the tiny trained checkpoint (in-process through
   `flows.cli.main`; `onegen api` as a real process on a free loopback port, stopped by its PID), with
   the files it names made in a scratch folder and the index a copy of the tiny one. It must exit 0 and
   print what its comment says it prints.
2. The example question is one the default index can answer: a held-out question of the default
   params, so its passages are in `data/index/units` (the encode stage encodes the held-out questions'
   paragraphs); and the example text's linked entities are rows of the default entity table (`kb.jsonl`
   + `kb_pages.jsonl`), computed here by running the real prepare stage on ../shared/data.
The figures the examples show come from the real run (README: "after `make run`"); the tiny model only
proves that the commands work as written.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.serving.conftest import ARTHUR, OBAMA, cli_options

httpx = pytest.importorskip("httpx")
DOCS = [ROOT / "README.md", ROOT / "docs" / "SERVING.md"]


def example_commands() -> list[tuple[str, str]]:
    """(document, command line) of every `onegen ask|link|index|api` line in the bash blocks of DOCS,
    comments removed."""
    out = []
    for doc in DOCS:
        in_bash = False
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                in_bash = line.strip() == "```bash"
                continue
            cmd = line.split("  #")[0].strip()
            # the model's commands (the pipeline's own, repro/sweep/serve/ui, are tested by tests/flows)
            if in_bash and re.match(r"^(\w+=\S+ )?onegen (ask|link|index|api)\b", cmd):
                out.append((doc.name, cmd))
    return out


def test_the_documents_have_examples_of_every_command():
    verbs = {shlex.split(c.split("onegen ", 1)[1])[0] for _, c in example_commands()}
    assert verbs >= {"ask", "link", "index", "api"}


@pytest.fixture()
def scratch(tmp_path, paths, monkeypatch):
    """A folder with every file the examples name, and a copy of the tiny index they may write to."""
    (tmp_path / "questions.txt").write_text(f"{ARTHUR}\n")
    (tmp_path / "article.txt").write_text(OBAMA)
    (tmp_path / "articles.jsonl").write_text(json.dumps({"id": 1, "text": OBAMA}) + "\n")
    (tmp_path / "my_docs.jsonl").write_text(json.dumps({"id": "d1", "title": "Notes", "text": "A note. Another."}) + "\n")
    (tmp_path / "kb.jsonl").write_text(json.dumps({"id": "Q1", "title": "Thing", "text": "A thing."}) + "\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Notes\n\nA passage of notes.\n")
    shutil.copytree(paths["index"], tmp_path / "index")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_in_process(capsys, argv: list[str]) -> str:
    from flows.cli import main

    capsys.readouterr()
    main(argv)
    return capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(argv: list[str], env: dict[str, str]) -> None:
    """Start `onegen api` as the user would, check it answers on loopback, stop exactly it."""
    port = _free_port()
    if "--host" in argv:  # the example binds 0.0.0.0 with a key; a test stays on loopback
        argv[argv.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv, "--port", str(port)], cwd=os.getcwd(),
                            env={**os.environ, **env, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "onegen api did not start"
            time.sleep(0.3)
        key = env.get("ONEGEN_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/ask", json={"question": ARTHUR}, headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["answer"], r.text
        if key:
            assert httpx.post(f"http://127.0.0.1:{port}/v1/ask", json={"question": ARTHUR}, timeout=60).status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what this test started
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


EXPECT = {"ask": "answer:", "link": "->", "info": "rows", "check": "ok", "repair": "rows", "add": "documents"}


@pytest.mark.slow
@pytest.mark.parametrize("doc, line", example_commands(), ids=[f"{d}:{c[:60]}" for d, c in example_commands()])
def test_each_example_runs_on_a_trained_checkpoint(capsys, scratch, paths, doc, line):
    env = {}
    words = shlex.split(line)
    while "=" in words[0]:  # VAR=value before the command
        name, _, value = words.pop(0).partition("=")
        env[name] = "readme-example-key" if value == "…" else value
    assert words[0] == "onegen"
    argv, redirect = words[1:], None
    if ">" in argv:
        redirect = argv[argv.index(">") + 1]
        argv = argv[:argv.index(">")]
    opts = cli_options(paths, index=str(scratch / "index"))
    if argv[0] == "api":
        _api([*argv, *opts], env)
        return
    if argv[:2] == ["index", "add"] and "--table" in argv and argv[argv.index("--table") + 1] == "entities":
        opts += ["--update"]  # the tiny entity table holds ids the example file may reuse
    out = _run_in_process(capsys, [*argv, *opts])
    if redirect:
        Path(redirect).write_text(out)
    verb = argv[1] if argv[0] == "index" else argv[0]
    if "--json" in argv:
        assert all(json.loads(x) for x in out.splitlines()) and out.strip(), out
    else:
        assert EXPECT[verb] in out, out


# ------------------------------------------------------------------------------------------ the default run

@pytest.fixture(scope="module")
def default_prepared(tmp_path_factory):
    """The prepare stage's outputs under the default params (the held-out questions, the KB and pages)."""
    from onegen_core.config import load_params
    from tasks import prepare

    out = tmp_path_factory.mktemp("prepared")
    p = load_params(ROOT / "params.yaml", {"prepare.out_dir": str(out)})
    cwd = os.getcwd()
    os.chdir(ROOT)  # params name ../shared/data relative to the project
    try:
        prepare.run(p.prepare)
    finally:
        os.chdir(cwd)
    return out


def _example(verb: str) -> str:
    """The quoted argument of the first `onegen VERB "…"` example of the README."""
    for _, line in example_commands():
        words = shlex.split(line)
        if words[1] == verb and len(words) > 2 and not words[2].startswith("-"):
            return words[2]
    raise AssertionError(f"no `onegen {verb} \"…\"` example")


def test_the_example_question_is_held_out_so_the_default_index_holds_its_passages(default_prepared):
    question = _example("ask")
    held = [json.loads(x) for x in (default_prepared / "hotpotqa_heldout.jsonl").read_text().splitlines()]
    held += [json.loads(x) for x in (default_prepared / "2wiki_heldout.jsonl").read_text().splitlines()]
    match = [r for r in held if r["question"] == question]
    assert match, f"the README's example question is not a held-out question of the default run: {question!r}"


def test_the_example_texts_entities_are_in_the_default_entity_table(default_prepared):
    readme = (ROOT / "docs" / "SERVING.md").read_text(encoding="utf-8")
    block = readme.split("hidden state searches `entities`. The terminal output", 1)[1].split("```")[1]
    first = block.strip().splitlines()[0]  # the text marked up: [span](entity id), `?` for NIL
    linked = [i for i in re.findall(r"\]\(([^)]*)\)", first) if i != "?"]
    assert linked, "the SERVING.md link output shows no linked entity"
    ids = {json.loads(x)["id"] for f in ("kb.jsonl", "kb_pages.jsonl")
           for x in (default_prepared / f).read_text().splitlines()}
    assert set(linked) <= ids, set(linked) - ids
    # the output shown is the README's own example text, marked up
    shown = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", first)
    assert shown == _example("link")
