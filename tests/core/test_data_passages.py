
import pytest

from onegen_core.data import DataError, load_passages


def test_shared_corpus_loads(shared_data):
    ps = load_passages(shared_data / "2wikimultihopqa" / "corpus_sample.json")
    assert len(ps) == 6119 and ps[0].title and ps[0].text


@pytest.mark.parametrize(
    "content, where, field",
    [
        ('[{"title": "A", "text": "x"}, {"title": "B"}]', "#1", "text"),
        ('{"title": "A", "text": "x"}\n{"title": 3, "text": "y"}\n', "line 2", "title"),
        ('[{"title": "A", "text": "x"}, 5]', "#1", "<record>"),
        ('[{"title": "A", "text": ', "<file>", "<json>"),
    ],
)
def test_corrupt_passages_name_record_and_field(tmp_path, content, where, field):
    f = tmp_path / "corpus.json"
    f.write_text(content)
    with pytest.raises(DataError) as e:
        load_passages(f)
    assert "corpus.json" in str(e.value) and e.value.record == where and e.value.field == field
