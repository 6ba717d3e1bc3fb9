"""The decomposition prompt is the paper's Fig. 13, verbatim, and the parser reads what a model prompted with
it writes: the figure's own example answer parses onto the right documents.

The reference text is the paper itself (../shared/paper/, extracted from the PDF), read by this test; the
comparison collapses runs of whitespace, because the PDF's line wraps and blank lines are layout, not prompt.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from onegen_core.data.multihop import MultiHopRecord, Paragraph, SupportingFact
from onegen_core.prepare.decomposition import (
    AnnotationRejected,
    Decomposition,
    Step,
    build_prompt,
    parse_decomposition,
    related_doc_block,
)

PAPER = Path(__file__).resolve().parents[2].parent / "shared" / "paper" / "onegen-2409.05152.txt"

PICK = "Pick Me Up (magazine)"
VIEWPOINT = "Woman\u2019s Viewpoint (magazine)"


def fig13_text() -> str:
    """Fig. 13 as the paper's text holds it: from its first sentence to its closing line."""
    if not PAPER.is_file():
        pytest.skip(f"the paper's text is not at {PAPER}")
    text = PAPER.read_text(encoding="utf-8")
    start = text.index("You excel in question decomposition.")
    end = text.index("refrain from including any additional\ncontent.") + len("refrain from including any additional\ncontent.")
    return text[start:end]


def collapse(text: str) -> str:
    return " ".join(text.split())


def example_record() -> MultiHopRecord:
    """Fig. 13's own example input as a record: RELATED-DOC-1 is Pick Me Up (first in the supporting facts),
    RELATED-DOC-2 is Woman's Viewpoint, and a distractor the prompt must not show."""
    context = (
        Paragraph("Bust (magazine)", ("Bust is an American women's lifestyle magazine.",)),
        Paragraph(PICK, ("Pick Me Up! is a British weekly women\u2019s magazine that is published through the IPC "
                         "Media group.",)),
        Paragraph(VIEWPOINT, ("The Woman\u2019s Viewpoint was a woman\u2019s magazine founded in Texas in 1923 and "
                              "published by Florence M. Sterling.",
                              " The magazine was progressive and ran from 1923 to 1927.")),
    )
    facts = (SupportingFact(PICK, 0), SupportingFact(VIEWPOINT, 0), SupportingFact(VIEWPOINT, 1))
    return MultiHopRecord(id="fig13", question="Are both magazines, the Woman\u2019s Viewpoint and Pick Me Up, "
                                               "British publications?", answer="no", supporting_facts=facts,
                          context=context, type="comparison", level="medium", evidences=(), source="hotpotqa")


def test_the_prompt_is_fig13_with_the_record_filled_in():
    record = example_record()
    related = "\n".join(related_doc_block(k, record.paragraph(t)) for k, t in enumerate((PICK, VIEWPOINT), start=1))
    expected = (fig13_text().replace("{question}", record.question).replace("{answer}", record.answer)
                .replace("{related_doc}", related))
    prompt = build_prompt(record)
    assert collapse(prompt) == collapse(expected)
    assert "Bust" not in prompt  # a distractor is no related document
    # the record's documents are filled in the very form of the figure's example input
    example_blocks = re.search(r"<RELATED-DOC-1>.*</RELATED-DOC-2>", fig13_text(), re.S).group(0)
    assert collapse(related) == collapse(example_blocks)


def test_the_prompt_keeps_the_figures_quirks():
    """Verbatim includes what looks like typos: they are the paper's, and a model sees them."""
    prompt = build_prompt(example_record())
    assert "<ANSWER> no </ANSWER >" in prompt and "</FINAL-ANSWER >" in prompt
    assert "The magazine \"Woman\u2019s Viewpoint\u2019 was published in Texas" in prompt
    assert prompt.rstrip().endswith("refrain from including any additional content.")


def test_the_papers_example_answer_parses_onto_the_right_documents():
    text = fig13_text()
    answer = text[text.index("<SUB-QUESTION-1>"):text.index("</FINAL-ANSWER >") + len("</FINAL-ANSWER >")]
    decomposition = parse_decomposition(answer, example_record())
    assert decomposition == Decomposition(
        "fig13",
        (Step("Which country is the magazine Woman\u2019s Viewpoint published in?", VIEWPOINT,
              "The magazine \"Woman\u2019s Viewpoint\u2019 was published in Texas, a state located in the United "
              "States."),
         Step("Which country is the magazine Pick Me Up published in?", PICK,
              "The magazine Pick Me Up! is published in the United Kingdom.")),
        "No, they are not both British publications. \u201cPick Me Up!\u201d is indeed a British magazine published "
        "in the United Kingdom. However, \u201cWoman\u2019s Viewpoint\u201d was published in Texas, which is in the "
        "United States, so it is an American publication.",
    )


