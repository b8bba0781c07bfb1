//! `kind = "copilot"`: GitHub Copilot, through the sign-in the user already has.
//!
//! Copilot's editor plugins (copilot.vim, copilot.lua, the VS Code extension's language
//! server) keep the user's GitHub OAuth token in `$XDG_CONFIG_HOME/github-copilot/apps.json`
//! (or the older `hosts.json`), under a key that starts with `github.com`. That token is
//! exchanged at `{base_url}/copilot_internal/v2/token` (base_url: the GitHub API) for a
//! short-lived Copilot token, which names the hosts to use (`endpoints.proxy` for
//! completions, `endpoints.api` for chat and models) and is refreshed before it expires.
//! Completions are `POST {proxy}/v1/engines/{model}/completions` (an OpenAI-style completion
//! with a `suffix`, streamed as server-sent events), chat is `POST {api}/chat/completions`,
//! and the probe lists `{api}/models`. Every request carries the headers Copilot's own and
//! third-party clients send (`Editor-Version`, `Editor-Plugin-Version`, `Openai-Intent`, and
//! `Copilot-Integration-Id` for chat). `api_key_env`, when set, names a variable holding the
//! OAuth token instead of the file.
//!
//! Not read: `auth.db`, the SQLite file newer Copilot language servers (1.494 and later) keep
//! the sign-in in instead of the JSON files; with only that, set `api_key_env`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use super::{Remote, Secret};
use crate::error::ProviderError;
use crate::http::{Body, MAX_BODY};
use crate::kinds::openai::{chat_body, chat_deltas, completion_text, proposal, ModelList};
use crate::prompt::{self, Around};
use crate::provider::{
    Capabilities, ChatInput, ChatStream, CompletionInput, ProbeReport, Proposal,
};
use crate::stream::SseReader;
use crate::tools::ConverseInput;

/// Headers that identify the client to Copilot, as its third-party clients send them.
const EDITOR_VERSION: &str = concat!("reaper/", env!("CARGO_PKG_VERSION"));
const EDITOR_PLUGIN_VERSION: &str = concat!("reaper/", env!("CARGO_PKG_VERSION"));
const INTEGRATION_ID: &str = "vscode-chat";
/// The model Copilot's chat is asked for (Copilot picks its chat models itself; the configured
/// model is its completion model).
const CHAT_MODEL: &str = "gpt-4o";
/// Refresh the Copilot token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(120);
/// Bounds on how long a Copilot token is used before it is exchanged again.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Largest streamed completion accepted, in bytes.
const MAX_COMPLETION_STREAM: usize = 1024 * 1024;
/// Largest streamed chat answer accepted, in bytes.
const MAX_CHAT_STREAM: usize = 32 * 1024 * 1024;

/// A Copilot provider.
#[derive(Debug)]
pub struct Copilot {
    remote: Remote,
    /// Where the editors' sign-in files are (`$XDG_CONFIG_HOME/github-copilot`).
    sign_in_dir: Option<PathBuf>,
    /// The current Copilot token; one exchange at a time.
    session: tokio::sync::Mutex<Option<Session>>,
}

/// A Copilot token and what it came with.
#[derive(Debug, Clone)]
struct Session {
    token: Secret,
    /// Chat and models.
    api: String,
    /// Completions (the API host when the exchange names no proxy).
    proxy: String,
    refresh_at: Instant,
}

