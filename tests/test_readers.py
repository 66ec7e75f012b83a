"""Text from outside (manifests, prompts files, token files, variables) read one way: a BOM and
CRLF read like the plain file; what is no text is a clear error with its file and line, never
a traceback and never a piece of a secret."""

from __future__ import annotations

import contextlib
import json
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.api.secrets import find_tokens, read_tokens_file
from runner.cli import main
from runner.errors import ManifestError, UsageError
from runner.manifest import expand, load_manifest
from runner.textfiles import TextError, env_text

BOM = "\ufeff".encode()
MODEL = "model: seedream-4, sizes: [1024x1024]"


def manifest_text(entry: str) -> str:
    return "version: 1\njobs:\n" + textwrap.indent(entry, "  ")


def prompts_of(folder: Path, name: str, data: bytes, extra: str = "") -> list[str]:
    (folder / name).write_bytes(data)
    manifest = folder / "jobs.yaml"
    manifest.write_text(manifest_text(f"- {{prompts_file: {name}, {MODEL}{extra}}}\n"))
    return [spec.prompt for spec in expand(load_manifest(manifest))]


# ---- token files --------------------------------------------------------------------------


def test_a_token_file_with_a_bom_and_crlf_gives_the_keys_without_them(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(BOM + b"# the team's keys\r\nkey-one\r\nkey-two\r\n")
    assert read_tokens_file(str(path)) == ["key-one", "key-two"]


def test_a_token_file_of_a_bom_and_a_line_end_holds_no_token_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(f"- {{prompt: a cat, {MODEL}}}\n"))
    token = tmp_path / "token"
    token.write_bytes(BOM + b"\r\n")
    run = ["run", str(manifest), "--token-file", str(token), "--out", str(tmp_path / "out")]
    run += ["--api-base", "http://127.0.0.1:9"]  # never the real API, even if this fails
    assert main(run) == 2
    assert "holds no token" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"secret-one\nsecret\xfftwo\n", "line 2: not UTF-8 text (byte 0xff)"),
        (b"secret-one\r\nsecret\x00two\n", "line 2: a NUL byte"),
        (b"secret-one\n\xe2\x80\x8bsecret-two\n", "key 2 holds a character no API key has"),
    ],
    ids=["not utf-8", "nul", "zero-width space"],
)
def test_a_token_file_that_is_no_text_is_named_without_its_content(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    path = tmp_path / "keys"
    path.write_bytes(data)
    with pytest.raises(UsageError) as raised:
        read_tokens_file(str(path))
    assert reason in str(raised.value)
    assert "secret" not in str(raised.value)


def test_key_variables_lose_a_bom_and_a_carriage_return(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KREA_API_TOKENS", raising=False)
    monkeypatch.setenv("KREA_API_TOKEN", "\ufeffkey-one\r")  # $(cat token) of a Windows file
    assert find_tokens(None) == ["key-one"]
    monkeypatch.setenv("KREA_API_TOKENS", "\ufeffkey-one,key-two\r\n")
    assert find_tokens(None) == ["key-one", "key-two"]
    monkeypatch.setenv("KREA_API_TOKENS", "key-one,key\udcfftwo")  # an undecodable byte
    with pytest.raises(UsageError, match=r"\$KREA_API_TOKENS: not UTF-8"):
        find_tokens(None)


def test_a_variable_is_read_like_a_file() -> None:
    assert env_text({"X": " \ufeff 7\r\n"}, "X") == "7"
    assert env_text({"X": " \r\n"}, "X") is None
    assert env_text({}, "X") is None


# ---- prompts files and manifests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        ("p.txt", b"one\ntwo\nthr\xc3ee\n", "p.txt:3: not UTF-8 text (byte 0xc3)"),
        ("p.txt", b"one\rtwo\r\xffthree\r", "p.txt:3: not UTF-8 text (byte 0xff)"),
        ("p.csv", b"prompt\r\na cat\r\na\x00dog\r\n", "p.csv:3: a NUL byte"),
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "\x00"}\n', "p.jsonl:2: a NUL byte"),
    ],
    ids=["txt not utf-8", "txt with lone CRs", "csv nul", "jsonl nul"],
)
def test_a_prompts_file_that_is_no_text_is_named_with_its_line(
    tmp_path: Path, name: str, data: bytes, where: str
) -> None:
    with pytest.raises(ManifestError, match="prompts_file") as raised:
        prompts_of(tmp_path, name, data)
    assert where in str(raised.value)


def test_a_line_past_the_limit_is_named_not_held(tmp_path: Path) -> None:
    from runner.files import open_regular
    from runner.textfiles import text_lines

    path = tmp_path / "p.txt"
    path.write_bytes(b"short\n" + b"x" * 5000 + b"\nshort\n")
    with open_regular(path) as handle, pytest.raises(TextError, match=r"p.txt:2: a line of"):
        list(text_lines(handle, str(path), max_line=1000))


