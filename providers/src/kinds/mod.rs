//! One module per API a remote provider may speak, and what they share: the configured
//! settings, one HTTP client, and the API key read once from the environment.

/// The `Provider` impl every remote kind shares: its identity from its `Remote`, its work
/// from its own `capabilities_now`, `chat_model_now`, `backend_slots_now`,
/// `continues_answers_now`, `complete_inner`, `chat_inner`, `converse_inner` and `probe_inner`.
macro_rules! remote_provider {
    ($type:ty, $kind:literal) => {
        impl crate::provider::Provider for $type {
            fn name(&self) -> &str {
                &self.remote.name
            }

            fn kind(&self) -> &'static str {
                $kind
            }

            fn model(&self) -> &str {
                &self.remote.settings.model
            }

            fn chat_model(&self) -> &str {
                self.chat_model_now()
            }

            fn backend_slots(&self) -> Option<usize> {
                self.backend_slots_now()
            }

            fn continues_answers(&self) -> bool {
                self.continues_answers_now()
            }

            fn capabilities(&self) -> crate::provider::Capabilities {
                self.capabilities_now()
            }

            fn complete<'a>(
                &'a self,
                input: crate::provider::CompletionInput<'a>,
            ) -> crate::provider::BoxFuture<'a, Result<crate::provider::Proposal, ProviderError>>
            {
                Box::pin(self.complete_inner(input))
            }

            fn chat<'a>(
                &'a self,
                input: crate::provider::ChatInput<'a>,
            ) -> crate::provider::BoxFuture<'a, Result<crate::provider::ChatStream, ProviderError>>
            {
                Box::pin(self.chat_inner(input))
            }

            fn converse<'a>(
                &'a self,
                input: crate::tools::ConverseInput<'a>,
            ) -> crate::provider::BoxFuture<'a, Result<crate::provider::ChatStream, ProviderError>>
            {
                Box::pin(self.converse_inner(input))
            }

            fn probe(
                &self,
            ) -> crate::provider::BoxFuture<'_, Result<crate::provider::ProbeReport, ProviderError>>
            {
                Box::pin(self.probe_inner())
            }
        }
    };
}

pub mod anthropic;
pub mod copilot;
pub mod ollama;
pub mod openai;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use reaper_core::config::{ProviderKind, RemoteSettings};
use reaper_core::schema::Role;

use crate::error::ProviderError;
use crate::http::Http;
use crate::pool::BuildError;
use crate::provider::{ChatPiece, ChatStream, Provider};

/// The provider `[providers.name]` describes, its key (if any) looked up with `env`.
pub fn build(
    name: &str,
    settings: &RemoteSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Provider>, BuildError> {
    let remote = Remote::new(name, settings.clone(), env).map_err(|source| BuildError::Http {
        name: name.to_owned(),
        source,
    })?;
    Ok(match settings.kind {
        ProviderKind::Ollama => Arc::new(ollama::Ollama::new(remote)),
        ProviderKind::Openai => Arc::new(openai::OpenAi::new(remote)),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(remote)),
        ProviderKind::Copilot => Arc::new(copilot::Copilot::new(remote, env)),
        // The config refuses `offline` for a remote table; should one get here, say so.
        ProviderKind::Offline => {
            return Err(BuildError::NotRemote {
                name: name.to_owned(),
            })
        }
    })
}

/// An API key or token. Its `Debug` never shows it, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value (tests compare it; requests use [`Secret::header`]).
    #[cfg(test)]
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The value as a header, marked sensitive (so HTTP libraries leave it out of their
    /// debug output too).
    pub(crate) fn header(&self, prefix: &str) -> reqwest::header::HeaderValue {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("{prefix}{}", self.0))
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What every remote provider holds: its name, settings, client and key.
#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) name: String,
    pub(crate) settings: RemoteSettings,
    pub(crate) http: Http,
    /// The key from `api_key_env`; `Err` when the variable is named but not set (every call
    /// then fails with that, and the provider shows `needs_auth`).
    key: Result<Option<Secret>, ProviderError>,
}