impl Copilot {
    pub(crate) fn new(remote: Remote, env: &dyn Fn(&str) -> Option<String>) -> Copilot {
        let config_home = env("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                env("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            });
        Copilot {
            remote,
            sign_in_dir: config_home.map(|d| d.join("github-copilot")),
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// The GitHub OAuth token: from `api_key_env`, else from the editors' sign-in files (read
    /// each time, so signing in while the daemon runs works).
    fn oauth_token(&self) -> Result<Secret, ProviderError> {
        if let Some(key) = self.remote.key()? {
            return Ok(key.clone());
        }
        let Some(dir) = &self.sign_in_dir else {
            return Err(ProviderError::NotSignedIn {
                detail:
                    "neither XDG_CONFIG_HOME nor HOME is set, so the sign-in file cannot be found"
                        .to_owned(),
            });
        };
        for file in ["apps.json", "hosts.json"] {
            if let Some(token) = read_sign_in(&dir.join(file)) {
                return Ok(token);
            }
        }
        Err(ProviderError::NotSignedIn {
            detail: format!(
                "no GitHub token in {}/apps.json or hosts.json: sign in once with a Copilot editor plugin (e.g. `:Copilot setup` in copilot.vim), or set api_key_env to a variable holding a GitHub OAuth token",
                dir.display()
            ),
        })
    }

    /// A valid Copilot session, exchanging the OAuth token when there is none or it is about
    /// to expire.
    async fn session(&self) -> Result<Session, ProviderError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref().filter(|s| Instant::now() < s.refresh_at) {
            return Ok(session.clone());
        }
        let oauth = self.oauth_token()?;
        let url = self.remote.url("/copilot_internal/v2/token");
        let request = with_client_headers(self.remote.http.get(&url))
            .header(reqwest::header::AUTHORIZATION, oauth.header("token "));
        let hint = "the GitHub sign-in was refused: sign in again with a Copilot editor plugin, and check the account has a Copilot subscription";
        let response = match self.remote.http.send(&url, request, hint).await {
            // GitHub's API hides what a token may not see behind a 404.
            Err(ProviderError::Http { status: 404, message, url }) => {
                return Err(ProviderError::NotSignedIn {
                    detail: format!("{url} answered 404 ({message}): this GitHub account seems to have no Copilot access"),
                })
            }
            other => other?,
        };
        let exchange: TokenExchange = Body::new(&url, response, MAX_BODY).json_secret().await?;
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expires_in = Duration::from_secs(exchange.expires_at.saturating_sub(unix_now));
        let mut refresh_in = expires_in.saturating_sub(REFRESH_MARGIN);
        if let Some(seconds) = exchange.refresh_in {
            refresh_in = refresh_in.min(Duration::from_secs(seconds));
        }
        // Whatever the server says (or however the clocks disagree): not an exchange per call,
        // and not a token kept for hours.
        let refresh_in = refresh_in.clamp(MIN_REFRESH, MAX_REFRESH);
        let endpoints = exchange.endpoints.unwrap_or_default();
        // The token travels to these hosts: TLS, except to this machine (tests, a local proxy).
        let is_url = |u: &String| {
            u.starts_with("https://")
                || ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                    .iter()
                    .any(|local| {
                        u.strip_prefix(local)
                            .is_some_and(|r| r.is_empty() || r.starts_with([':', '/']))
                    })
        };
        let api = endpoints
            .api
            .filter(is_url)
            .ok_or_else(|| ProviderError::Malformed {
                url: url.clone(),
                detail: "the token exchange names no endpoints.api".to_owned(),
            })?;
        let api = api.trim_end_matches('/').to_owned();
        let proxy = endpoints
            .proxy
            .filter(is_url)
            .map_or_else(|| api.clone(), |p| p.trim_end_matches('/').to_owned());
        let session = Session {
            token: exchange.token,
            api,
            proxy,
            refresh_at: now + refresh_in,
        };
        *current = Some(session.clone());
        Ok(session)
    }

    /// Sends the request `build` makes from a valid session (its hosts) to the Copilot API,
    /// with the session's token. A 401 there means the short-lived token was refused
    /// (expired early, revoked, clocks apart): the sign-in is exchanged again and the request
    /// sent once more, so only a refused sign-in reaches the caller as `Unauthorized`.
    async fn call(
        &self,
        build: impl Fn(&Session) -> (String, reqwest::RequestBuilder),
    ) -> Result<(String, reqwest::Response), ProviderError> {
        let hint = "the Copilot token was refused even just after an exchange: check the account's Copilot access";
        let mut retried = false;
        loop {
            let session = self.session().await?;
            let (url, request) = build(&session);
            let request = with_client_headers(request).header(
                reqwest::header::AUTHORIZATION,
                session.token.header("Bearer "),
            );
            match self.remote.http.send(&url, request, hint).await {
                Err(ProviderError::Unauthorized { .. }) if !retried => {
                    *self.session.lock().await = None;
                    retried = true;
                }
                other => return other.map(|response| (url, response)),
            }
        }
    }

    /// Not known of Copilot's chat: never asked to.
    fn continues_answers_now(&self) -> bool {
        false
    }

    /// Its server does not say how many requests it serves at once.
    fn backend_slots_now(&self) -> Option<usize> {
        None
    }

    /// The model chat answers come from.
    fn chat_model_now(&self) -> &str {
        CHAT_MODEL
    }

    /// What it can do now.
    fn capabilities_now(&self) -> Capabilities {
        Capabilities {
            tools: false,
            ..Capabilities::remote(true)
        }
    }

