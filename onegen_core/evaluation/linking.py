"""End-to-end entity linking evaluation (G→R) on ELEVANT benchmark articles.

Linking (MD and EL): the model rewrites each window of the article, marking mentions as
`<MENTION>span</MENTION>[RQ]<CON>`; each [RQ]'s hidden state retrieves from the encoded entity KB.
Decoding is constrained to copy the input (`CopyConstraint`): at each step the model may only choose a
token whose bytes continue the input text, or a mention bracket at a character boundary, so every
predicted span maps to exact character offsets of the article. The choice among those is the model's
(greedy); [RQ] is forced after `</MENTION>` because training always puts it there.

Disambiguation (ED): gold mentions are given. The window is encoded as training encodes it (gold
mention markup, [RQ]<CON> after each) and each [RQ] hidden state of that single forward pass retrieves.

Scores are InKB micro precision/recall/F1 (ELEVANT/GERBIL strong matching) over (article, start, end,
entity) tuples; MD over (article, start, end). Gold: top-level labels with a Wikidata id inside the
article's evaluation span. Labels ELEVANT marks optional or coreference are not required, and a
prediction on exactly their span is neither credited nor charged.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.data.elevant import ElevantArticle, load_elevant
from onegen_core.evaluation.metrics import prf_counts, prf_from_counts
from onegen_core.inference.copy_constraint import CopyConstraint
from onegen_core.inference.generation import EngineStats, RetrievalPolicy, generate
from onegen_core.inference.index import VectorIndex
from onegen_core.inference.token_bytes import token_bytes
from onegen_core.method.encoding import SegmentTokenizer, encode_example
from onegen_core.prepare.data_text import escape_data_text
from onegen_core.prepare.entity_linking import Mention, reconstruct_entity_linking
from onegen_core.prepare.labelling import text_windows


@dataclass(frozen=True)
class Window:
    key: str  # "{benchmark}/{article id}@{offset}"
    article: str  # "{benchmark}/{article id}"
    offset: int  # window start in the article text (characters)
    text: str


@dataclass
class PredictedMention:
    start: int  # article character offsets, end exclusive
    end: int
    entity_id: str | None  # None: marked but not linked (retrieval cap, nothing retrievable)
    score: float | None = None
    candidates: list[str] = field(default_factory=list)


def article_key(a: ElevantArticle) -> str:
    return a.key


def held_out_articles(paths: Sequence[str], benchmarks: Collection[str], max_articles: int,
                      split_file: Path) -> list[ElevantArticle]:
    """The articles to link from the benchmark files `paths`: those of `benchmarks` (empty = every file),
    at most `max_articles` per file (0 = all). A benchmark the prepare stage put in training (its
    `el_split.json`, `split_file`) is refused: a score on articles the model was trained on means nothing."""
    trained = set(json.loads(split_file.read_text())["benchmarks"]["train"]) if split_file.is_file() else set()
    articles: list[ElevantArticle] = []
    for path in paths:
        arts = load_elevant(path)
        if not arts:
            continue
        bench = arts[0].benchmark
        if benchmarks and bench not in benchmarks:
            continue
        if bench in trained:
            raise ValueError(f"evaluate.elevant: {path} ({bench}) is a training benchmark in {split_file}; "
                             "evaluate only on held-out benchmarks (prepare.el_eval_benchmarks)")
        articles += arts[:max_articles] if max_articles else arts
    return articles


def windows_of(articles: Sequence[ElevantArticle], max_chars: int) -> list[Window]:
    """Windows as training cut them, except that no gold span steers the cut (evaluation must not
    see gold boundaries). Their text is escaped as training escaped its articles (`escape_data_text`:
    one character for one, so offsets into the window are offsets into the article)."""
    out = []
    for a in articles:
        for s, e in text_windows(a.text, [], max_chars):
            if a.text[s:e].strip():
                out.append(Window(f"{article_key(a)}@{s}", article_key(a), s, escape_data_text(a.text[s:e])))
    return out


def gold_sets(a: ElevantArticle) -> tuple[set[tuple], set[tuple]]:
    """(required InKB gold (article, start, end, entity), spans to ignore (article, start, end))."""
    lo, hi = a.evaluation_span or (0, len(a.text))
    key = article_key(a)
    required, ignore = set(), set()
    for lb in a.labels:
        if not (lo <= lb.span_start and lb.span_end <= hi):
            continue
        if lb.parent is None and lb.is_linkable and not (lb.optional or lb.coref):
            required.add((key, lb.span_start, lb.span_end, lb.entity_id))
        elif lb.optional or lb.coref or lb.parent is not None:
            ignore.add((key, lb.span_start, lb.span_end))
    return required, ignore


def length_order(windows: Sequence[Window]) -> list[int]:
    """The order `link_windows` batches windows in: by text length (a batch's rows copy texts of similar
    length, so they finish together), ties in input order. A distributed run cuts the same batches."""
    return sorted(range(len(windows)), key=lambda i: len(windows[i].text))


def link_windows(
    model,
    tokenizer,
    windows: Sequence[Window],
    index: VectorIndex,
    max_retrievals: int = 64,
    batch_size: int = 8,
    checkpoint_id: str | None = None,
    on_batch: Callable[[int], None] | None = None,
    stats: EngineStats | None = None,
    compact: bool = True,
    draft_tokens: int = 0,
) -> tuple[dict[str, list[PredictedMention]], Counter]:
    """Constrained G→R generation over every window. Returns predictions per article and a count of
    windows by finish reason (a window that hits the length or retrieval cap keeps the mentions it
    completed; its remaining gold mentions stay in the denominator). compact: `generate`'s;
    draft_tokens: `RetrievalPolicy.draft_tokens` (the window's own text is the guess)."""
    tok = SegmentTokenizer(tokenizer)
    vocab_bytes = token_bytes(tokenizer)
    by_article: dict[str, list[PredictedMention]] = {}
    finish: Counter = Counter()
    order = length_order(windows)
    for i in range(0, len(order), batch_size):
        batch = [windows[j] for j in order[i:i + batch_size]]
        prompts = [tok.prompt(w.text + "\n") for w in batch]
        text_tokens = max(len(tok(w.text)) for w in batch)
        policy = RetrievalPolicy(mode="link", max_retrievals=max_retrievals,
                                 max_new_tokens=2 * text_tokens + 4 * max_retrievals + 8, draft_tokens=draft_tokens)
        chooser = CopyConstraint(tokenizer, [w.text for w in batch], [len(p) for p in prompts], vocab_bytes)
        results = generate(model, tokenizer, prompts, index, policy, checkpoint_id=checkpoint_id,
                           choose=chooser, stats=stats, compact=compact)
        for b, (w, res) in enumerate(zip(batch, results)):
            chooser._advance(b, res.prompt_ids + res.token_ids)
            finish[res.finish_reason] += 1
            preds = by_article.setdefault(w.article, [])
            for k, (s, e) in enumerate(chooser.spans[b]):
                ev = res.retrievals[k] if k < len(res.retrievals) else None
                top = ev.ids[0] if ev and ev.ids else None
                preds.append(PredictedMention(w.offset + s, w.offset + e, top,
                                              ev.scores[0] if top else None, list(ev.ids) if ev else []))
        if on_batch:
            on_batch(len(batch))
    return by_article, finish


@torch.no_grad()
def disambiguate_windows(
    model,
    tokenizer,
    windows: Sequence[Window],
    gold: dict[str, set[tuple]],
    index: VectorIndex,
    max_length: int = 4096,
    top_k: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, list[PredictedMention]], Counter]:
    """ED: each gold mention (article, start, end, entity) inside a window gets the entity its
    teacher-forced [RQ] retrieves. Mentions whose [RQ] falls past `max_length` are counted, unlinked."""
    tok = SegmentTokenizer(tokenizer)
    lm = getattr(model, "lm", model)
    decoder = lm.get_decoder()
    device = next(lm.parameters()).device
    out: dict[str, list[PredictedMention]] = {}
    counts: Counter = Counter()
    for w in windows:
        lo, hi = w.offset, w.offset + len(w.text)
        inside = sorted((g for g in gold.get(w.article, ()) if lo <= g[1] and g[2] <= hi), key=lambda g: g[1])
        if inside:
            mentions = [Mention(g[1] - lo, g[2] - lo, g[3]) for g in inside]
            ex = reconstruct_entity_linking(w.key, w.text, mentions, {g[3]: ("", "") for g in inside})
            enc = encode_example(ex, tok, max_length)
            ids = torch.tensor([enc.input_ids], device=device)
            hidden = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
            pos = {qid: p for p, qid in enc.queries}
            found = [(g, pos.get(f"m{k}")) for k, g in enumerate(inside)]
            kept = [(g, p) for g, p in found if p is not None]
            counts["mentions"] += len(inside)
            counts["mentions_truncated"] += len(inside) - len(kept)
            preds = out.setdefault(w.article, [])
            if kept:
                q = F.normalize(hidden[0, [p for _, p in kept]].float(), dim=-1).cpu().numpy()  # (n, dim)
                hits = index.search(np.ascontiguousarray(q), top_k)
                for (g, _), h in zip(kept, hits):
                    preds.append(PredictedMention(g[1], g[2], h[0].id if h else None, h[0].score if h else None,
                                                  [x.id for x in h]))
            preds += [PredictedMention(g[1], g[2], None) for g, p in found if p is None]
        if on_batch:
            on_batch(1)
    return out, counts


