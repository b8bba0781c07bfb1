//! `[providers.NAME]`: where completions come from.
//!
//! `[providers.offline]` is the embedded provider, always present unless disabled. Every other
//! table is a remote provider: `kind` says which API it speaks, and each kind has its own
//! defaults and required keys, checked here so that a mistake is reported with the table, the
//! key and the line before the daemon starts. API keys never sit in the file: `api_key_env`
//! names the environment variable that holds one.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{nonzero32, nonzero64};

/// `[providers]`: the embedded provider and the remote ones, in the order the file lists them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProvidersConfig {
    /// `[providers.offline]`: the embedded provider.
    pub offline: OfflineConfig,
    /// Every other `[providers.NAME]` table, in file order (the tie-break between equal
    /// priorities before any latency is measured).
    pub remote: Vec<RemoteProvider>,
}

impl<'de> Deserialize<'de> for ProvidersConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ProvidersVisitor)
    }
}

struct ProvidersVisitor;

impl<'de> Visitor<'de> for ProvidersVisitor {
    type Value = ProvidersConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("provider tables, e.g. [providers.local] with kind = \"openai\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut config = ProvidersConfig::default();
        while let Some(name) = map.next_key::<String>()? {
            if name == OFFLINE {
                config.offline = map.next_value()?;
                continue;
            }
            if let Err(why) = check_name(&name) {
                return Err(de::Error::custom(format!("[providers.{name}]: {why}")));
            }
            if config.remote.iter().any(|p| p.name == name) {
                return Err(de::Error::custom(format!(
                    "[providers.{name}] is defined twice"
                )));
            }
            let settings: RemoteSettings = map.next_value()?;
            config.remote.push(RemoteProvider { name, settings });
        }
        Ok(config)
    }
}

/// The embedded provider's name, in `reaper.toml` and in responses.
pub const OFFLINE: &str = "offline";

/// Provider names appear in logs, responses and the command line: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(
            "a provider name is 1 to 64 letters, digits, '-' or '_' (it names the provider in responses and logs)"
                .to_owned(),
        );
    }
    Ok(())
}

/// `[providers.offline]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    /// Accepted for symmetry with the other tables; it can only say `offline`.
    pub kind: Option<OfflineKind>,
    /// Whether the embedded provider answers at all (it is the fallback that makes sure the
    /// editor gets something: disable it only to see a remote provider's errors as they are).
    pub enabled: bool,
    /// Where it stands among the providers; `None` (the default) puts it after every remote one.
    pub priority: Option<u32>,
    /// Directories indexed from the start, besides the workspace (git root) of each file
    /// completed.
    pub roots: Vec<String>,
    /// Paths never indexed nor shown to a model, in `.gitignore` syntax, on top of the
    /// built-in credentials rules (`.env`, keys, …).
    pub deny: Vec<String>,
    /// Files larger than this are not indexed (generated code, data).
    #[serde(deserialize_with = "super::range::within::<_, _, 1_024, 268_435_456>")]
    pub max_file_bytes: NonZeroU32,
    /// Memory every workspace's index may take together; past it the least recently used
    /// workspace's index is dropped (indexed again when a completion asks for it).
    #[serde(deserialize_with = "super::range::within::<_, _, 16_777_216, 274_877_906_944>")]
    pub max_index_bytes: NonZeroU64,
    /// A workspace stops being indexed past this many bytes of text.
    #[serde(deserialize_with = "super::range::within::<_, _, 1_024, 4_294_967_295>")]
    pub max_workspace_bytes: NonZeroU32,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig {
            kind: None,
            enabled: true,
            priority: None,
            roots: Vec::new(),
            deny: Vec::new(),
            max_file_bytes: nonzero32(1024 * 1024),
            max_workspace_bytes: nonzero32(256 * 1024 * 1024),
            max_index_bytes: nonzero64(2 * 1024 * 1024 * 1024),
        }
    }
}

/// The only `kind` the `[providers.offline]` table takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineKind {
    /// The embedded model.
    Offline,
}

/// Which API a remote provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Ollama's native API (`/api/generate`, `/api/chat`, `/api/tags`, `/api/show`).
    Ollama,
    /// Any OpenAI-compatible server: llama.cpp, vLLM, LM Studio, OpenAI itself.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// GitHub Copilot, through the user's existing sign-in.
    Copilot,
    /// Not a remote kind: only `[providers.offline]` may say it (rejected with a hint).
    Offline,
}

