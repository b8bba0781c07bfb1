//! JSON-RPC 2.0 as MCP's stdio transport carries it: one message per line, no line breaks
//! inside a message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message the client sends.
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing<'a> {
    jsonrpc: &'static str,
    /// Set on requests and on responses; absent on notifications.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn request(id: u64, method: &'a str, params: Option<Value>) -> Outgoing<'a> {
        Outgoing {
            jsonrpc: "2.0",
            id: Some(Value::from(id)),
            method: Some(method),
            params,
            result: None,
            error: None,
        }
    }

    pub(crate) fn notification(method: &'a str, params: Option<Value>) -> Outgoing<'a> {
        Outgoing {
            jsonrpc: "2.0",
            id: None,
            method: Some(method),
            params,
            result: None,
            error: None,
        }
    }

    pub(crate) fn response(id: Value, result: Result<Value, RpcError>) -> Outgoing<'static> {
        let (result, error) = match result {
            Ok(value) => (Some(value), None),
            Err(error) => (None, Some(error)),
        };
        Outgoing {
            jsonrpc: "2.0",
            id: Some(id),
            method: None,
            params: None,
            result,
            error,
        }
    }

    /// The message as one line, newline included.
    pub(crate) fn line(&self) -> String {
        // A `Value` and plain fields always serialize; JSON escapes every line break.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) message: String,
}

/// `Method not found`.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;

/// A message from the server, as it is read.
#[derive(Debug, Deserialize)]
struct Raw {
    jsonrpc: Option<String>,
    id: Option<Value>,
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    result: Option<Value>,
    error: Option<RpcError>,
}

/// A message from the server, sorted.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The answer to one of our requests.
    Response {
        id: u64,
        result: Result<Value, RpcError>,
    },
    /// A request of the server's (`roots/list`, `ping`, …).
    Request { id: Value, method: String },
    /// A notification (`notifications/progress`, `notifications/tools/list_changed`, …).
    Notification {
        method: String,
        params: Option<Value>,
    },
}

/// Reads one line as a message; `Err` with why when it is not one.
pub(crate) fn parse(line: &[u8]) -> Result<Incoming, String> {
    let raw: Raw = serde_json::from_slice(line).map_err(|e| format!("not JSON-RPC ({e})"))?;
    if raw.jsonrpc.as_deref() != Some("2.0") {
        return Err("a message without \"jsonrpc\": \"2.0\"".to_owned());
    }
    match (raw.id, raw.method) {
        (Some(id), Some(method)) => Ok(Incoming::Request { id, method }),
        (None, Some(method)) => Ok(Incoming::Notification {
            method,
            params: raw.params,
        }),
        (Some(id), None) => {
            let id = id
                .as_u64()
                .ok_or_else(|| format!("a response to an id this client never sent: {id}"))?;
            let result = match (raw.result, raw.error) {
                (_, Some(error)) => Err(error),
                (Some(result), None) => Ok(result),
                (None, None) => return Err(format!("response {id} has neither result nor error")),
            };
            Ok(Incoming::Response { id, result })
        }
        (None, None) => Err("a message with neither id nor method".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_sorted_into_what_they_are() {
        let response = parse(br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#).unwrap();
        assert!(matches!(
            response,
            Incoming::Response {
                id: 3,
                result: Ok(_)
            }
        ));
        let error =
            parse(br#"{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"bad"}}"#).unwrap();
        assert!(matches!(
            error,
            Incoming::Response {
                id: 4,
                result: Err(RpcError { code: -32602, .. })
            }
        ));
        let request = parse(br#"{"jsonrpc":"2.0","id":0,"method":"roots/list"}"#).unwrap();
        assert!(matches!(request, Incoming::Request { ref method, .. } if method == "roots/list"));
        let notification =
            parse(br#"{"method":"notifications/tools/list_changed","jsonrpc":"2.0"}"#).unwrap();
        assert!(matches!(notification, Incoming::Notification { .. }));
        for bad in [
            &b"hello"[..],
            b"{}",
            br#"{"jsonrpc":"1.0","id":1,"result":1}"#,
            br#"{"jsonrpc":"2.0","id":"x","result":1}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_message_is_one_line() {
        let line =
            Outgoing::request(7, "tools/call", Some(serde_json::json!({"text": "a\nb"}))).line();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert!(line.contains(r#""id":7"#) && line.contains(r#""method":"tools/call""#));
    }
}
