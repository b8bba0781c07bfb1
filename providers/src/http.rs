//! HTTP plumbing every kind shares: one client per provider with keep-alive, requests sent
//! with the errors of the transport and of the server turned into [`ProviderError`]s that
//! carry the server's own message, and response bodies read within a budget.
//!
//! Cancellation needs nothing here: dropping a request's future or a body mid-read drops the
//! connection (an unfinished HTTP/1.1 body cannot go back to the pool), and the server sees it
//! close. That is how llama.cpp and Ollama learn to stop generating.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ProviderError;

/// Longest wait for a TCP (and TLS) connection. Loopback servers connect in microseconds; a
/// remote API that takes seconds to connect will not make a keystroke's deadline anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle keep-alive connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest error body read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest whole answer read into memory (a models listing, a non-streamed answer).
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long a 429 without `Retry-After` keeps a provider aside.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Longest `Retry-After` honoured; a server asking for more is asked again after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// One provider's HTTP client. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
}

impl Http {
    /// A client with keep-alive and TLS from rustls with *ring* (proxies from the usual
    /// `HTTPS_PROXY`/`NO_PROXY` variables, as every HTTP client honours them).
    pub(crate) fn new() -> Result<Http, reqwest::Error> {
        // reqwest is built without a crypto provider of its own (aws-lc-rs would be a second
        // one next to the *ring* that QUIC uses); it takes the process default, installed here
        // once. `Err` means one is installed already, which is what we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            // A redirect would carry the prompt (and headers such as Anthropic's `x-api-key`,
            // which reqwest does not strip across hosts) wherever it points: refused, and
            // reported so the user fixes base_url instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reaperd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Http { client })
    }

    /// A GET to `url`.
    pub(crate) fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.client.get(url)
    }

    /// A POST of `body` as JSON to `url`.
    pub(crate) fn post_json(&self, url: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        // Serialising a `Value` cannot fail.
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
    }

    /// Sends `request`; a status other than 2xx becomes the matching error, with the server's
    /// message and, for 401/403, `auth_hint` (what the user can do).
    pub(crate) async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
        auth_hint: &str,
    ) -> Result<Response, ProviderError> {
        let again = request.try_clone();
        let response = match (request.send().await, again) {
            (Ok(response), _) => response,
            // The server closed the pooled connection as the request went out on it (it timed
            // it out: llama.cpp after 5 s idle): nothing was processed, so the request is sent
            // again, once, on a new connection, instead of failing the call or the probe and
            // setting the provider aside.
            (Err(e), Some(again)) if closed_before_answering(&e) => {
                tracing::debug!(
                    url,
                    "the server closed the reused connection: sending again"
                );
                again
                    .send()
                    .await
                    .map_err(|e| ProviderError::from_reqwest(url, e))?
            }
            (Err(e), _) => return Err(ProviderError::from_reqwest(url, e)),
        };
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_from(url, response, auth_hint).await)
        }
    }
}

/// Whether `error` is a connection closing before any of the answer arrived (hyper's
/// "incomplete message"), as opposed to a refusal, a timeout or a broken answer.
fn closed_before_answering(error: &reqwest::Error) -> bool {
    if error.is_connect() || error.is_timeout() || error.is_status() || error.is_body() {
        return false;
    }
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        if e.to_string()
            .contains("connection closed before message completed")
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The error a non-2xx answer stands for.
async fn error_from(url: &str, response: Response, auth_hint: &str) -> ProviderError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    if status.is_redirection() {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or("elsewhere");
        return ProviderError::Http {
            url: url.to_owned(),
            status: status.as_u16(),
            message: format!(
                "redirected to {}: redirects are not followed (they would carry the request elsewhere); set base_url to the final address",
                shorten(to, 200)
            ),
        };
    }
    let body = read_at_most(response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let message = error_message(&body);
    let url = url.to_owned();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Unauthorized {
            url,
            status: status.as_u16(),
            message,
            hint: auth_hint.to_owned(),
        },
        // 529 is Anthropic's "overloaded": the same advice as a rate limit.
        s if s == StatusCode::TOO_MANY_REQUESTS || s.as_u16() == 529 => {
            ProviderError::RateLimited {
                url,
                status: s.as_u16(),
                retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                message,
            }
        }
        _ => ProviderError::Http {
            url,
            status: status.as_u16(),
            message,
        },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and read as absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Capped before converting: `Retry-After: 1e20` must not overflow a Duration.
    Duration::try_from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64())).ok()
}

