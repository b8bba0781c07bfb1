"""`reaper lsp` driven by pygls's LSP client (pytest-lsp), with a real reaperd behind it.

Run by `cli/tests/lsp.rs` (`cargo test-all`), which sets:
  REAPER_BIN        the `reaper` binary (reaperd beside it)
  REAPER_WORKSPACE  a git repository whose files repeat `RetryPolicy::new(3, Duration::from_millis(100));`
  REAPER_STATE_DIR  an empty state directory: the bridge starts the daemon itself
  REAPER_SLOW_STATE_DIR  another one, for a daemon whose provider answers after 1.5 s
"""

import asyncio
import os
import pathlib
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

REAPER = os.environ["REAPER_BIN"]
WORKSPACE = pathlib.Path(os.environ["REAPER_WORKSPACE"])
EXPECTED = "3, Duration::from_millis(100));"
# A line with a two-byte character and a surrogate pair (four bytes, two UTF-16 units) before
# the cursor.
LINE = '    /* é 😀 */ let retry = RetryPolicy::new('


def document_text():
    return "use std::time::Duration;\n\nfn next() {\n" + LINE + "\n}\n"


def uri():
    return (WORKSPACE / "src" / "next.rs").as_uri()


def utf16_len(text):
    return len(text.encode("utf-16-le")) // 2


def initialize_params(encodings):
    return types.InitializeParams(
        capabilities=types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=encodings),
        ),
        client_info=types.ClientInfo(name="pytest-lsp"),
        workspace_folders=[types.WorkspaceFolder(uri=WORKSPACE.as_uri(), name="shop")],
    )


def server(state_dir, extra_env=None):
    env = dict(os.environ, REAPER_STATE_DIR=state_dir)
    env.update(extra_env or {})
    return ClientServerConfig(server_command=[REAPER, "lsp"], server_env=env)


@pytest_lsp.fixture(config=server(os.environ["REAPER_STATE_DIR"]))
async def utf16(lsp_client: LanguageClient):
    result = await lsp_client.initialize_session(initialize_params([types.PositionEncodingKind.Utf16]))
    assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf16
    assert result.capabilities.inline_completion_provider is True
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=server(os.environ["REAPER_STATE_DIR"]))
async def utf8(lsp_client: LanguageClient):
    offered = [types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16]
    result = await lsp_client.initialize_session(initialize_params(offered))
    assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(
    config=server(os.environ["REAPER_SLOW_STATE_DIR"], {"REAPER_DEBUG_PROVIDER_DELAY_MS": "1500"})
)
async def slow(lsp_client: LanguageClient):
    await lsp_client.initialize_session(initialize_params([types.PositionEncodingKind.Utf16]))
    yield
    await lsp_client.shutdown_session()


def open_document(client, text=None):
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri(), language_id="rust", version=1, text=text or document_text()
            )
        )
    )


def inline(client, line, character):
    return client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri()),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )


async def until_answered(client, line, character, limit_s=30.0):
    """The first non-empty list: the daemon indexes the workspace at its first completion."""
    started = time.monotonic()
    while True:
        result = await inline(client, line, character)
        if result is not None and result.items:
            return result
        assert time.monotonic() - started < limit_s, "no completion within the time limit"
        await asyncio.sleep(0.2)


@pytest.mark.asyncio(loop_scope="function")
async def test_utf16_positions_around_multibyte_text(utf16: LanguageClient):
    open_document(utf16)
    character = utf16_len(LINE)
    result = await until_answered(utf16, 3, character)
    item = result.items[0]
    assert item.insert_text == EXPECTED
    cursor = types.Position(line=3, character=character)
    assert item.range == types.Range(start=cursor, end=cursor)

    # Type the first three characters of the suggestion (an incremental change), ask again.
    utf16.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri(), version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(start=cursor, end=cursor), text="3, "
                )
            ],
        )
    )
    result = await until_answered(utf16, 3, character + 3)
    assert result.items[0].insert_text == "Duration::from_millis(100));"
    moved = types.Position(line=3, character=character + 3)
    assert result.items[0].range == types.Range(start=moved, end=moved)

    # A whole-document change, then a cursor where nothing fits: an empty list, not an error.
    utf16.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri(), version=3),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text="zq")],
        )
    )
    result = await inline(utf16, 0, 2)
    assert result is None or result.items == [] or all(i.insert_text for i in result.items)


@pytest.mark.asyncio(loop_scope="function")
async def test_utf8_positions_when_the_client_offers_them(utf8: LanguageClient):
    open_document(utf8)
    character = len(LINE.encode("utf-8"))
    result = await until_answered(utf8, 3, character)
    assert result.items[0].insert_text == EXPECTED
    cursor = types.Position(line=3, character=character)
    assert result.items[0].range == types.Range(start=cursor, end=cursor)


@pytest.mark.asyncio(loop_scope="function")
async def test_a_newer_request_supersedes_the_one_in_flight(slow: LanguageClient):
    open_document(slow)
    character = utf16_len(LINE)
    # Let the daemon index the workspace first (each answer takes 1.5 s here).
    await until_answered(slow, 3, character, limit_s=60.0)

    # Answers are cached: a change above the cursor makes each request below a new one.
    def touch(version):
        slow.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri(), version=version),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(start=types.Position(line=1, character=0), end=types.Position(line=1, character=0)),
                        text=" ",
                    )
                ],
            )
        )

    touch(2)
    first = asyncio.ensure_future(inline(slow, 3, character))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    second = asyncio.ensure_future(inline(slow, 3, character))
    with pytest.raises(Exception) as superseded:
        await first
    assert time.monotonic() - started < 1.0, "the superseded request waited for its answer"
    assert "superseded" in str(superseded.value)
    result = await second
    assert result.items[0].insert_text == EXPECTED



@pytest.mark.asyncio(loop_scope="function")
async def test_requests_for_unknown_documents_get_an_error_not_a_crash(utf16: LanguageClient):
    with pytest.raises(Exception) as unknown:
        await inline(utf16, 0, 0)
    assert "not open" in str(unknown.value)
    # Still serving.
    open_document(utf16)
    result = await until_answered(utf16, 3, utf16_len(LINE))
    assert result.items[0].insert_text == EXPECTED
