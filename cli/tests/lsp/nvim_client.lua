-- `reaper lsp` driven by Neovim's own LSP client, headless, with a real reaperd behind it.
--
-- Debian's Neovim (0.7) predates the built-in inline completion UI (0.12's
-- `vim.lsp.inline_completion`), so the script sends `textDocument/inlineCompletion` as a raw
-- request, the way docs/editors.md tells users of older versions to. Everything else is
-- Neovim's: starting the server, didOpen from a real buffer, incremental didChange computed
-- from a real edit, positions from the cursor, shutdown and exit.
--
-- Run by `cli/tests/lsp.rs` (`cargo test-all`) as
--   nvim --headless --clean -c "luafile nvim_client.lua"
-- with REAPER_BIN, REAPER_WORKSPACE and REAPER_STATE_DIR set (see vscode_client.js). Prints
-- one "ok: " line per check passed and exits 0, or prints what failed and exits 1.
-- REAPER_NVIM_DEBUG=1 also prints every request and its answer.

local REAPER = os.getenv("REAPER_BIN")
local WORKSPACE = os.getenv("REAPER_WORKSPACE")
local EXPECTED = "3, Duration::from_millis(100));"
-- A two-byte character and a surrogate pair before the cursor: Neovim counts UTF-16 units.
local LINE = "    /* é 😀 */ let retry = RetryPolicy::new("

local function say(text)
  io.stdout:write(text .. "\n")
  io.stdout:flush()
end

local function check(condition, what)
  if not condition then
    error(what, 2)
  end
  say("ok: " .. what)
end

-- Asks at the cursor until an item comes (the daemon indexes the workspace at its first
-- completion); bounded at 30 s.
local function until_answered(client, bufnr)
  local started = vim.loop.now()
  while vim.loop.now() - started < 30000 do
    local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
    params.context = { triggerKind = 1 }
    local response, err = client.request_sync("textDocument/inlineCompletion", params, 10000, bufnr)
    if err then
      error("the request failed: " .. tostring(err))
    end
    if response and response.err then
      error("the bridge answered an error: " .. vim.inspect(response.err))
    end
    local items = response and response.result and response.result.items
    if items and #items > 0 then
      return items, params.position
    end
    if os.getenv("REAPER_NVIM_DEBUG") then
      say("debug: " .. vim.inspect(params) .. " -> " .. vim.inspect(response))
    end
    vim.wait(200)
  end
  error("no completion within 30 s")
end

local function run()
  local path = WORKSPACE .. "/src/next.rs"
  local file = assert(io.open(path, "w"))
  file:write("use std::time::Duration;\n\nfn next() {\n" .. LINE .. "\n}\n")
  file:close()

  local exited = nil
  local client_id = vim.lsp.start_client({
    name = "reaper",
    cmd = { REAPER, "lsp" },
    cmd_env = { REAPER_STATE_DIR = os.getenv("REAPER_STATE_DIR") },
    root_dir = WORKSPACE,
    workspace_folders = { { uri = vim.uri_from_fname(WORKSPACE), name = "shop" } },
    on_exit = function(code)
      exited = code
    end,
  })
  check(client_id ~= nil, "Neovim started reaper lsp")

  vim.cmd("edit " .. vim.fn.fnameescape(path))
  local bufnr = vim.api.nvim_get_current_buf()
  vim.bo[bufnr].filetype = "rust"
  vim.lsp.buf_attach_client(bufnr, client_id)
  local client
  vim.wait(10000, function()
    client = vim.lsp.get_client_by_id(client_id)
    return client ~= nil and client.initialized
  end, 20)
  check(client and client.initialized, "initialize answered")
  check(client.server_capabilities.inlineCompletionProvider == true, "inline completion advertised")

  -- The cursor after `new(` on line 4 (Neovim's rows count from 1, its columns in bytes; in
  -- normal mode the cursor may sit past the line's end only with virtualedit, as in insert
  -- mode, where an editor asks).
  vim.o.virtualedit = "onemore"
  vim.api.nvim_win_set_cursor(0, { 4, #LINE })
  local items, position = until_answered(client, bufnr)
  check(items[1].insertText == EXPECTED, "the completion after a surrogate pair: " .. items[1].insertText)
  check(
    position.character == 44 and vim.deep_equal(items[1].range, { start = position, ["end"] = position }),
    "its range is the cursor, in UTF-16 units (character " .. position.character .. ")"
  )

  -- Type the first three characters of the suggestion: Neovim sends an incremental change.
  vim.api.nvim_buf_set_text(bufnr, 3, #LINE, 3, #LINE, { "3, " })
  vim.api.nvim_win_set_cursor(0, { 4, #LINE + 3 })
  items = until_answered(client, bufnr)
  check(items[1].insertText == "Duration::from_millis(100));", "typing through leaves the rest: " .. items[1].insertText)

  client.stop()
  vim.wait(10000, function()
    return exited ~= nil
  end, 20)
  check(exited == 0, "shutdown and exit end the bridge with 0 (" .. tostring(exited) .. ")")
end

local ok, failure = pcall(run)
if not ok then
  say("FAILED: " .. tostring(failure))
  os.exit(1)
end
os.exit(0)