/// The human part of an error body, whichever API sent it: Ollama's `{"error": "..."}`,
/// OpenAI's and llama.cpp's `{"error": {"message": "..."}}`, Anthropic's
/// `{"type": "error", "error": {"type": "...", "message": "..."}}`, GitHub's
/// `{"message": "..."}`; otherwise the body's first line as text, cut short.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let found = value
            .get("error")
            .and_then(|e| {
                e.as_str()
                    .map(str::to_owned)
                    .or_else(|| e.get("message")?.as_str().map(str::to_owned))
            })
            .or_else(|| value.get("message")?.as_str().map(str::to_owned))
            .or_else(|| value.get("detail")?.as_str().map(str::to_owned));
        if let Some(message) = found {
            return shorten(&message, 500);
        }
    }
    let text = String::from_utf8_lossy(body);
    shorten(text.lines().next().unwrap_or("").trim(), 200)
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    format!("{}…", reaper_core::text::head(text, max))
}

/// The whole body, or what fits in `limit` bytes: `None` past it.
async fn read_at_most(mut response: Response, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Some(body);
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// A response body read chunk by chunk within a byte budget: a server that streams forever
/// or sends a giant line cannot grow the daemon's memory.
#[derive(Debug)]
pub(crate) struct Body {
    response: Response,
    url: String,
    read: usize,
    limit: usize,
}

impl Body {
    /// `response`'s body, of which at most `limit` bytes will be read.
    pub(crate) fn new(url: &str, response: Response, limit: usize) -> Body {
        Body {
            response,
            url: url.to_owned(),
            read: 0,
            limit,
        }
    }

    /// The URL it came from, for errors.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The next chunk; `None` at the end.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, ProviderError> {
        let chunk = self
            .response
            .chunk()
            .await
            .map_err(|e| ProviderError::from_reqwest(&self.url, e))?;
        if let Some(chunk) = &chunk {
            self.read += chunk.len();
            if self.read > self.limit {
                return Err(ProviderError::Malformed {
                    url: self.url.clone(),
                    detail: format!("the answer is larger than {} bytes", self.limit),
                });
            }
        }
        Ok(chunk)
    }

    /// The whole body's bytes.
    pub(crate) async fn bytes(mut self) -> Result<Vec<u8>, ProviderError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// The whole body as JSON of type `T`; an error quotes the start of the body.
    pub(crate) async fn json<T: DeserializeOwned>(self) -> Result<T, ProviderError> {
        self.decode(true).await
    }

    /// The same, for a body that may hold a secret (a token exchange): an error never quotes
    /// it.
    pub(crate) async fn json_secret<T: DeserializeOwned>(self) -> Result<T, ProviderError> {
        self.decode(false).await
    }

    async fn decode<T: DeserializeOwned>(self, quote: bool) -> Result<T, ProviderError> {
        let url = self.url.clone();
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
            url,
            detail: if quote {
                format!(
                    "{e} in {:?}",
                    shorten(&String::from_utf8_lossy(&bytes), 200)
                )
            } else {
                format!("{e} (the body is not shown: it may hold a secret)")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_found_in_each_apis_shape() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"error":"model 'x' not found"}"#, "model 'x' not found"),
            (
                br#"{"error":{"code":400,"message":"bad prompt","type":"invalid_request_error"}}"#,
                "bad prompt",
            ),
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                "Overloaded",
            ),
            (
                br#"{"message":"Bad credentials","documentation_url":"x"}"#,
                "Bad credentials",
            ),
            (b"404 page not found\nmore", "404 page not found"),
            (b"", ""),
        ];
        for (body, expected) in cases {
            assert_eq!(error_message(body), expected);
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after", "99999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        // Past what a Duration holds: capped, not a panic.
        headers.insert("retry-after", "1e20".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert("retry-after", "-5".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