    async fn complete_inner(&self, input: CompletionInput<'_>) -> Result<Proposal, ProviderError> {
        let around = Around::of(input.request, input.context);
        let prompt = format!(
            "{}{}",
            input.context.as_comments(&input.request.language),
            around.prefix
        );
        let body = json!({
            "prompt": prompt,
            "suffix": around.suffix,
            "max_tokens": self.remote.settings.max_tokens.get(),
            "temperature": 0.0,
            "top_p": 1,
            "n": 1,
            "stop": prompt::stop(input.request),
            "stream": true,
            "extra": {
                "language": input.request.language,
                "next_indent": 0,
                "trim_by_indentation": true,
            },
        });
        let (url, response) = self
            .call(|session| {
                let url = format!(
                    "{}/v1/engines/{}/completions",
                    session.proxy, self.remote.settings.model
                );
                let request = self
                    .remote
                    .http
                    .post_json(&url, &body)
                    .header("Openai-Intent", "copilot-ghost");
                (url, request)
            })
            .await?;
        let mut events = SseReader::new(Body::new(&url, response, MAX_COMPLETION_STREAM));
        Ok(proposal(
            input.request,
            &completion_text(&mut events).await?,
        ))
    }

    async fn chat_inner<'a>(&'a self, input: ChatInput<'a>) -> Result<ChatStream, ProviderError> {
        // Copilot's chat models are its own choice; the completion model is not one of them.
        let body = chat_body(CHAT_MODEL, input, false);
        let (url, response) = self
            .call(|session| {
                let url = format!("{}/chat/completions", session.api);
                let request = self
                    .remote
                    .http
                    .post_json(&url, &body)
                    .header("Openai-Intent", "conversation-panel")
                    .header("Copilot-Integration-Id", INTEGRATION_ID);
                (url, request)
            })
            .await?;
        Ok(chat_deltas(SseReader::new(Body::new(
            &url,
            response,
            MAX_CHAT_STREAM,
        ))))
    }

    /// Copilot's agent API is its own: not spoken here.
    async fn converse_inner(&self, _: ConverseInput<'_>) -> Result<ChatStream, ProviderError> {
        Err(ProviderError::Unsupported { what: "tool calls" })
    }

    async fn probe_inner(&self) -> Result<ProbeReport, ProviderError> {
        let (url, response) = self
            .call(|session| {
                let url = format!("{}/models", session.api);
                let request = self
                    .remote
                    .http
                    .get(&url)
                    .header("Copilot-Integration-Id", INTEGRATION_ID);
                (url, request)
            })
            .await?;
        let models: ModelList = Body::new(&url, response, MAX_BODY).json().await?;
        let note = (!self.remote.model_listed(models.data.iter().map(|m| m.id.as_str()))).then(|| {
            format!(
                "{} is not in the models Copilot lists; completions ask for it anyway (Copilot's completion models are often unlisted)",
                self.remote.settings.model
            )
        });
        Ok(ProbeReport { note })
    }
}

remote_provider!(Copilot, "copilot");

fn with_client_headers(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header(reqwest::header::ACCEPT, "application/json")
        .header("Editor-Version", EDITOR_VERSION)
        .header("Editor-Plugin-Version", EDITOR_PLUGIN_VERSION)
}

/// The OAuth token of the `github.com` entry of a sign-in file, if the file has one. Keys are
/// `github.com` (hosts.json) or `github.com:<app id>` (apps.json).
fn read_sign_in(path: &Path) -> Option<Secret> {
    let text = std::fs::read_to_string(path).ok()?;
    let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).ok()?;
    entries
        .iter()
        .filter(|(host, _)| *host == "github.com" || host.starts_with("github.com:"))
        .find_map(|(_, entry)| entry.get("oauth_token")?.as_str().filter(|t| !t.is_empty()))
        .map(|token| Secret::new(token.to_owned()))
}

/// The answer of `/copilot_internal/v2/token`.
#[derive(Debug, Deserialize)]
struct TokenExchange {
    token: Secret,
    /// Unix seconds.
    expires_at: u64,
    /// Seconds until the token should be refreshed.
    refresh_in: Option<u64>,
    endpoints: Option<Endpoints>,
}

#[derive(Debug, Default, Deserialize)]
struct Endpoints {
    api: Option<String>,
    proxy: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_files_of_either_shape_give_the_github_token() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path().join("apps.json");
        std::fs::write(
            &apps,
            r#"{"github.com:Iv1.b507a08c87ecfe98":{"user":"octo","oauth_token":"gho_apps","githubAppId":"Iv1.b507a08c87ecfe98"}}"#,
        )
        .unwrap();
        assert_eq!(read_sign_in(&apps).unwrap().expose(), "gho_apps");
        let hosts = dir.path().join("hosts.json");
        std::fs::write(
            &hosts,
            r#"{"github.com":{"user":"octo","oauth_token":"ghu_hosts"}}"#,
        )
        .unwrap();
        assert_eq!(read_sign_in(&hosts).unwrap().expose(), "ghu_hosts");
        std::fs::write(&hosts, r#"{"ghe.example":{"oauth_token":"x"}}"#).unwrap();
        assert!(read_sign_in(&hosts).is_none());
        std::fs::write(&hosts, "not json").unwrap();
        assert!(read_sign_in(&hosts).is_none());
    }
}
