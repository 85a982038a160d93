"""A general English corpus with no hub: the Wikipedia and news samples that the `gensim` wheel ships as test data.

`pip install --no-deps gensim==4.4.0` (a 28 MB wheel, LGPL-2.1; its numpy/scipy dependencies are not needed, gensim is
never imported) puts two real English text files under `gensim/test/test_data/`:

- `enwiki-latest-pages-articles1.xml-...-shortened.bz2`: the start of an English Wikipedia dump (CC BY-SA), 106
  articles of 50+ words (Anarchism, Autism, Albedo, ...), about 480,000 words once the wiki markup is stripped;
- `lee_background.cor`: the Lee corpus, 300 Australian news articles (about 60,000 words), one per line.

`pdl-freq --all-tokens --text_dataset embedded:wikipedia` (or `embedded:news`) counts them.
"""

from __future__ import annotations

import bz2
import html
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

from ..errors import PDLDataError

INSTALL_HINT = "pip install --no-deps gensim==4.4.0"
WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
MIN_WORDS = 50  # shorter pages are stubs, lists or disambiguations

_COMMENTS = re.compile(r"<!--.*?-->", re.DOTALL)
_REFS = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # innermost first, repeated: templates nest
_TABLE = re.compile(r"\{\|[^{}]*?\|\}", re.DOTALL)
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*\]\]", re.IGNORECASE)
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")  # innermost: [[target|shown]] or [[shown]]
_URL_LINK = re.compile(r"\[(?:https?:)?//\S+ ?([^\]]*)\]")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"'{2,}")
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def gensim_data_file(name: str) -> Path:
    """The path of one of gensim's test data files, found without importing gensim (which needs scipy)."""
    spec = importlib.util.find_spec("gensim")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name if spec else None
    if path is None or not path.is_file():
        raise PDLDataError(f"The embedded English corpus needs the `gensim` wheel, which ships it as test data: "
                           f"`{INSTALL_HINT}`. Or pass a text file, a folder of .txt files or a hub data set.")
    return path


def strip_wiki_markup(text: str) -> str:
    """Wikitext as the prose a reader sees: no templates, tables, references, files, categories or markup."""
    text = _REFS.sub("", _COMMENTS.sub("", text))
    for pattern in (_TEMPLATE, _TABLE):
        previous = None
        while previous != text:  # innermost first, until nothing nested is left
            previous, text = text, pattern.sub("", text)
    previous = None
    while previous != text:  # a file's caption may hold links: drop files, resolve the innermost links, repeat
        previous, text = text, _FILE_LINK.sub("", text)
        text = _LINK.sub(lambda m: m[0] if _FILE_LINK.fullmatch(m[0]) else m[1], text)
    text = _URL_LINK.sub(r"\1", text)
    text = _EMPHASIS.sub("", _HEADING.sub(r"\2", _TAGS.sub("", text)))
    text = _LIST_MARK.sub("", html.unescape(text))
    lines = [line.strip() for line in text.split("\n")]
    kept = "\n".join(line for line in lines if not line.startswith(("|", "!", "{", "}")))
    return _BLANK_LINES.sub("\n\n", kept).strip()


def wikipedia_texts() -> Iterator[str]:
    """The articles of the Wikipedia sample (main namespace, no redirects, at least `MIN_WORDS` words), as prose."""
    with bz2.open(gensim_data_file(WIKIPEDIA_FILE)) as handle:
        for _, element in ElementTree.iterparse(handle):
            if not element.tag.endswith("}page"):
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: child for child in element.iter()}
            raw = fields["text"].text if "text" in fields else None
            if fields.get("ns") is not None and fields["ns"].text == "0" and "redirect" not in fields and raw:
                text = strip_wiki_markup(raw).strip()
                if len(text.split()) >= MIN_WORDS:
                    yield text
            element.clear()


def news_texts() -> Iterator[str]:
    """The Lee corpus's news articles, one per line of the file."""
    with open(gensim_data_file(NEWS_FILE), encoding="utf-8") as handle:
        yield from (line.strip() for line in handle if line.strip())


EMBEDDED_CORPORA = {"wikipedia": wikipedia_texts, "news": news_texts}
