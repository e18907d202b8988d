"""sqfx.sparsify.text: wiki markup stripping, newsgroup bodies, and the broad sources (gensim's corpora)."""
import pickle
import zlib

import pytest

from sqfx.sparsify import text
from sqfx.sparsify.text import newsgroup_body, sentences_of, split, strip_wiki_markup

WIKI = """{{Redirect|Cats|other uses|Cat (disambiguation)}}
{{Infobox animal
| name = Cat
| image = {{nested|template|with {{more}} levels}}
}}
'''The cat''' (''Felis catus'') is a small [[carnivore|carnivorous]] [[mammal]] that lives with people.<ref name="a">{{cite book |title=Cats |year=2001}}</ref> It is often kept as a pet.<ref>Smith, p. 3.</ref><ref name="b" />
[[File:Cat poster.jpg|thumb|A [[tabby]] cat on a wall]]

== History ==
Cats were first domesticated in the [[Near East]] around 7500 BC, according to [http://example.org/cats a study of old bones].<!-- hidden note -->
{| class="wikitable"
|-
! Year !! Cats
|-
| 2001 || {{num|5}}
|}
* a list item that is not prose at all here
The <small>domestic</small> cat is a member of the family Felidae, along with lions and tigers.
<math>x^2 + y^2</math>
[[Category:Cats]]
[[de:Hauskatze]]
"""


def test_strip_wiki_markup():
    plain = strip_wiki_markup(WIKI)
    for junk in ("{{", "}}", "[[", "]]", "'''", "''", "<ref", "cite", "thumb", "Category", "Hauskatze", "==",
                 "wikitable", "hidden note", "http", "x^2", "list item", "<small>", "Infobox", "tabby"):
        assert junk not in plain, junk
    got = sentences_of(plain)
    assert got == [
        "The cat (Felis catus) is a small carnivorous mammal that lives with people.",
        "It is often kept as a pet.",
        "Cats were first domesticated in the Near East around 7500 BC, according to a study of old bones.",
        "The domestic cat is a member of the family Felidae, along with lions and tigers.",
    ]


def test_strip_wiki_markup_survives_unbalanced_markup():
    # unclosed template, table and comment: no exception, no leak of the prose-looking rest as markup
    plain = strip_wiki_markup("Good sentence here about the river and its banks.\n\n{{unclosed |x= [[a|b]]\n"
                              "{| table\n<!-- never closed")
    assert "Good sentence here about the river and its banks." in sentences_of(plain)


def test_newsgroup_body():
    post = ("From: someone@example.org\nSubject: Re: boats\n\nIn article <1@x>, bob@y writes:\n"
            "> Quoted text that we do not keep at all here.\n\n"
            "I think the boat was much larger than you remember it.\n-- \nBob, signature line here always.")
    body = newsgroup_body(post)
    assert sentences_of(body) == ["I think the boat was much larger than you remember it."]


def test_unavailable_source_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(text, "gensim_test_data", lambda: None)
    assert not set(text.BROAD) & set(text.available_sources())
    assert text.default_sources() == text.STDLIB
    with pytest.raises(text.SourceUnavailable, match="pip install gensim"):
        text.english_sentences(("wiki",))
    with pytest.raises(ValueError, match="unknown source"):
        text.english_sentences(("nope",))


def test_newsgroups_pickle_is_scanned_never_loaded(tmp_path, monkeypatch):
    class Boom:
        def __reduce__(self):  # unpickling this would run print; scanning must not
            return (print, ("unpickled!",))

    posts = ["From: a@b\nSubject: s\n\nThe weather in the valley was cold and wet all week long.", Boom()]
    (tmp_path / text.GENSIM_FILES["newsgroups"]).write_bytes(zlib.compress(pickle.dumps({"data": posts}, 0)))
    monkeypatch.setattr(text, "gensim_test_data", lambda: tmp_path)
    assert text.english_sentences(("newsgroups",)) == ["The weather in the valley was cold and wet all week long."]


needs_gensim = pytest.mark.skipif(text.gensim_test_data() is None,
                                  reason="the broad sources read the corpora shipped in the gensim wheel (not installed)")


@needs_gensim
@pytest.mark.parametrize("name,at_least", [("wiki", 5000), ("news", 1000), ("newsgroups", 300)])
def test_broad_source(name, at_least):
    assert name in text.available_sources()
    sentences = text.english_sentences((name,))
    assert len(sentences) >= at_least and len(set(sentences)) == len(sentences)
    assert not any(m in s for s in sentences for m in ("{{", "[[", "]]", "<ref", "'''", "http"))
    train, held = split(sentences)
    assert not set(train) & set(held) and 0.05 < len(held) / len(sentences) < 0.15
    assert split(sentences) == (train, held)


@needs_gensim
def test_default_sources_with_gensim():
    assert text.default_sources() == text.BROAD + text.STDLIB
    assert text.english_sentences.__defaults__ == (text.STDLIB,)   # the plain default stays the stdlib text


def test_links():
    assert strip_wiki_markup("[[Star Wars: Episode IV|the film]] and [[Star Wars: Episode V]] and [[Paris#History]]"
                             " and [[wikt:cat|cat]] and [[Image:x.png|a [[b]] c]][[de:Katze]].") == \
        "the film and Star Wars: Episode V and Paris and cat and."
