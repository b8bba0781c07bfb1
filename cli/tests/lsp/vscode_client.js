// `reaper lsp` driven by Microsoft's own LSP client library (vscode-languageserver-protocol,
// the one VS Code extensions use; it defines InlineCompletionRequest), with a real reaperd
// behind it.
//
// Run by `cli/tests/lsp.rs` (`cargo test-all`) with NODE_PATH set to the npm peers and:
//   REAPER_BIN        the `reaper` binary (reaperd beside it)
//   REAPER_WORKSPACE  a git repository whose files repeat `RetryPolicy::new(3, Duration::from_millis(100));`
//   REAPER_STATE_DIR  an empty state directory: the bridge starts the daemon itself
//   REAPER_SLOW_STATE_DIR  another one, for a daemon whose provider answers after 1.5 s
// Prints one line per check passed and exits 0, or prints what failed and exits 1.

"use strict";

const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const path = require("node:path");
const { pathToFileURL } = require("node:url");
const lsp = require("vscode-languageserver-protocol/node");

const REAPER = process.env.REAPER_BIN;
const WORKSPACE = process.env.REAPER_WORKSPACE;
const EXPECTED = "3, Duration::from_millis(100));";
// A two-byte character and a surrogate pair (two UTF-16 units) before the cursor.
const LINE = "    /* é 😀 */ let retry = RetryPolicy::new(";
const TEXT = "use std::time::Duration;\n\nfn next() {\n" + LINE + "\n}\n";
const URI = pathToFileURL(path.join(WORKSPACE, "src", "next.rs")).href;

const BEGAN = Date.now();

function check(what) {
  console.log("ok: " + what + " [" + (Date.now() - BEGAN) + " ms]");
}

