"""Offline unlabeled English text for calibration, distillation and evaluation (no network).

Sources, all on any machine with Python (nothing is downloaded):
- "reference": the Python Language Reference prose shipped as pydoc_data.topics;
- "docstrings": module, class and function docstrings of the standard library, read with `ast`
  from the source files (nothing is imported, so no module runs);
- "idle": the prose of IDLE's help page (idlelib/help.html), when the stdlib ships it.
All of it is technical writing about Python; it is narrow compared with the everyday sentences a
sentence-embedding model sees, which is why the benchmarks evaluate on separate hand-written
everyday sentences as well as on a held-out split of this text.

Broad natural English, when the `gensim` package is installed (its wheel ships small public test
corpora; they are read as files, gensim itself is never imported, so none of its code runs):
- "wiki": prose of the Wikipedia articles in gensim's shortened enwiki dump (wiki markup stripped by
  `strip_wiki_markup`);
- "news": the Lee background corpus of news articles (lee_background.cor);
- "newsgroups": bodies of the Usenet posts in mini_newsgroup (headers and quoted lines dropped; the
  file is a pickle, which is scanned with `pickletools.genops` for its strings, never unpickled).
Without gensim these sources are unavailable: `available_sources()` omits them and asking for one
raises `SourceUnavailable` (a ValueError) that says how to get it. `STDLIB` stays the default of
`english_sentences`; `default_sources()` is the broad text plus STDLIB when gensim is installed.

`split(sentences, held_out)` splits by a hash of each sentence, so the held-out part is disjoint
from the rest and stable across runs and machines.
"""
from __future__ import annotations

import ast
import bz2
import hashlib
import html
import importlib.util
import os
import pickletools
import re
import sysconfig
import zlib
from pathlib import Path
from xml.etree import ElementTree

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_CODE_LIKE = re.compile(r"(>>>|\.\.\.|[{}\[\]=<>_`|\\#@$*]|\w\(|::|\s-\w|\w/\w)")
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "lib2to3", "ensurepip", "turtledemo", "__pycache__"}


def sentences_of(text: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Plain-prose sentences of a text: whitespace normalised, code-like fragments dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        for s in _SENTENCE_END.split(para):
            words = s.split()
            if not (min_words <= len(words) <= max_words) or _CODE_LIKE.search(s) or not s[0].isupper():
                continue
            if sum(w.strip(".,;:!?'\"()").isalpha() for w in words) < 0.8 * len(words):
                continue
            out.append(s)
    return out


def _reference_text() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _docstrings(max_files: int = 2000) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))
    for path in files[:max_files]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return texts


def _idle_help() -> list[str]:
    path = Path(sysconfig.get_paths()["stdlib"]) / "idlelib" / "help.html"
    if not path.exists():
        return []
    raw = path.read_text(encoding="utf-8", errors="replace")
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", " ", p)) for p in re.split(r"</p>|<br\s*/?>", raw)]


# ------------------------------------------------------------------ broad text from gensim's test data
class SourceUnavailable(ValueError):
    """A text source whose files are not on this machine (the broad sources need gensim)."""


GENSIM_FILES = {
    "wiki": "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "news": "lee_background.cor",
    "newsgroups": "mini_newsgroup",
}


def gensim_test_data() -> Path | None:
    """gensim's test_data folder, found without importing gensim (None if gensim is not installed)."""
    try:
        spec = importlib.util.find_spec("gensim")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "test" / "test_data"
        if path.is_dir():
            return path
    return None


def _gensim_file(name: str) -> Path:
    root = gensim_test_data()
    path = root / GENSIM_FILES[name] if root else None
    if path is None or not path.is_file():
        why = "gensim is not installed" if root is None else f"{GENSIM_FILES[name]} is missing from {root}"
        raise SourceUnavailable(f"sqfx.sparsify.text: source {name!r} is unavailable ({why}); it reads the "
                                f"public test corpora shipped in the gensim wheel: pip install gensim")
    return path