def score_linking(
    articles: Sequence[ElevantArticle], predictions: dict[str, list[PredictedMention]]
) -> dict[str, dict[str, dict[str, float]]]:
    """{"all" | benchmark: {"md" | "el": {precision, recall, f1, tp, fp, fn}}}, micro over mentions."""
    counts: dict[str, dict[str, Counter]] = {}
    for a in articles:
        required, ignore = gold_sets(a)
        lo, hi = a.evaluation_span or (0, len(a.text))
        key = article_key(a)
        preds = [p for p in predictions.get(key, []) if lo <= p.start and p.end <= hi
                 and (key, p.start, p.end) not in ignore]
        el_pred = {(key, p.start, p.end, p.entity_id) for p in preds if p.entity_id}
        md_pred = {(key, p.start, p.end) for p in preds}
        md_gold = {g[:3] for g in required}
        for bucket in ("all", a.benchmark):
            c = counts.setdefault(bucket, {"md": Counter(), "el": Counter()})
            c["md"].update(prf_counts(md_pred, md_gold))
            c["el"].update(prf_counts(el_pred, required))
    return {b: {k: {**prf_from_counts(v["tp"], v["fp"], v["fn"]), **{n: int(v[n]) for n in ("tp", "fp", "fn")}}
                for k, v in c.items()} for b, c in counts.items()}