impl ProviderKind {
    /// The name `kind` takes in `reaper.toml` and `Provider.list` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Copilot => "copilot",
            ProviderKind::Offline => "offline",
        }
    }

    /// `base_url` when the table gives none: where each API's own SDKs point by default.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Ollama => Some("http://127.0.0.1:11434"),
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            // The GitHub API, where the sign-in is exchanged for a Copilot token; the
            // completion API's address comes back in that exchange.
            ProviderKind::Copilot => Some("https://api.github.com"),
            ProviderKind::Offline => None,
        }
    }

    /// `model` when the table gives none. Only Copilot has one: its completion model is fixed
    /// by the service, while every other kind serves whatever the user installed.
    pub fn default_model(self) -> Option<&'static str> {
        match self {
            ProviderKind::Copilot => Some(COPILOT_DEFAULT_MODEL),
            _ => None,
        }
    }
}

/// The model Copilot's completion endpoint is asked for by default.
pub const COPILOT_DEFAULT_MODEL: &str = "gpt-41-copilot";

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[providers.NAME]` table other than `offline`.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteProvider {
    /// The table's name: how responses, logs and `reaper providers` call it.
    pub name: String,
    /// Its settings.
    pub settings: RemoteSettings,
}

/// A remote provider's settings, with every default filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RemoteTable")]
pub struct RemoteSettings {
    /// Which API it speaks.
    pub kind: ProviderKind,
    /// Root of the API, as the API's own SDKs take it (`http://127.0.0.1:8080/v1` for an
    /// OpenAI-compatible server, `http://127.0.0.1:11434` for Ollama).
    pub base_url: String,
    /// The model to ask.
    pub model: String,
    /// Name of the environment variable holding the API key (for `copilot`: a GitHub OAuth
    /// token, instead of the editor sign-in file).
    pub api_key_env: Option<String>,
    /// Lower is asked first.
    pub priority: u32,
    /// Longest a completion may take from this provider before the next one is asked.
    pub timeout_ms: NonZeroU64,
    /// Requests to this provider in flight at once; more wait for a slot.
    pub max_in_flight: NonZeroU32,
    /// Slots of `max_in_flight` that chats never take, so a keystroke's completion never
    /// waits behind chats for one (chats always get at least one slot).
    pub completion_reserve: u32,
    /// Whether a chat streaming from this provider stops while a completion asks it, and goes
    /// on from where it was after: for a model server on this machine, whose one backend a
    /// chat would otherwise hold while the completion waits.
    pub chat_yields: bool,
    /// Longest completion, in tokens.
    pub max_tokens: NonZeroU32,
    /// How completion prompts are written instead of the family recognised from the model's
    /// name: a family's name ([`FIM_FAMILIES`]), or a template with `{prefix}` and `{suffix}`
    /// in it, sent as the raw prompt instead of the server's own FIM.
    pub fim_template: Option<String>,
    /// How long Ollama keeps the model loaded after a request (`ollama` only).
    pub keep_alive: Option<String>,
    /// Whether the provider is asked at all.
    pub enabled: bool,
}

/// The model families `fim_template` may name (`reaper-providers` has their tokens): a
/// family's FIM template, `chat` for a hole-filling instruction, `none` for the text before
/// the cursor alone.
pub const FIM_FAMILIES: &[&str] = &[
    "starcoder",
    "codellama",
    "deepseek-coder",
    "qwen-coder",
    "codestral",
    "codegemma",
    "chat",
    "none",
];

/// Defaults of the keys every kind shares.
const DEFAULT_PRIORITY: u32 = 0;
const DEFAULT_TIMEOUT_MS: u64 = 3_000;
const DEFAULT_MAX_IN_FLIGHT: u32 = 2;
const DEFAULT_COMPLETION_RESERVE: u32 = 1;
const DEFAULT_MAX_TOKENS: u32 = 64;
/// Ollama unloads an idle model after 5 minutes by default; an editor asks in bursts with
/// pauses longer than that, and reloading costs seconds.
pub const DEFAULT_OLLAMA_KEEP_ALIVE: &str = "30m";

/// A remote provider table as written, before defaults and per-kind checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteTable {
    kind: Option<ProviderKind>,
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    priority: Option<u32>,
    #[serde(
        default,
        deserialize_with = "super::range::within_opt::<_, _, 1, 600_000>"
    )]
    timeout_ms: Option<NonZeroU64>,
    #[serde(
        default,
        deserialize_with = "super::range::within_opt::<_, _, 1, 1_024>"
    )]
    max_in_flight: Option<NonZeroU32>,
    #[serde(
        default,
        deserialize_with = "super::range::within_opt::<_, _, 0, 1_024>"
    )]
    completion_reserve: Option<u32>,
    chat_yields: Option<bool>,
    #[serde(
        default,
        deserialize_with = "super::range::within_opt::<_, _, 1, 32_768>"
    )]
    max_tokens: Option<NonZeroU32>,
    fim_template: Option<String>,
    keep_alive: Option<String>,
    enabled: Option<bool>,
}