/** One `reaper lsp` process and its client connection. */
function start(stateDir, extraEnv) {
  const child = spawn(REAPER, ["lsp"], {
    env: { ...process.env, REAPER_STATE_DIR: stateDir, ...extraEnv },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const connection = lsp.createProtocolConnection(
    new lsp.StreamMessageReader(child.stdout),
    new lsp.StreamMessageWriter(child.stdin),
  );
  connection.listen();
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, connection, exited };
}

async function initialize(connection) {
  const result = await connection.sendRequest(lsp.InitializeRequest.type, {
    processId: process.pid,
    clientInfo: { name: "vscode-languageserver-protocol" },
    rootUri: pathToFileURL(WORKSPACE).href,
    workspaceFolders: [{ uri: pathToFileURL(WORKSPACE).href, name: "shop" }],
    capabilities: {
      general: { positionEncodings: [lsp.PositionEncodingKind.UTF16] },
      textDocument: {
        synchronization: { dynamicRegistration: false },
        inlineCompletion: { dynamicRegistration: false },
      },
    },
  });
  await connection.sendNotification(lsp.InitializedNotification.type, {});
  return result;
}

function open(connection) {
  return connection.sendNotification(lsp.DidOpenTextDocumentNotification.type, {
    textDocument: { uri: URI, languageId: "rust", version: 1, text: TEXT },
  });
}

function inline(connection, line, character, token) {
  const params = {
    textDocument: { uri: URI },
    position: { line, character },
    context: { triggerKind: lsp.InlineCompletionTriggerKind.Automatic },
  };
  return token
    ? connection.sendRequest(lsp.InlineCompletionRequest.type, params, token)
    : connection.sendRequest(lsp.InlineCompletionRequest.type, params);
}

/** The first non-empty answer: the daemon indexes the workspace at its first completion. */
async function untilAnswered(connection, line, character, limitMs) {
  const started = Date.now();
  for (;;) {
    const result = await inline(connection, line, character);
    const items = Array.isArray(result) ? result : result && result.items;
    if (items && items.length > 0) {
      return items;
    }
    assert.ok(Date.now() - started < limitMs, "no completion within " + limitMs + " ms");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function end(session) {
  await session.connection.sendRequest(lsp.ShutdownRequest.type);
  await session.connection.sendNotification(lsp.ExitNotification.type);
  const code = await Promise.race([
    session.exited,
    new Promise((resolve) => setTimeout(() => resolve("still running after 10 s"), 10000)),
  ]);
  session.connection.dispose();
  assert.equal(code, 0, "shutdown then exit ends the bridge with 0");
}

async function typing() {
  const session = start(process.env.REAPER_STATE_DIR, {});
  const { connection } = session;
  const init = await initialize(connection);
  assert.equal(init.capabilities.inlineCompletionProvider, true);
  assert.equal(init.capabilities.positionEncoding, "utf-16");
  assert.equal(init.capabilities.textDocumentSync.change, lsp.TextDocumentSyncKind.Incremental);
  check("initialize advertises inline completion, UTF-16 and incremental sync");

  await open(connection);
  // 😀 is two UTF-16 code units: JavaScript's string length counts exactly those.
  const character = LINE.length;
  let items = await untilAnswered(connection, 3, character, 30000);
  assert.equal(items[0].insertText, EXPECTED);
  assert.deepEqual(items[0].range, {
    start: { line: 3, character },
    end: { line: 3, character },
  });
  check("an inline completion after a surrogate pair, its range at the cursor");

  // What the editor does when it shows the item and when the user accepts it: Copilot's
  // didShowCompletion, then the item's own command through workspace/executeCommand (as
  // vscode-languageclient runs a server's command after inserting the item).
  // Per-process names (vscode-languageclient registers them window-wide).
  const commands = init.capabilities.executeCommandProvider.commands;
  assert.deepEqual(commands, ["reaper.accepted." + session.child.pid, "reaper.rejected." + session.child.pid]);
  await connection.sendNotification("textDocument/didShowCompletion", { item: items[0] });
  const command = items[0].command;
  assert.equal(command.command, commands[0]);
  assert.equal(
    await connection.sendRequest(lsp.ExecuteCommandRequest.type, {
      command: command.command,
      arguments: command.arguments,
    }),
    null,
  );
  let feedback = health(process.env.REAPER_STATE_DIR).feedback;
  // Each event is a call of its own: they may arrive in either order.
  for (let i = 0; i < 50 && (feedback.accepted === 0 || feedback.shown === 0); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    feedback = health(process.env.REAPER_STATE_DIR).feedback;
  }
  assert.deepEqual(feedback, { shown: 1, accepted: 1, rejected: 0, accepted_chars: EXPECTED.length });
  check("shown and accepted reach the daemon's Health");

  await connection.sendNotification(lsp.DidChangeTextDocumentNotification.type, {
    textDocument: { uri: URI, version: 2 },
    contentChanges: [
      {
        range: { start: { line: 3, character }, end: { line: 3, character } },
        text: "3, ",
      },
    ],
  });
  items = await untilAnswered(connection, 3, character + 3, 30000);
  assert.equal(items[0].insertText, "Duration::from_millis(100));");
  check("typing through the suggestion leaves its rest");

  await end(session);
  check("shutdown and exit");
}

async function cancelling() {
  const session = start(process.env.REAPER_SLOW_STATE_DIR, {
    REAPER_DEBUG_PROVIDER_DELAY_MS: "1500",
  });
  const { connection } = session;
  await initialize(connection);
  await open(connection);
  const character = LINE.length;
  // Let the daemon index the workspace first (each answer takes 1.5 s here).
  await untilAnswered(connection, 3, character, 60000);
  // A change above the cursor, so the next request is not a cache hit.
  await connection.sendNotification(lsp.DidChangeTextDocumentNotification.type, {
    textDocument: { uri: URI, version: 2 },
    contentChanges: [
      { range: { start: { line: 1, character: 0 }, end: { line: 1, character: 0 } }, text: " " },
    ],
  });
  const before = completionCalls(process.env.REAPER_SLOW_STATE_DIR);
  const source = new lsp.CancellationTokenSource();
  const started = Date.now();
  const pending = inline(connection, 3, character, source.token);
  setTimeout(() => source.cancel(), 100);
  let error = null;
  try {
    await pending;
  } catch (e) {
    error = e;
  }
  const waited = Date.now() - started;
  assert.ok(error, "a cancelled request is not answered with items");
  assert.equal(error.code, lsp.LSPErrorCodes.RequestCancelled, String(error));
  assert.ok(waited < 1000, "the cancelled request waited " + waited + " ms for its answer");
  check("$/cancelRequest answers RequestCancelled at once (" + waited + " ms)");

  // The call's QUIC stream was reset: the daemon counts it as cancelled, not served.
  let after = completionCalls(process.env.REAPER_SLOW_STATE_DIR);
  for (let i = 0; i < 50 && after.failed === before.failed; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    after = completionCalls(process.env.REAPER_SLOW_STATE_DIR);
  }
  assert.equal(after.failed, before.failed + 1, "the daemon saw the call end unfinished");
  assert.equal(after.served, before.served, "the daemon did not answer the cancelled call");
  check("the daemon stopped the cancelled call");
  await end(session);
  check("shutdown and exit with a call cancelled");
}

/** reaperd's `reaper health --json`. */
function health(stateDir) {
  const out = execFileSync(REAPER, ["health", "--json"], {
    env: { ...process.env, REAPER_STATE_DIR: stateDir },
    timeout: 10000,
  });
  return JSON.parse(out.toString().trim().split("\n")[0]);
}

/** reaperd's count of Completion calls. */
function completionCalls(stateDir) {
  const calls = health(stateDir).calls.find((c) => c.method === "reaper.Completion/complete");
  return { served: calls.served, failed: calls.failed };
}

// Every await above is bounded by a check or by the daemon's deadline but one: a bridge that
// never answers a request. This ends the run then.
setTimeout(() => {
  console.error("FAILED: the client did not finish within 240 s");
  process.exit(1);
}, 240000).unref();

(async () => {
  await typing();
  await cancelling();
})().then(
  () => process.exit(0),
  (error) => {
    console.error("FAILED: " + (error && error.stack ? error.stack : error));
    process.exit(1);
  },
);