def gold_by_article(articles: Sequence[ElevantArticle]) -> dict[str, set[tuple]]:
    return {article_key(a): gold_sets(a)[0] for a in articles}


# --------------------------------------------------------------------------- ELEVANT's own rules
# ELEVANT (ad-freiburg/elevant, src/elevant/evaluation/{case_generator,case,evaluator,mention_type}.py)
# scores a linked-articles file differently from the exact-span strong matching above; both are
# reported, each under its own name. Its InKB ("IGNORED") mode is reproduced here:
# - spans are widened to word boundaries (over alphanumerics and ' " _) and a gold label matches a
#   prediction when either span or either widened span coincide;
# - a prediction that matches no gold span is a false positive only if it carries an entity (not
#   `<NIL>`, not a missing id); on a gold span a prediction without any id counts as a known entity;
# - coreference is inferred from the mention text (pronouns, "the/this/his … " + a lower-case word)
#   when a label has no `coref` flag; coreference mentions count for linking ("all") but not for NER;
# - optional labels (and DATETIME/QUANTITY ones) can only add false positives;
# - a parent label and its children count as one unit (one TP or one FN at the root).
# Difference left: ELEVANT tells an explicit `"coref": false` from an absent key; our loader reads both
# as False, so such a label whose text looks like a pronoun is treated as coreference here.

_PRONOUNS = frozenset("i my me myself mine you your yourself yours he his him himself she her herself hers it its "
                      "itself we us our ourselves ours yourselves they their them themselves theirs".split())
_COREF_PREFIXES = ("the ", "that ", "this ", "these ", "those ", "my ", "your ", "his ", "her ", "its ", "our ",
                   "their ")
UNKNOWN_IDS = ("<NIL>", "<NO_MAPPING>")


def word_boundary(span: tuple[int, int], text: str) -> tuple[int, int]:
    """ELEVANT's `word_boundary`: widen over alphanumerics and ' " _ (never over the text's last
    character), then drop a leading unpaired double quote."""
    s, e = span
    while s > 0 and (text[s - 1].isalnum() or text[s - 1] in "'\"_"):
        s -= 1
    while e < len(text) - 1 and (text[e].isalnum() or text[e] in "'\"_"):
        e += 1
    if s < len(text) and text[s] == '"' and '"' not in text[s + 1:e]:
        s += 1
    return s, e


def is_coreference(mention: str) -> bool:
    if mention.lower() in _PRONOUNS and (not mention.isupper() or mention.lower() == "i"):
        return True
    lower = mention.lower()
    return any(lower.startswith(p) and len(mention) > len(p) and not mention[len(p)].isupper()
               for p in _COREF_PREFIXES)


def _is_optional(lb) -> bool:
    return lb.optional or bool(lb.type and ("DATETIME" in lb.type or "QUANTITY" in lb.type))