def answer_with(reference: str, closing: str = "</FINAL-ANSWER>") -> str:
    return ("<SUB-QUESTION-1>\nWhere is Pick Me Up published?\n</SUB-QUESTION-1>\n"
            "<CORRESPONDING-DOC-1>\nRELATED-DOC-1\n</CORRESPONDING-DOC-1>\n<SUB-ANSWER-1>\nthe United\nKingdom\n"
            "</SUB-ANSWER-1 >\n<SUB-QUESTION-2>Where was Woman\u2019s Viewpoint published?</SUB-QUESTION-2>\n"
            f"<CORRESPONDING-DOC-2>{reference}</CORRESPONDING-DOC-2>\n<SUB-ANSWER-2>Texas</SUB-ANSWER-2>\n"
            f"<FINAL-ANSWER>\nno\n{closing}")


@pytest.mark.parametrize("reference", [
    "RELATED-DOC-2", "<RELATED-DOC-2>", "related doc 2", "Related-Doc-2: Woman\u2019s Viewpoint (magazine)",
    "RELATED-DOC-2 (Woman\u2019s Viewpoint (magazine))", "[2]", "2", "Woman\u2019s Viewpoint (magazine)",
    "wiki title: Woman\u2019s Viewpoint (magazine)\ncontent: The Woman\u2019s Viewpoint was a woman\u2019s magazine",
])
def test_reference_forms_of_a_fig13_answer(reference):
    decomposition = parse_decomposition(answer_with(reference, closing="< /FINAL-ANSWER >"), example_record())
    assert [s.doc_title for s in decomposition.steps] == [PICK, VIEWPOINT]
    assert decomposition.steps[0].sub_answer == "the United Kingdom"  # a multi-line content, its wraps joined
    assert decomposition.final_answer == "no"


@pytest.mark.parametrize("reference, reason, detail", [
    ("RELATED-DOC-3", "unknown_document", "document 3 ('RELATED-DOC-3'), there are 2"),
    ("RELATED-DOC-2: Pick Me Up (magazine)", "unknown_document", "is 'Woman\u2019s Viewpoint (magazine)'"),
    ("Bust (magazine)", "distractor_document", "not a related document"),
    ("wiki title: Bust (magazine)", "distractor_document", "not a related document"),
    ("the second one", "unknown_document", "not in the context"),
])
def test_bad_references_are_rejected_with_their_reason(reference, reason, detail):
    with pytest.raises(AnnotationRejected) as caught:
        parse_decomposition(answer_with(reference), example_record())
    assert caught.value.reason == reason and detail in caught.value.detail


def example_output_as_laid_out() -> str:
    """The figure's example output, as the prompt lays it out (one line a content), closing tag canonical."""
    from onegen_core.prepare.decomposition import FIG13_PROMPT

    start = FIG13_PROMPT.index("<SUB-QUESTION-1>")
    end = FIG13_PROMPT.index("</FINAL-ANSWER >") + len("</FINAL-ANSWER >")
    return FIG13_PROMPT[start:end].replace("</FINAL-ANSWER >", "</FINAL-ANSWER>")


def test_the_answer_regex_takes_the_figures_example_and_what_the_parser_needs():
    from onegen_core.prepare.decomposition import answer_regex

    record = example_record()
    pattern = re.compile(answer_regex(record))
    good = example_output_as_laid_out()
    assert pattern.fullmatch(good)
    assert parse_decomposition(good, record).steps[0].doc_title == VIEWPOINT  # what it lets through parses
    one_step = good[:good.index("<SUB-QUESTION-2>")] + good[good.index("<FINAL-ANSWER>"):]
    assert pattern.fullmatch(one_step)  # 1..n steps for n related documents
    assert not pattern.fullmatch(good.replace("RELATED-DOC-1", "RELATED-DOC-3"))  # only the record's documents
    assert not pattern.fullmatch(good.replace("-2>", "-3>"))  # steps numbered in order
    third = good[good.index("<SUB-QUESTION-2>"):good.index("<FINAL-ANSWER>")].replace("-2>", "-3>")
    assert not pattern.fullmatch(good.replace("<FINAL-ANSWER>", third + "<FINAL-ANSWER>", 1))  # at most n steps
    assert not pattern.fullmatch(good.replace("Pick Me Up published", "Pick Me <b>Up</b> published"))
    assert re.compile(answer_regex(record, "numbered")).fullmatch(good.replace("RELATED-DOC-", "[").replace(
        "\n</CORRESPONDING", "]\n</CORRESPONDING"))
