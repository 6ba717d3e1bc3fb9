"""Entity-linking evaluation: constrained copy decoding keeps exact character offsets, ED predicts
once per gold mention, and InKB micro scores follow ELEVANT's rules on a hand-built article."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onegen_core.data.elevant import ElevantArticle, ElevantLabel
from onegen_core.evaluation.linking import (
    PredictedMention,
    Window,
    disambiguate_windows,
    gold_by_article,
    held_out_articles,
    link_windows,
    score_linking,
    windows_of,
)
from onegen_core.inference.copy_constraint import CopyConstraint
from onegen_core.inference.generation import RetrievalPolicy, generate
from onegen_core.inference.index import ExactIndex, UnitRecord
from onegen_core.inference.token_bytes import token_bytes
from onegen_core.method.tokens import CON, MENTION_CLOSE, MENTION_OPEN, RQ, SpecialTokenIds

TEXT = "Paris and Berlin met Obama here."


def label(i, s, e, qid, **kw):
    return ElevantLabel(s, e, qid, TEXT[s:e], None, kw.pop("parent", None), (), i, **kw)


ARTICLE = ElevantArticle(
    id=7, title="t", text=TEXT, evaluation_span=(0, 27), benchmark="toy",
    labels=(label(0, 0, 5, "Q90"), label(1, 10, 16, "Q64", optional=True), label(2, 21, 26, "Q76"),
            label(3, 27, 31, "<NIL>")),
)


def test_token_bytes_round_trip(char_tokenizer):
    tb = token_bytes(char_tokenizer)
    text = "Zürich – café"
    ids = char_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(tb[i] for i in ids).decode("utf-8") == text
    ids_special = SpecialTokenIds.from_tokenizer(char_tokenizer)
    assert tb[ids_special.rq] is None and tb[ids_special.eos] is None


def test_allowed_tokens_follow_the_text(char_tokenizer):
    ids = SpecialTokenIds.from_tokenizer(char_tokenizer)
    c = CopyConstraint(char_tokenizer, ["A b"], [0])
    first = c.allowed(0)
    assert ids[MENTION_OPEN] in first and ids[MENTION_CLOSE] not in first
    assert all(c.vocab_bytes[t] == b"A" for t in first if t != ids[MENTION_OPEN])
    c._advance(0, [ids[MENTION_OPEN]])
    assert ids[MENTION_CLOSE] not in c.allowed(0)  # no empty mention
    c._advance(0, [ids[MENTION_OPEN], char_tokenizer.convert_tokens_to_ids("A")])
    after_a = c.allowed(0)
    assert ids[MENTION_CLOSE] in after_a
    c._advance(0, [ids[MENTION_OPEN], char_tokenizer.convert_tokens_to_ids("A"), ids[MENTION_CLOSE]])
    assert c.allowed(0) == [ids.rq]  # [RQ] always follows </MENTION>
    assert c.spans[0] == [(0, 1)]


def test_text_is_copied_as_training_tokenised_it_and_brackets_sit_at_word_boundaries():
    """With merges in the vocabulary the rest of the text can be spelled many ways; only the tokenizer's
    own encoding (of the rest, or of the text up to a boundary where a bracket may follow) is allowed."""
    from onegen_core.method.backbone import train_bpe_tokenizer
    from onegen_core.method.tokens import add_special_tokens

    tok = train_bpe_tokenizer(["Japan is in Asia. Japan and Asia."] * 50, vocab_size=300, min_frequency=1)
    add_special_tokens(tok)
    ids = SpecialTokenIds.from_tokenizer(tok)
    text = "Japan is in Asia."
    c = CopyConstraint(tok, [text], [0])
    canonical = tok(text, add_special_tokens=False)["input_ids"]
    first = c.allowed(0)
    assert canonical[0] in first and ids[MENTION_OPEN] in first
    single_j = tok.convert_tokens_to_ids("J")
    assert tok.convert_ids_to_tokens(canonical[0]) != "J" and single_j not in first  # no off-training spelling
    # every allowed text token is the first token of the encoding of text[0:q] for some boundary q
    starts = {tok(text[:q], add_special_tokens=False)["input_ids"][0] for q in range(1, len(text) + 1)
              if q == len(text) or not (text[q - 1].isalnum() and text[q].isalnum())}
    assert {t for t in first if t != ids[MENTION_OPEN]} <= starts
    # inside a word no bracket: after <MENTION> and the first token of "Japan", if that token is a part
    # of the word, </MENTION> is not offered
    c._advance(0, [ids[MENTION_OPEN]])
    t0 = tok(text, add_special_tokens=False)["input_ids"][0]
    c._advance(0, [ids[MENTION_OPEN], t0])
    n = len(c.vocab_bytes[t0])
    assert (ids[MENTION_CLOSE] in c.allowed(0)) == (not (text[n - 1].isalnum() and text[n].isalnum()))


def test_constrained_generation_copies_exactly(char_tokenizer, tiny_lm):
    """Whatever an untrained model prefers, the output minus markup is the input, and spans index it."""
    tiny_lm.eval()
    texts = ["Zürich – café at noon", "Paris and Berlin"]
    prompts = [char_tokenizer(t + "\n", add_special_tokens=False)["input_ids"] for t in texts]
    chooser = CopyConstraint(char_tokenizer, texts, [len(p) for p in prompts])
    # bias the untrained model towards opening mentions so the test exercises the brackets
    open_id = SpecialTokenIds.from_tokenizer(char_tokenizer)[MENTION_OPEN]
    close_id = SpecialTokenIds.from_tokenizer(char_tokenizer)[MENTION_CLOSE]

    def biased(row, logits, seq):
        logits = logits.clone()
        logits[open_id] += 10.0  # opens wherever a bracket may stand (word starts)
        logits[close_id] += 5.0
        return chooser(row, logits, seq)

    index = ExactIndex([UnitRecord("e1", "e1", "E", "x", "x")], np.ones((1, tiny_lm.config.hidden_size)), "ck")
    res = generate(tiny_lm, char_tokenizer, prompts, index, RetrievalPolicy(mode="link", max_new_tokens=200,
                                                                            max_retrievals=50), choose=biased)
    for b, (t, r) in enumerate(zip(texts, res)):
        chooser._advance(b, r.prompt_ids + r.token_ids)
        plain = r.text
        for tok in (MENTION_OPEN, MENTION_CLOSE, RQ, CON):
            plain = plain.replace(tok, "")
        assert r.finish_reason == "eos" and plain == t
        assert len(chooser.spans[b]) == len(r.retrievals) > 0
        for s, e in chooser.spans[b]:
            assert 0 <= s < e <= len(t) and not t[s].isspace() and not t[e - 1].isspace()
            assert f"{MENTION_OPEN}{t[s:e]}{MENTION_CLOSE}" in r.text


def _biased_link_run(lm, tokenizer, texts: list[str], index, draft: int, max_new_tokens: int, hooks=None):
    """Constrained linking of `texts` with a chooser that opens mentions at some word starts (so guesses
    get rejected there) and drafts from the text; returns (results, EngineStats)."""
    from onegen_core.inference.generation import EngineStats

    prompts = [tokenizer(t + "\n", add_special_tokens=False)["input_ids"] for t in texts]
    ids = SpecialTokenIds.from_tokenizer(tokenizer)
    chooser = CopyConstraint(tokenizer, texts, [len(p) for p in prompts])

    class Biased:
        def __call__(self, row, logits, seq):
            logits = logits.clone()
            logits[ids[MENTION_OPEN]] += 4.0
            logits[ids[MENTION_CLOSE]] += 3.0
            return chooser(row, logits, seq)

        def draft(self, row, seq, n):
            return chooser.draft(row, seq, n)

    stats = EngineStats()
    policy = RetrievalPolicy(mode="link", max_new_tokens=max_new_tokens, max_retrievals=50, draft_tokens=draft)
    return generate(lm, tokenizer, prompts, index, policy, choose=Biased(), stats=stats, hooks=hooks), stats


def test_drafted_copying_gives_the_same_tokens_in_fewer_passes(char_tokenizer, tiny_lm):
    """Feeding the text's next tokens as guesses and keeping those the greedy choice agrees with yields the
    very tokens, mentions and retrievals of one token a pass; rejected guesses leave no trace."""
    tiny_lm.eval()
    texts = ["Paris and Berlin are cities of Europe", "Rome", "Zürich – café at noon, then Lyon"]
    rng = np.random.default_rng(0)
    records = [UnitRecord(q, q, q, q, q) for q in ("Q1", "Q2", "Q3")]
    index = ExactIndex(records, rng.normal(size=(3, tiny_lm.config.hidden_size)), "ck")

    def run(draft: int):
        return _biased_link_run(tiny_lm, char_tokenizer, texts, index, draft, max_new_tokens=200)

    plain, s0 = run(0)
    drafted, s6 = run(6)
    assert s0.draft_tokens_fed == 0
    assert 0 < s6.draft_tokens_kept < s6.draft_tokens_fed  # guesses were both kept and rejected
    assert s6.forward_passes < s0.forward_passes
    assert sum(len(r.retrievals) for r in plain) > 0
    for a, b in zip(plain, drafted):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert [(e.position, e.ids) for e in a.retrievals] == [(e.position, e.ids) for e in b.retrievals]
        np.testing.assert_allclose(a.query_vectors, b.query_vectors, atol=1e-4)
    with pytest.raises(ValueError, match="draft_tokens"):
        RetrievalPolicy(draft_tokens=65)


@pytest.mark.parametrize("max_new_tokens", [5, 12, 23])
def test_drafting_respects_the_length_cap_and_streams_the_same_tokens(char_tokenizer, tiny_lm, max_new_tokens):
    """Under a token cap that falls inside a run of guesses, drafting stops where one token a pass stops:
    the same tokens, finish reasons and retrievals, and the streaming hooks see the same tokens in order
    (kept guesses are reported as they enter the sequence, rejected ones never)."""
    from onegen_core.inference.generation import StreamHooks

    tiny_lm.eval()
    texts = ["Paris and Berlin are cities of Europe", "Zürich – café at noon, then Lyon"]
    rng = np.random.default_rng(1)
    records = [UnitRecord(q, q, q, q, q) for q in ("Q1", "Q2")]
    index = ExactIndex(records, rng.normal(size=(2, tiny_lm.config.hidden_size)), "ck")

    def run(draft: int):
        streamed: dict[int, list[int]] = {0: [], 1: []}
        hooks = StreamHooks(on_token=lambda b, t: streamed[b].append(t))
        res, stats = _biased_link_run(tiny_lm, char_tokenizer, texts, index, draft, max_new_tokens, hooks)
        return res, streamed, stats

    plain, s_plain, st0 = run(0)
    drafted, s_drafted, st8 = run(8)
    assert st8.draft_tokens_fed > 0 and st8.forward_passes < st0.forward_passes
    for b, (a, d) in enumerate(zip(plain, drafted)):
        assert a.finish_reason == d.finish_reason == "length"
        assert d.token_ids == a.token_ids
        assert [(e.position, e.ids) for e in a.retrievals] == [(e.position, e.ids) for e in d.retrievals]
        assert s_drafted[b] == s_plain[b]
        # sampled tokens never exceed the cap: the only extra tokens are the [CON] fed after each [RQ]
        assert len(d.token_ids) - len(d.retrievals) <= max_new_tokens


def test_score_linking_follows_inkb_rules():
    preds = {"toy/7": [PredictedMention(0, 5, "Q90"), PredictedMention(10, 16, "Q1"),  # optional: ignored
                       PredictedMention(21, 26, "Q5"), PredictedMention(17, 20, "Q7"),
                       PredictedMention(27, 31, "Q9")]}  # outside the evaluation span: ignored
    s = score_linking([ARTICLE], preds)
    assert (s["all"]["md"]["tp"], s["all"]["md"]["fp"], s["all"]["md"]["fn"]) == (2, 1, 0)
    assert (s["all"]["el"]["tp"], s["all"]["el"]["fp"], s["all"]["el"]["fn"]) == (1, 2, 1)
    assert s["all"]["el"]["precision"] == pytest.approx(1 / 3) and s["all"]["el"]["recall"] == 0.5
    assert s["toy"] == s["all"]
    nothing = score_linking([ARTICLE], {})
    assert nothing["all"]["el"]["fn"] == 2 and nothing["all"]["el"]["f1"] == 0.0


def _benchmark_file(folder, name: str, ids: list[int]):
    import json

    path = folder / f"{name}.benchmark.jsonl"
    path.write_text("".join(json.dumps({"id": i, "title": "", "text": TEXT, "labels": []}) + "\n" for i in ids))
    return str(path)


def test_held_out_articles_filter_cap_and_refuse_trained_benchmarks(tmp_path):
    import json

    files = [_benchmark_file(tmp_path, "msnbc", [1, 2, 3]), _benchmark_file(tmp_path, "kore50", [7]),
             _benchmark_file(tmp_path, "empty", [])]
    split = tmp_path / "el_split.json"  # absent: nothing was trained on
    assert [a.key for a in held_out_articles(files, [], 0, split)] == ["msnbc/1", "msnbc/2", "msnbc/3", "kore50/7"]
    assert [a.key for a in held_out_articles(files, ["kore50"], 0, split)] == ["kore50/7"]
    assert [a.key for a in held_out_articles(files, [], 2, split)] == ["msnbc/1", "msnbc/2", "kore50/7"]
    split.write_text(json.dumps({"benchmarks": {"train": ["msnbc"], "eval": ["kore50"]}}))
    assert [a.key for a in held_out_articles(files, ["kore50"], 0, split)] == ["kore50/7"]  # the trained one unread
    with pytest.raises(ValueError, match=r"evaluate\.elevant: .*msnbc\.benchmark\.jsonl \(msnbc\) is a training "
                                         r"benchmark in .*el_split\.json; evaluate only on held-out benchmarks"):
        held_out_articles(files, [], 0, split)


def test_windows_cover_the_text_without_gold():
    art = ElevantArticle(1, "", "word " * 100, None, (), "toy")
    wins = windows_of([art], 64)
    assert "".join(w.text for w in wins) == art.text and all(len(w.text) <= 64 for w in wins)
    assert [w.offset for w in wins] == sorted(w.offset for w in wins)


def test_disambiguation_predicts_every_gold_mention(char_tokenizer, tiny_lm):
    tiny_lm.eval()
    records = [UnitRecord(q, q, q, q, q) for q in ("Q90", "Q76", "Q5")]
    rng = np.random.default_rng(0)
    index = ExactIndex(records, rng.normal(size=(3, tiny_lm.config.hidden_size)), "ck")
    win = Window("toy/7@0", "toy/7", 0, TEXT)
    gold = gold_by_article([ARTICLE])
    preds, counts = disambiguate_windows(tiny_lm, char_tokenizer, [win], gold, index)
    assert sorted((p.start, p.end) for p in preds["toy/7"]) == [(0, 5), (21, 26)]
    assert all(p.entity_id in {"Q90", "Q76", "Q5"} for p in preds["toy/7"])
    assert counts["mentions"] == 2 and counts["mentions_truncated"] == 0
    cut, counts = disambiguate_windows(tiny_lm, char_tokenizer, [win], gold, index, max_length=50)
    assert counts["mentions_truncated"] == 1  # prompt 33 tokens: [RQ] 1 at 40, [RQ] 2 at 65 > 50: unlinked, counted
    assert sorted((p.start, p.entity_id is None) for p in cut["toy/7"]) == [(0, False), (21, True)]


def test_link_windows_counts_every_window(char_tokenizer, tiny_lm):
    tiny_lm.eval()
    index = ExactIndex([UnitRecord("Q1", "Q1", "A", "a", "a")], np.ones((1, tiny_lm.config.hidden_size)), "ck")
    wins = [Window("toy/1@0", "toy/1", 0, "Alpha beta."), Window("toy/1@11", "toy/1", 11, " Gamma.")]
    torch.manual_seed(0)
    preds, finish = link_windows(tiny_lm, char_tokenizer, wins, index, max_retrievals=2, batch_size=2)
    assert sum(finish.values()) == 2
    for p in preds.get("toy/1", []):
        full = "Alpha beta. Gamma."
        assert 0 <= p.start < p.end <= len(full)


def test_exact_span_and_elevant_rules_on_a_hand_built_article():
    """The worked example that ELEVANT's own code scores (IGNORED mode): NER tp/fp/fn 3/2/1 and
    linking ('all') 2/4/4. Our exact-span strong matching on the same predictions differs."""
    from onegen_core.data.elevant import ElevantArticle, ElevantLabel
    from onegen_core.evaluation.linking import PredictedMention, score_elevant, score_linking

    text = "Angela Merkel met Obama in Paris and Berlin. She said the city was nice. Kohl's aide wrote."
    gold = [((0, 13), "Q567"), ((18, 23), "Q76"), ((27, 32), "Q90"), ((37, 43), "Q64"), ((45, 48), "Q567"),
            ((54, 62), "Q90"), ((73, 77), "<NIL>")]
    labels = tuple(ElevantLabel(s, e, q, "Unknown" if q == "<NIL>" else "n", None, None, (), id=i)
                   for i, ((s, e), q) in enumerate(gold))
    art = ElevantArticle(0, "", text, (0, len(text)), labels, "hand")
    preds = {"hand/0": [PredictedMention(0, 13, "Q567"), PredictedMention(18, 23, "Q30"),
                        PredictedMention(27, 32, None), PredictedMention(37, 43, "<NIL>"),
                        PredictedMention(45, 48, "Q567"), PredictedMention(73, 79, "Q2518"),
                        PredictedMention(80, 84, "Q123"), PredictedMention(67, 71, "<NIL>"),
                        PredictedMention(85, 90, None)]}
    el = score_elevant([art], preds)["all"]
    assert (el["ner"]["tp"], el["ner"]["fp"], el["ner"]["fn"]) == (3, 2, 1)
    assert (el["linking"]["tp"], el["linking"]["fp"], el["linking"]["fn"]) == (2, 4, 4)
    ours = score_linking([art], preds)["all"]
    # exact spans, InKB: Merkel and She link; Kohl's (73,79) is not the NIL gold span (73,77)
    assert (ours["el"]["tp"], ours["el"]["fn"]) == (2, 4)


def test_elevant_word_boundary_and_coreference():
    from onegen_core.evaluation.linking import is_coreference, word_boundary

    assert word_boundary((0, 6), "Albert's birthplace is Ulm.") == (0, 8)
    assert word_boundary((1, 19), '"Hearts and Flowers" is a song.') == (0, 20)
    assert word_boundary((0, 6), "Soviet-backed government.") == (0, 6)
    assert word_boundary((0, 2), "Ulm") == (0, 2)  # never grows over the last character
    assert is_coreference("She") and is_coreference("the city") and is_coreference("the 1990s")
    assert not is_coreference("The Beatles") and not is_coreference("US") and is_coreference("I")