def test_a_manifest_that_is_no_text_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(b"version: 1\r\njobs:\r\n  - {prompt: caf\xe9}\r\n")  # Latin-1
    with pytest.raises(ManifestError) as raised:
        load_manifest(path)
    assert str(raised.value) == f"{path}:3: not UTF-8 text (byte 0xe9)"
    path.write_bytes(b"version: 1\njobs:\n  - {prompt: a\x00cat}\n")
    with pytest.raises(ManifestError, match=r"jobs.yaml:3: a NUL byte"):
        load_manifest(path)


@pytest.mark.parametrize("ending", ["\r\n", "\r"], ids=["crlf", "lone cr"])
def test_csv_and_jsonl_with_a_bom_and_other_line_ends_read_as_plain(
    tmp_path: Path, ending: str
) -> None:
    csv_rows = ["prompt,seed", "a cat,1", '"a dog, lying",2']
    jsonl_rows = ['{"prompt": "a cat", "seed": 1}', '{"prompt": "a dog", "seed": 2}']
    for name, rows in (("p.csv", csv_rows), ("p.jsonl", jsonl_rows)):
        extra = ", params_from: {seed: seed}"
        plain = prompts_of(tmp_path, name, ("\n".join(rows) + "\n").encode(), extra)
        other = prompts_of(tmp_path, name, BOM + (ending.join(rows) + ending).encode(), extra)
        assert plain == other
        assert len(plain) == 2


# ---- properties ---------------------------------------------------------------------------

# Lines of text as a user writes them: no line ends inside, no BOM, no NUL.
lines = st.lists(
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00\ufeff"),
        max_size=12,
    ),
    min_size=1,
    max_size=6,
)
endings = st.sampled_from(["\r\n", "\r"])
few = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="krea-readers-") as folder:
        yield Path(folder)


def outcome(read: object) -> object:
    """What reading gives: the value, or the message of the UsageError it raised."""
    try:
        return read() if callable(read) else read
    except UsageError as exc:
        return ("refused", str(exc).replace("\r", ""))


@few
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_token_file_give_keys_or_a_usage_error(scratch: Path, data: bytes) -> None:
    path = scratch / "keys"
    path.write_bytes(data)
    try:
        keys = read_tokens_file(str(path))
    except UsageError:
        return
    assert all(key and key.isascii() and key.isprintable() and " " not in key for key in keys)


@few
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ),
    suffix=st.sampled_from(["txt", "csv", "jsonl"]),
)
def test_any_bytes_as_a_prompts_file_give_prompts_or_a_manifest_error(
    scratch: Path, data: bytes, suffix: str
) -> None:
    extra = ", params_from: all" if suffix != "txt" else ""
    with contextlib.suppress(ManifestError):
        prompts_of(scratch, f"p.{suffix}", data, extra)


@few
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.sampled_from(
            [b"version: 1\njobs:\n  - {prompt: ", b"\xef\xbb\xbfversion: 1\r\n"]
        ).flatmap(lambda head: st.binary(max_size=60).map(lambda tail: head + tail)),
    )
)
def test_any_bytes_as_a_manifest_give_a_manifest_or_a_usage_error(
    scratch: Path, data: bytes
) -> None:
    path = scratch / "any.yaml"
    path.write_bytes(data)
    with contextlib.suppress(UsageError):
        load_manifest(path)


@few
@given(rows=lines, ending=endings, bom=st.booleans())
def test_a_token_file_reads_the_same_with_a_bom_and_any_line_end(
    scratch: Path, rows: list[str], ending: str, bom: bool
) -> None:
    path = scratch / "keys"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    plain = outcome(lambda: read_tokens_file(str(path)))
    path.write_bytes(BOM * bom + (ending.join(rows) + ending).encode())
    assert outcome(lambda: read_tokens_file(str(path))) == plain


@few
@given(rows=lines, ending=endings, suffix=st.sampled_from(["txt", "csv"]))
def test_a_prompts_file_reads_the_same_with_a_bom_and_any_line_end(
    scratch: Path, rows: list[str], ending: str, suffix: str
) -> None:
    if suffix == "csv":
        rows = ["prompt", *rows]
    plain = outcome(lambda: prompts_of(scratch, f"p.{suffix}", ("\n".join(rows) + "\n").encode()))
    text = ending.join(rows) + ending
    assert outcome(lambda: prompts_of(scratch, f"p.{suffix}", BOM + text.encode())) == plain


@few
@given(prompts=lines, ending=endings)
def test_a_manifest_reads_the_same_with_a_bom_and_any_line_end(
    scratch: Path, prompts: list[str], ending: str
) -> None:
    rows = ["version: 1", "jobs:"] + [f"  - {{prompt: {json.dumps(p)}, {MODEL}}}" for p in prompts]
    path = scratch / "jobs.yaml"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    plain = outcome(lambda: [s.body for s in expand(load_manifest(path))])
    path.write_bytes(BOM + (ending.join(rows) + ending).encode())
    assert outcome(lambda: [s.body for s in expand(load_manifest(path))]) == plain
