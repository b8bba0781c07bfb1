//! A local server that speaks GitHub Copilot's HTTP API as Copilot's own and third-party
//! clients use it: the token exchange at `/copilot_internal/v2/token` (`Authorization: token
//! <GitHub OAuth token>`; answers `token`, `expires_at`, `refresh_in`, `endpoints`), and, with
//! the short-lived token as `Bearer`, `/models`, `/v1/engines/{model}/completions` and
//! `/chat/completions`, streamed as server-sent events ending in `data: [DONE]`. An unknown
//! OAuth token gets GitHub's 401 `Bad credentials`; an expired or unknown Copilot token gets
//! 401 too. Nothing installable speaks this, so it is what the `copilot` kind is tested
//! against.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::ollama::tokens;
use crate::wire::{Reply, Request, WireServer};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Script {
    /// The GitHub OAuth token it accepts at the exchange.
    pub oauth_token: String,
    /// `refresh_in` of each Copilot token, in seconds (also how long it stays valid here, plus
    /// a minute).
    pub refresh_in: u64,
    /// The completion text of every answer.
    pub answer: String,
    /// The pause before each streamed token.
    pub pace: Duration,
}

/// A Copilot-format server; stopped when dropped.
#[derive(Debug)]
pub struct CopilotServer {
    server: WireServer,
    issued: Issued,
}

/// Copilot tokens issued, with when they stop being accepted.
type Issued = Arc<Mutex<Vec<(String, Instant)>>>;

impl CopilotServer {
    /// Starts it with `script`.
    pub fn start(script: Script) -> CopilotServer {
        let issued: Issued = Arc::default();
        let tokens = issued.clone();
        let server = WireServer::start(move |request| route(&script, &tokens, request));
        CopilotServer { server, issued }
    }

    /// Revokes every Copilot token issued so far (as an expiry the client did not see coming
    /// would): the next API call with one gets 401.
    pub fn revoke_tokens(&self) {
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The GitHub API base URL to configure (the exchange lives there; the token names this
    /// same server as the Copilot API).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Token exchanges answered so far.
    pub fn exchanges(&self) -> usize {
        self.server
            .seen()
            .iter()
            .filter(|s| s.request.path == "/copilot_internal/v2/token")
            .count()
    }

    /// The underlying server, for what it saw.
    pub fn wire(&self) -> &WireServer {
        &self.server
    }
}

fn route(script: &Script, issued: &Issued, request: &Request) -> Reply {
    let base = format!("http://{}", request.header("host").unwrap_or("127.0.0.1"));
    if request.path == "/copilot_internal/v2/token" {
        if request.header("authorization") != Some(&format!("token {}", script.oauth_token)) {
            return Reply::json(
                401,
                &json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}),
            );
        }
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut tokens = issued.lock().unwrap_or_else(|e| e.into_inner());
        let token = format!(
            "tid=test{};exp={};sku=copilot_for_business_seat;proxy-ep=proxy.individual.githubcopilot.com;8kp=1:0123456789abcdef",
            tokens.len(),
            unix + script.refresh_in + 60
        );
        tokens.push((
            token.clone(),
            Instant::now() + Duration::from_secs(script.refresh_in + 60),
        ));
        return Reply::json(
            200,
            &json!({
                "annotations_enabled": false,
                "chat_enabled": true,
                "chat_jetbrains_enabled": true,
                "code_quote_enabled": false,
                "codesearch": false,
                "copilotignore_enabled": false,
                "endpoints": {
                    "api": base,
                    "origin-tracker": format!("{base}/origin-tracker"),
                    "proxy": base,
                    "telemetry": format!("{base}/telemetry"),
                },
                "expires_at": unix + script.refresh_in + 60,
                "individual": true,
                "prompt_8k": true,
                "public_suggestions": "disabled",
                "refresh_in": script.refresh_in,
                "sku": "copilot_for_business_seat",
                "telemetry": "disabled",
                "token": token,
                "tracking_id": "0123456789abcdef0123456789abcdef",
            }),
        );
    }
    let presented = request
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("");
    let valid = issued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(token, until)| token == presented && Instant::now() < *until);
    if !valid {
        return Reply::json(
            401,
            &json!({"error": {"message": "unauthorized: token expired", "code": "unauthorized"}}),
        );
    }
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/models") => Reply::json(
            200,
            &json!({"object": "list", "data": [
                {"id": "gpt-4o", "name": "GPT-4o", "object": "model", "vendor": "Azure OpenAI", "version": "gpt-4o-2024-11-20", "preview": false, "model_picker_enabled": true, "capabilities": {"type": "chat", "family": "gpt-4o", "object": "model_capabilities", "supports": {"streaming": true, "tool_calls": true}}},
                {"id": "gpt-41-copilot", "name": "GPT-4.1 Copilot", "object": "model", "vendor": "Azure OpenAI", "version": "gpt-41-copilot", "preview": false, "model_picker_enabled": false, "capabilities": {"type": "completion", "family": "gpt-41-copilot", "object": "model_capabilities", "supports": {"streaming": true}}},
            ]}),
        ),
        ("POST", path) if path.starts_with("/v1/engines/") && path.ends_with("/completions") => {
            let mut pieces: Vec<(Duration, Vec<u8>)> = tokens(&script.answer)
                .into_iter()
                .map(|t| {
                    let event = json!({"id": "cmpl-test", "created": 1_796_012_921, "choices": [{"text": t, "index": 0, "finish_reason": null, "logprobs": null}]});
                    (script.pace, format!("data: {event}\n\n").into_bytes())
                })
                .collect();
            let last = json!({"id": "cmpl-test", "created": 1_796_012_921, "choices": [{"index": 0, "finish_reason": "stop"}]});
            pieces.push((script.pace, format!("data: {last}\n\n").into_bytes()));
            pieces.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
            sse(pieces)
        }
        ("POST", "/chat/completions") => {
            let mut pieces = vec![(
                script.pace,
                format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "created": 1_796_012_921, "id": "chatcmpl-test", "model": "gpt-4o"})).into_bytes(),
            )];
            for t in tokens(&script.answer) {
                let event = json!({"choices": [{"index": 0, "delta": {"content": t}}], "created": 1_796_012_921, "id": "chatcmpl-test", "model": "gpt-4o"});
                pieces.push((script.pace, format!("data: {event}\n\n").into_bytes()));
            }
            let last = json!({"choices": [{"index": 0, "finish_reason": "stop", "delta": {"content": null}}], "created": 1_796_012_921, "id": "chatcmpl-test", "model": "gpt-4o"});
            pieces.push((script.pace, format!("data: {last}\n\n").into_bytes()));
            pieces.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
            sse(pieces)
        }
        _ => Reply::json(404, &json!({"error": {"message": "Not Found"}})),
    }
}

fn sse(pieces: Vec<(Duration, Vec<u8>)>) -> Reply {
    Reply::Stream {
        status: 200,
        content_type: "text/event-stream".into(),
        pieces,
        fault: None,
    }
}