impl TryFrom<RemoteTable> for RemoteSettings {
    type Error = String;

    fn try_from(t: RemoteTable) -> Result<Self, String> {
        let kinds = "\"ollama\", \"openai\", \"anthropic\" or \"copilot\"";
        let kind = match t.kind {
            None => return Err(format!("missing key `kind`: say which API the provider speaks: {kinds}")),
            Some(ProviderKind::Offline) => {
                return Err(
                    "kind = \"offline\" is the embedded provider: configure it under [providers.offline]"
                        .to_owned(),
                )
            }
            Some(kind) => kind,
        };
        let base_url = match t.base_url {
            Some(url) => check_url(url)?,
            None => kind.default_base_url().unwrap_or_default().to_owned(),
        };
        let model = match (t.model, kind.default_model()) {
            (Some(model), _) if !model.trim().is_empty() => model,
            (Some(_), _) => return Err("`model` is empty".to_owned()),
            (None, Some(default)) => default.to_owned(),
            (None, None) => {
                let example = match kind {
                    ProviderKind::Ollama => "\"qwen2.5-coder:1.5b\" (see `ollama list`)",
                    ProviderKind::Anthropic => "\"claude-haiku-4-5\"",
                    _ => "the id the server lists at GET {base_url}/models",
                };
                return Err(format!(
                    "missing key `model`: kind = \"{kind}\" needs the model to ask, e.g. {example}"
                ));
            }
        };
        if let Some(var) = &t.api_key_env {
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '_';
            if var.is_empty() || !var.chars().all(plain) {
                return Err(format!(
                    "`api_key_env` = {var:?} must be the NAME of an environment variable (e.g. \"OPENAI_API_KEY\"), never the key itself"
                ));
            }
        }
        if let Some(template) = &t.fim_template {
            let family = FIM_FAMILIES
                .iter()
                .any(|f| f.eq_ignore_ascii_case(template));
            if !family && !template.contains("{prefix}") {
                return Err(format!(
                    "`fim_template` must name a model family ({}) or be a template with {{prefix}} (and usually {{suffix}}) in it, e.g. \"<fim_prefix>{{prefix}}<fim_suffix>{{suffix}}<fim_middle>\"",
                    FIM_FAMILIES.join(", ")
                ));
            }
        }
        if t.keep_alive.is_some() && kind != ProviderKind::Ollama {
            return Err(format!(
                "`keep_alive` applies to kind = \"ollama\" only, not \"{kind}\""
            ));
        }
        let keep_alive = match kind {
            ProviderKind::Ollama => Some(
                t.keep_alive
                    .unwrap_or_else(|| DEFAULT_OLLAMA_KEEP_ALIVE.to_owned()),
            ),
            _ => None,
        };
        let chat_yields = t
            .chat_yields
            .unwrap_or_else(|| yields_by_default(kind, &base_url));
        Ok(RemoteSettings {
            kind,
            base_url,
            model,
            api_key_env: t.api_key_env,
            priority: t.priority.unwrap_or(DEFAULT_PRIORITY),
            timeout_ms: t.timeout_ms.unwrap_or(nonzero64(DEFAULT_TIMEOUT_MS)),
            max_in_flight: t.max_in_flight.unwrap_or(nonzero32(DEFAULT_MAX_IN_FLIGHT)),
            completion_reserve: t.completion_reserve.unwrap_or(DEFAULT_COMPLETION_RESERVE),
            chat_yields,
            max_tokens: t.max_tokens.unwrap_or(nonzero32(DEFAULT_MAX_TOKENS)),
            fim_template: t.fim_template,
            keep_alive,
            enabled: t.enabled.unwrap_or(true),
        })
    }
}

/// Whether chats yield to completions unless the table says: for the kinds that serve local
/// models (llama.cpp, vLLM, LM Studio, Ollama) at an address on this machine, where one
/// backend serves both; a cloud API serves each request on its own.
fn yields_by_default(kind: ProviderKind, base_url: &str) -> bool {
    let host = base_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|authority| match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => host,
            _ => authority,
        })
        .unwrap_or("");
    let local = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    matches!(kind, ProviderKind::Openai | ProviderKind::Ollama) && local
}