def _strip_nested(text: str, pattern: re.Pattern, repl="") -> str:
    """Apply `pattern` (which matches an innermost construct) until nothing changes."""
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|)(?!\|\}).)*\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
# links that render no prose: files, images, categories, interwiki/language links ("de:", "simple:")
_NAMESPACED = re.compile(r"^\s*(?:file|image|media|category|[a-z]{2,3}(?:-[a-z]+)*|simple):", re.I)
_EXTLINK = re.compile(r"\[(?:https?:|ftp:|//)[^\s\]]*\s*([^\]]*)\]")
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+")
_REF = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_DROP_BLOCK = re.compile(r"<(math|gallery|timeline|source|syntaxhighlight|pre|code|score|imagemap|chem)\b[^>]*>"
                         r".*?</\1\s*>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_TAG = re.compile(r"</?[A-Za-z][^<>]*?/?>")
_HEADING = re.compile(r"^\s*=+.*?=+\s*$", re.M)
_QUOTES = re.compile(r"'{2,}")
_MAGIC = re.compile(r"__[A-Z]+__")


def _link_text(m: re.Match) -> str:
    inner = m.group(1)
    if _NAMESPACED.match(inner):
        return ""
    inner = inner.split("|")[-1] if "|" in inner else inner
    return inner.lstrip(":").split("#")[0] if "|" not in m.group(1) else inner   # [[:Category:X]], [[Page#Part]]


def strip_wiki_markup(wikitext: str) -> str:
    """Plain prose of MediaWiki markup: comments, refs, templates {{...}} (nested), tables {|...|},
    math/gallery/code blocks, files/categories and headings dropped; [[a|b]] -> b, [[a]] -> a,
    [url label] -> label; other tags dropped (their text kept); bold/italic quotes removed; list,
    indent and table-row lines dropped. Paragraphs stay separated by blank lines."""
    t = html.unescape(wikitext)
    t = _COMMENT.sub("", t)
    t = _DROP_BLOCK.sub("", t)
    t = _REF.sub("", t)
    t = _strip_nested(t, _TEMPLATE)
    t = _strip_nested(t, _TABLE)
    t = _strip_nested(t, _LINK, _link_text)
    t = _EXTLINK.sub(lambda m: m.group(1), t)
    t = _BARE_URL.sub("", t)
    t = _TAG.sub("", t)
    t = _HEADING.sub("", t)
    t = _QUOTES.sub("", t)
    t = _MAGIC.sub("", t)
    lines = []
    for line in t.split("\n"):
        stripped = line.strip()
        if stripped[:1] in ("*", "#", ":", ";", "|", "!", "{", "}"):
            lines.append("")   # list items, indents, table rows and leftovers end a paragraph
        else:
            lines.append(re.sub(r"\(\s*[,;]?\s*\)", "", line))   # "()" left where a template was
    return re.sub(r"[ \t]+([,.;:])", r"\1", "\n".join(lines))


def _wiki_articles() -> list[str]:
    texts = []
    with bz2.open(_gensim_file("wiki"), "rb") as f:
        for _, el in ElementTree.iterparse(f):
            if el.tag.rsplit("}", 1)[-1] != "page":
                continue
            ns = next((c.text for c in el.iter() if c.tag.endswith("}ns")), "0")
            body = next((c.text or "" for c in el.iter() if c.tag.endswith("}text")), "")
            if ns == "0" and not body.lstrip().upper().startswith("#REDIRECT"):
                texts.append(strip_wiki_markup(body))
            el.clear()
    return texts


def _news() -> list[str]:
    return _gensim_file("news").read_text(encoding="utf-8", errors="replace").splitlines()


def newsgroup_body(post: str) -> str:
    """A Usenet post's own prose: headers (up to the first blank line), quoted lines ('>', '|'),
    attribution lines ("... writes:") and the signature (after '-- ') dropped."""
    _, _, body = post.partition("\n\n")
    body = body.split("\n-- \n")[0]
    keep = []
    for line in body.split("\n"):
        s = line.strip()
        if s.startswith((">", "|", ":")) or s.endswith(("writes:", "wrote:")) or s.startswith("In article"):
            keep.append("")
        else:
            keep.append(line)
    return "\n".join(keep)


def _newsgroups() -> list[str]:
    raw = _gensim_file("newsgroups").read_bytes()
    try:
        raw = zlib.decompress(raw)
    except zlib.error:
        pass
    posts = []
    # the file is a pickled sklearn Bunch: walk its opcodes for the string arguments, never unpickle it
    for op, arg, _ in pickletools.genops(raw):
        if isinstance(arg, (str, bytes)) and op.name in {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                                                           "BINUNICODE8", "STRING", "BINSTRING",
                                                           "SHORT_BINSTRING"}:
            s = arg if isinstance(arg, str) else arg.decode("latin-1")
            if s.startswith(("From:", "Newsgroups:", "Path:", "Subject:")):
                posts.append(newsgroup_body(s))
    return posts


STDLIB = ("reference", "docstrings", "idle")
BROAD = ("wiki", "news", "newsgroups")
SOURCES = {"reference": _reference_text, "docstrings": _docstrings, "idle": _idle_help,
           "wiki": _wiki_articles, "news": _news, "newsgroups": _newsgroups}


def available_sources() -> list[str]:
    """The sources whose text is on this machine (the broad ones need gensim)."""
    root = gensim_test_data()
    return [n for n in SOURCES if n not in GENSIM_FILES or (root is not None and (root / GENSIM_FILES[n]).is_file())]


def default_sources() -> tuple[str, ...]:
    """The broad sources plus STDLIB when gensim's corpora are installed, else STDLIB alone."""
    have = available_sources()
    broad = tuple(n for n in BROAD if n in have)
    return broad + STDLIB if broad else STDLIB


def english_sentences(sources=STDLIB) -> list[str]:
    """Unique prose sentences from the named sources, in a stable order. Raises SourceUnavailable
    (a ValueError) for a broad source without gensim, ValueError for an unknown name."""
    seen, out = set(), []
    for name in sources:
        if name not in SOURCES:
            raise ValueError(f"sqfx.sparsify.text: unknown source {name!r}; choose from {sorted(SOURCES)}")
        for text in SOURCES[name]():
            for s in sentences_of(text):
                if s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def _bucket(sentence: str) -> float:
    return int(hashlib.sha256(sentence.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split(sentences: list[str], held_out: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, held-out): a sentence is held out when its hash falls below `held_out`; disjoint and stable."""
    train = [s for s in sentences if _bucket(s) >= held_out]
    test = [s for s in sentences if _bucket(s) < held_out]
    return train, test


def batches(tokenizer, sentences: list[str], batch_size: int = 16, max_length: int = 128) -> list[dict]:
    """Tokenized keyword batches ({"input_ids", "attention_mask"}) for sparsify's `data`."""
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out
