"""Where the payload finds its inputs: a POOL file catalog (``PoolFileCatalog.xml``, what
ROOT-based payloads read) and ``input_files.json`` ({lfn: path or URL}) for any other payload.
A copied input is its local path; a directly accessed one is the URL the stager checked (turl)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import quoteattr

from nodepilot.job import FileSpec

CATALOG = "PoolFileCatalog.xml"
INPUT_MAP = "input_files.json"


def local_or_url(turl: str) -> str:
    """A ``file://`` URL as the plain path every program can open; other URLs as they are."""
    parts = urlsplit(turl)
    return unquote(parts.path) if parts.scheme == "file" and parts.netloc in ("", "localhost") else turl


def write_input_catalog(workdir: Path, inputs: Sequence[FileSpec], turls: Mapping[str, str]) -> None:
    where = {spec.lfn: local_or_url(turls[spec.lfn]) if spec.lfn in turls else str(workdir / spec.lfn)
             for spec in inputs}
    entries = "".join(
        f"  <File ID={quoteattr(spec.guid)}>\n"
        f"    <physical>\n      <pfn filetype=\"ROOT_All\" name={quoteattr(where[spec.lfn])}/>\n    </physical>\n"
        f"    <logical>\n      <lfn name={quoteattr(spec.lfn)}/>\n    </logical>\n  </File>\n"
        for spec in inputs)
    _write(workdir / CATALOG, '<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n'
                              '<!DOCTYPE POOLFILECATALOG SYSTEM "InMemory">\n'
                              f"<POOLFILECATALOG>\n{entries}</POOLFILECATALOG>\n")
    _write(workdir / INPUT_MAP, json.dumps(where, indent=1))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