/// A base URL must be absolute http(s); a trailing `/` is dropped so paths join cleanly.
fn check_url(url: String) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let authority = rest.map(|r| r.split('/').next().unwrap_or(r));
    // Credentials or a query in the URL would be shown wherever the URL is (errors, logs,
    // `reaper providers`): keys belong in api_key_env.
    if authority.is_some_and(|a| a.contains('@')) || url.contains(['?', '#']) {
        return Err(
            "`base_url` must not carry credentials or a query (they would appear in logs and errors): put the key in an environment variable named by api_key_env"
                .to_owned(),
        );
    }
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace) => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        _ => Err(format!(
            "`base_url` = {url:?} is not an http:// or https:// URL (e.g. \"http://127.0.0.1:8080/v1\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, "reaper.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_gets_its_defaults_and_tables_keep_file_order() {
        let config = parse(
            r#"
[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:8080/v1/"
model = "qwen"

[providers.ollama]
kind = "ollama"
model = "qwen2.5-coder:1.5b"
priority = 3

[providers.copilot]
kind = "copilot"
enabled = false

[providers.offline]
priority = 1
"#,
        )
        .unwrap();
        let remote = &config.providers.remote;
        let names: Vec<&str> = remote.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["local", "ollama", "copilot"]);
        assert_eq!(remote[0].settings.base_url, "http://127.0.0.1:8080/v1");
        assert_eq!(remote[0].settings.keep_alive, None);
        assert_eq!(remote[1].settings.base_url, "http://127.0.0.1:11434");
        assert_eq!(remote[1].settings.keep_alive.as_deref(), Some("30m"));
        assert_eq!(remote[1].settings.priority, 3);
        assert_eq!(remote[2].settings.model, COPILOT_DEFAULT_MODEL);
        assert!(!remote[2].settings.enabled);
        assert_eq!(config.providers.offline.priority, Some(1));
        assert_eq!(remote[0].settings.timeout_ms.get(), DEFAULT_TIMEOUT_MS);
    }

    #[test]
    fn mistakes_name_the_table_the_key_and_the_line() {
        let cases = [
            (
                "[providers.gpt]\nmodel = \"x\"\n",
                &["line 1", "[providers.gpt]", "missing key `kind`"][..],
            ),
            (
                "[providers.gpt]\nkind = \"gemini\"\nmodel = \"x\"\n",
                &["line 2", "gemini", "ollama"],
            ),
            (
                "\n[providers.gpt]\nkind = \"openai\"\n",
                &["line 2", "[providers.gpt]", "missing key `model`"],
            ),
            (
                "[providers.gpt]\nkind = \"openai\"\nmodel = \"x\"\napi_key = \"sk-123\"\n",
                &["line 4", "api_key"],
            ),
            (
                "[providers.gpt]\nkind = \"openai\"\nmodel = \"x\"\napi_key_env = \"sk-live key\"\n",
                &["line 1", "[providers.gpt]", "NAME of an environment variable"],
            ),
            (
                "[providers.gpt]\nkind = \"openai\"\nmodel = \"x\"\nbase_url = \"127.0.0.1:8080\"\n",
                &["[providers.gpt]", "base_url"],
            ),
            (
                "[providers.gpt]\nkind = \"openai\"\nmodel = \"x\"\nbase_url = \"https://me:sk-1@h/v1\"\n",
                &["[providers.gpt]", "must not carry credentials"],
            ),
            (
                "[providers.x]\nkind = \"offline\"\n",
                &["[providers.x]", "[providers.offline]"],
            ),
            (
                "[providers.\"a b\"]\nkind = \"openai\"\nmodel = \"m\"\n",
                &["a b", "provider name"],
            ),
            (
                "[providers.gpt]\nkind = \"openai\"\nmodel = \"m\"\nkeep_alive = \"5m\"\n",
                &["[providers.gpt]", "keep_alive"],
            ),
            (
                "[providers.gpt]\nkind = \"openai\"\nmodel = \"m\"\nfim_template = \"<pre>\"\n",
                &["[providers.gpt]", "{prefix}", "qwen-coder"],
            ),
            (
                "[providers.gpt]\nkind = \"openai\"\nmodel = \"m\"\ntimeout_ms = 0\n",
                &["line 4", "nonzero"],
            ),
        ];
        for (text, words) in cases {
            let message = parse(text).unwrap_err();
            for word in words {
                assert!(message.contains(word), "{text:?} -> {message}");
            }
        }
    }
}
