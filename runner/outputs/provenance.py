"""Provenance inside each image: which prompt, model, seed and job made it.

PNGs get ``iTXt`` chunks (``Description``: the prompt; ``Software``; ``krea-batch``: all of it
as JSON), JPEGs an XMP packet (APP1) whose ``dc:description`` is the prompt and whose
``kb:provenance`` holds the same JSON. The chunks are spliced into the downloaded bytes
(nothing is re-encoded, pixels are untouched) before the file is moved into place, and the
sha256 in results.jsonl is that of the final file, as it lies in the folder. Other formats
(WebP) are left as they came.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from PIL import Image

from runner import jsontext
from runner.jobspec import JobSpec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEYWORD = "krea-batch"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
MAX_SEGMENT = 65533  # a JPEG segment's payload at most


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _itxt(keyword: str, text: str) -> bytes:
    data = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8")
    return _png_chunk(b"iTXt", data)


def _with_png_text(content: bytes, fields: Mapping[str, Any]) -> bytes | None:
    if not content.startswith(PNG_SIGNATURE) or content[12:16] != b"IHDR":
        return None
    end_of_ihdr = 8 + 12 + struct.unpack(">I", content[8:12])[0]
    chunks = (
        _itxt("Description", str(fields.get("prompt", "")))
        + _itxt("Software", f"krea-batch {fields.get('krea_batch', '')}".strip())
        + _itxt(KEYWORD, json.dumps(fields, ensure_ascii=False, sort_keys=True))
    )
    return content[:end_of_ihdr] + chunks + content[end_of_ihdr:]


def _with_jpeg_xmp(content: bytes, fields: Mapping[str, Any]) -> bytes | None:
    if not content.startswith(b"\xff\xd8"):
        return None
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:kb="https://github.com/krea-batch/ns/1.0/" '
        f"kb:provenance={quoteattr(json.dumps(fields, ensure_ascii=False, sort_keys=True))}>"
        '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
        f"{escape(str(fields.get('prompt', '')))}</rdf:li></rdf:Alt></dc:description>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()
    payload = XMP_HEADER + packet
    if len(payload) > MAX_SEGMENT:
        return None  # a prompt this long does not fit one segment: leave the file as it is
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return content[:2] + segment + content[2:]


def with_provenance(content: bytes, fields: Mapping[str, Any]) -> bytes:
    """The image's bytes with ``fields`` written into them (as they were, for a WebP or a
    prompt too long for a JPEG segment)."""
    return _with_png_text(content, fields) or _with_jpeg_xmp(content, fields) or content


def embed(path: Path, fields: Mapping[str, Any]) -> tuple[str, int]:
    """Write ``fields`` into the image at ``path`` (fsynced, replaced atomically); returns the
    final file's sha256 and size, which are what results.jsonl records."""
    content = path.read_bytes()
    changed = _with_png_text(content, fields) or _with_jpeg_xmp(content, fields)
    if changed is not None:
        # Hidden and ending in .part, like the download itself: a crash leaves nothing that
        # the next start does not clear away.
        tmp = path.with_name(f".{path.name.lstrip('.')}.meta.part")
        with tmp.open("wb") as handle:
            handle.write(changed)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        content = changed
    return hashlib.sha256(content).hexdigest(), len(content)


def read(path: Path) -> dict[str, Any] | None:
    """The provenance a krea-batch image carries, or None."""
    with Image.open(path) as image:
        text = getattr(image, "text", None) or {}
        raw = text.get(KEYWORD) if isinstance(text, dict) else None
        if raw is None:
            xmp = image.info.get("xmp")
            raw = _from_xmp(xmp) if xmp else None
    if raw is None:
        return None
    try:
        data = jsontext.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _from_xmp(xmp: bytes | str) -> str | None:
    import xml.etree.ElementTree as ElementTree

    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        value = element.get("{https://github.com/krea-batch/ns/1.0/}provenance")
        if value is not None:
            return value
    return None


def spec_provenance(spec: JobSpec) -> dict[str, Any]:
    """What an image of ``spec`` carries (the job id is added once it is known)."""
    from runner import __version__

    params = {k: v for k, v in spec.body.items() if k not in ("prompt", "seed")}
    return {
        "prompt": spec.prompt,
        "model": spec.model,
        "endpoint": spec.endpoint,
        "seed": spec.seed,
        "params": params,
        "key": spec.key,
        "krea_batch": __version__,
    }
