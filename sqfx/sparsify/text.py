"""Offline unlabeled English text for calibration, distillation and evaluation (no network).

Sources, all on any machine with Python (nothing is downloaded):
- "reference": the Python Language Reference prose shipped as pydoc_data.topics;
- "docstrings": module, class and function docstrings of the standard library, read with `ast`
  from the source files (nothing is imported, so no module runs);
- "idle": the prose of IDLE's help page (idlelib/help.html), when the stdlib ships it.
All of it is technical writing about Python; it is narrow compared with the everyday sentences a
sentence-embedding model sees, which is why the benchmarks evaluate on separate hand-written
everyday sentences as well as on a held-out split of this text.

`split(sentences, held_out)` splits by a hash of each sentence, so the held-out part is disjoint
from the rest and stable across runs and machines.
"""
from __future__ import annotations

import ast
import hashlib
import html
import os
import re
import sysconfig
from pathlib import Path

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


SOURCES = {"reference": _reference_text, "docstrings": _docstrings, "idle": _idle_help}


def english_sentences(sources=("reference", "docstrings", "idle")) -> list[str]:
    """Unique prose sentences from the named sources, in a stable order."""
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