impl Remote {
    /// `settings` for provider `name`, its key looked up with `env`.
    pub(crate) fn new(
        name: &str,
        settings: RemoteSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Remote, reqwest::Error> {
        let key = match &settings.api_key_env {
            None => Ok(None),
            Some(var) => match env(var).filter(|v| !v.trim().is_empty()) {
                Some(value) => Ok(Some(Secret::new(value.trim().to_owned()))),
                None => Err(ProviderError::MissingKey { var: var.clone() }),
            },
        };
        Ok(Remote {
            name: name.to_owned(),
            settings,
            http: Http::new()?,
            key,
        })
    }

    /// The API key, if one is configured; the missing-variable error if it is not set.
    pub(crate) fn key(&self) -> Result<Option<&Secret>, ProviderError> {
        self.key.as_ref().map(Option::as_ref).map_err(Clone::clone)
    }

    /// `request` with the API key as a bearer token, if one is configured (OpenAI-compatible
    /// servers; Ollama takes none itself, a proxy in front of it may).
    pub(crate) fn with_bearer(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        Ok(match self.key()? {
            Some(key) => request.header(reqwest::header::AUTHORIZATION, key.header("Bearer ")),
            None => request,
        })
    }

    /// Lists the models at `url` (OpenAI's shape, which Anthropic's shares), the request made
    /// ready by `prepare`; `ModelNotFound`, with what is served, when the configured model is
    /// not among them.
    pub(crate) async fn list_models(
        &self,
        url: &str,
        prepare: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, ProviderError>,
    ) -> Result<openai::ModelList, ProviderError> {
        let request = prepare(self.http.get(url))?;
        let response = self.http.send(url, request, &self.auth_hint()).await?;
        let models: openai::ModelList =
            crate::http::Body::new(url, response, crate::http::MAX_BODY)
                .json()
                .await?;
        if !self.model_listed(models.data.iter().map(|m| m.id.as_str())) {
            let served: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).take(10).collect();
            return Err(ProviderError::ModelNotFound {
                url: url.to_owned(),
                model: self.settings.model.clone(),
                detail: format!(
                    "the server lists {served:?}: set model in [providers.{}] to one of them",
                    self.name
                ),
            });
        }
        Ok(models)
    }

    /// `path` under the configured base URL.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url)
    }

    /// What to do about a 401/403.
    pub(crate) fn auth_hint(&self) -> String {
        match &self.settings.api_key_env {
            Some(var) => format!(
                "check the key in ${var} (api_key_env of [providers.{}])",
                self.name
            ),
            None => format!(
                "this server wants a key: set api_key_env in [providers.{}] to the name of a variable holding it",
                self.name
            ),
        }
    }

    /// Whether the configured model is one of `served` (ids as the server lists them). A
    /// listed path or file name matches its base name with or without `.gguf` (llama.cpp lists
    /// the model file), and a listed id matches a configured prefix of it (APIs accept aliases
    /// such as `claude-haiku-4-5` for dated ids).
    pub(crate) fn model_listed<'a>(&self, mut served: impl Iterator<Item = &'a str>) -> bool {
        let wanted = self.settings.model.as_str();
        served.any(|id| {
            let base = id.rsplit('/').next().unwrap_or(id);
            id == wanted
                || base == wanted
                || base.strip_suffix(".gguf") == Some(wanted)
                || id.starts_with(wanted)
        })
    }
}

/// A chat role as the OpenAI-style APIs spell it.
pub(crate) fn role_name(role: &Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::System => "system",
    }
}

/// The whole text of a chat answer (a completion asked of a chat model).
pub(crate) async fn answer_text(mut stream: ChatStream) -> Result<String, ProviderError> {
    let mut text = String::new();
    while let Some(piece) = futures::StreamExt::next(&mut stream).await {
        if let ChatPiece::Text(delta) = piece? {
            text.push_str(&delta);
        }
    }
    Ok(text)
}

/// Milliseconds left until `deadline`, at least 1 (for servers that take a time limit).
pub(crate) fn millis_until(deadline: Instant) -> u64 {
    deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .clamp(1, u64::MAX as u128) as u64
}

/// The confidence given to a model's non-empty answer. Models here return no calibrated
/// score yet (the model-completion issue brings one); 0.5 is the threshold the editor shows
/// answers at, so a model's answer is shown, and the offline model's more confident ones rank
/// with it honestly.
pub(crate) const MODEL_CONFIDENCE: f32 = 0.5;