def _link_types(lb, pred: str | None, found: bool) -> tuple[set[str], set[str]]:
    """(linking types, NER types) of a gold case in InKB mode; `pred` is the predicted id (None = no id,
    which counts as a known entity), `found` whether a prediction matched."""
    unknown_gold = lb.entity_id in UNKNOWN_IDS
    if not found:
        if _is_optional(lb) or unknown_gold:
            return set(), set()
        return {"FN"}, {"FN"}
    known_pred = pred not in UNKNOWN_IDS
    if _is_optional(lb):
        if not known_pred:
            return set(), set()
        if unknown_gold:
            return {"FP"}, {"FP"}
        return (set() if pred == lb.entity_id else {"FP"}), set()
    if unknown_gold:
        return ({"FP"}, {"FP"}) if known_pred else (set(), set())
    if not known_pred:
        return {"FN"}, {"FN"}
    return ({"TP"} if pred == lb.entity_id else {"FN", "FP"}), {"TP"}


def score_elevant(articles: Sequence[ElevantArticle],
                  predictions: dict[str, list[PredictedMention]]) -> dict[str, dict[str, dict[str, float]]]:
    """{"all" | benchmark: {"ner" | "linking": {precision, recall, f1, tp, fp, fn}}} by ELEVANT's rules
    (InKB mode): `ner` is its "NER" figure, `linking` its "all" mention type. A prediction's
    `entity_id` None means "no id"; export unlinked mentions as `<NIL>` (as ELEVANT's linkers do)."""
    counts: dict[str, dict[str, Counter]] = {}
    for a in articles:
        text = a.text
        lo, hi = a.evaluation_span or (0, len(text))
        preds: dict[tuple[int, int], str | None] = {}
        for p in sorted(predictions.get(article_key(a), []), key=lambda p: (p.start, p.end)):
            preds[(p.start, p.end)] = p.entity_id
        widened = {word_boundary(s, text): v for s, v in preds.items()}
        everything = {**preds, **widened}  # widened keys overwrite exact ones, as in ELEVANT
        gold_spans = {lb.span for lb in a.labels} | {word_boundary(lb.span, text) for lb in a.labels}
        by_id = {lb.id: lb for lb in a.labels}

        def match(lb):
            for s in (lb.span, word_boundary(lb.span, text)):
                if s in everything:
                    return True, everything[s]
            return False, None

        cases = {}  # label id -> (linking types, ner types, factor)
        for lb in a.labels:
            found, pred = match(lb)
            cases[lb.id] = [*_link_types(lb, pred, found), 1, found]
        for lb in a.labels:  # nested labels: a parent and its children are one unit
            if lb.parent is not None or not lb.children:
                continue
            kids = [by_id[c] for c in lb.children if c in by_id]
            if cases[lb.id][0] == {"TP"}:
                for k in kids:
                    cases[k.id][2] = 0
                continue
            if not any(cases[k.id][3] for k in kids):
                for k in kids:
                    cases[k.id][2] = 0
                continue
            cases[lb.id][2] = 0
            parent_wb = word_boundary(lb.span, text)
            live = []
            for k in kids:
                detected = cases[k.id][3]
                cases[k.id][2] = 1 if (detected and word_boundary(k.span, text) != parent_wb) or not detected else 0
                if cases[k.id][2]:
                    live.append(cases[k.id])
            link_kids = [t for c in live for t in c[0]]
            ner_kids = [t for c in live for t in c[1]]
            cases[lb.id][0] = {"FN"} if "FN" in link_kids else ({"TP"} if link_kids and set(link_kids) == {"TP"} else set())
            cases[lb.id][1] = {"FN"} if "FN" in ner_kids else ({"TP"} if ner_kids and set(ner_kids) == {"TP"} else set())
        c = Counter()
        for lb in a.labels:
            link, ner, factor, _ = cases[lb.id]
            coref = lb.coref or is_coreference(text[lb.span_start:lb.span_end])
            root = lb.parent is None
            for kind, types in (("linking", link), ("ner", ner)):
                if kind == "ner" and coref:
                    continue
                c[f"{kind}_tp"] += int("TP" in types and root)
                c[f"{kind}_fn"] += int("FN" in types and root)
                c[f"{kind}_fp"] += int("FP" in types and factor != 0)
        for span, pred in preds.items():  # predictions on no gold span
            if span in gold_spans or word_boundary(span, text) in gold_spans:
                continue
            if pred is None or pred in UNKNOWN_IDS or not (lo <= span[0] and span[1] <= hi):
                continue
            c["linking_fp"] += 1
            if not is_coreference(text[span[0]:span[1]]):
                c["ner_fp"] += 1
        for bucket in ("all", a.benchmark):
            counts.setdefault(bucket, {"ner": Counter(), "linking": Counter()})
            for kind in ("ner", "linking"):
                counts[bucket][kind].update({k.split("_")[1]: v for k, v in c.items() if k.startswith(kind)})
    return {b: {k: {**prf_from_counts(v["tp"], v["fp"], v["fn"]), **{n: int(v[n]) for n in ("tp", "fp", "fn")}}
                for k, v in kinds.items()} for b, kinds in counts.items()}
