"""Open a data file given as a local path or a URL, as a text stream.

Why: loaders should not care where a file lives. Local paths (optionally ``.gz`` / ``.bz2``) need only
the standard library. Anything with a URL scheme (``s3://``, ``gs://``, ``https://``...) goes through
``fsspec`` when it is installed; without it, plain ``http(s)://`` and ``file://`` URLs still work via
``urllib`` so that ``fsspec`` stays an optional dependency.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import os
import re
from typing import Iterator, TextIO
from urllib.parse import urlparse
from urllib.request import url2pathname, urlopen

__all__ = ["DEFAULT_ENCODING", "is_url", "open_text", "source_name"]

#: ``utf-8-sig`` reads plain UTF-8 and also tolerates a leading byte-order mark.
DEFAULT_ENCODING = "utf-8-sig"

# At least two scheme characters, so that Windows drive letters ("C:\\...") are not taken for URLs.
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
_HTTP_TIMEOUT_S = 60.0


def source_name(path: str | os.PathLike) -> str:
    """Return the path or URL as the string used in error messages."""
    return os.fsdecode(os.fspath(path))


def is_url(path: str | os.PathLike) -> bool:
    """True if ``path`` carries a URL scheme such as ``s3://`` or ``https://``."""
    return bool(_URL_SCHEME.match(source_name(path)))


@contextlib.contextmanager
def open_text(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING) -> Iterator[TextIO]:
    """Open ``path`` (local path or URL) for reading text; close it when the block exits."""
    name = source_name(path)
    if not is_url(name):
        stream = _open_local(name, encoding)
    elif urlparse(name).scheme.lower() == "file":
        stream = _open_local(url2pathname(urlparse(name).path), encoding)
    else:
        stream = _open_remote(name, encoding)
    with stream:
        yield stream


def _open_local(path: str, encoding: str) -> TextIO:
    """Open a local file, decompressing ``.gz`` / ``.bz2`` transparently."""
    lowered = path.lower()
    if lowered.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding)
    if lowered.endswith(".bz2"):
        return bz2.open(path, "rt", encoding=encoding)
    return open(path, encoding=encoding)


def _open_remote(url: str, encoding: str) -> TextIO:
    """Open a URL with fsspec if available, else with urllib for http(s)."""
    try:
        import fsspec
    except ImportError:
        fsspec = None
    if fsspec is not None:
        return fsspec.open(url, "rt", encoding=encoding, compression="infer").open()
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ImportError(f"reading {scheme}:// paths needs fsspec (and its {scheme} backend): {url}")
    return io.TextIOWrapper(urlopen(url, timeout=_HTTP_TIMEOUT_S), encoding=encoding)
