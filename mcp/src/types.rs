//! What MCP servers offer and answer, as far as reaper reads it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who a server says it is, and what it agreed to.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// Its name (`serverInfo.name`).
    pub name: String,
    /// Its version (`serverInfo.version`).
    pub version: String,
    /// The protocol version both sides speak.
    pub protocol_version: String,
    /// What it says about using it (for a model), if anything.
    pub instructions: Option<String>,
    /// Its capabilities as it sent them.
    pub capabilities: Value,
}

/// A tool a server offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Its name, unique on its server.
    pub name: String,
    /// A title for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What it does (for a model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its arguments.
    #[serde(rename = "inputSchema", default)]
    pub input_schema: Value,
    /// Hints (read-only, destructive, …), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

/// What a tool call gave back.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// Its content items, as sent (`text`, `image`, `resource`, …).
    pub content: Vec<Value>,
    /// Its structured result, if it has one.
    pub structured: Option<Value>,
    /// Whether the tool says it failed (the call itself worked: the failure is for the model
    /// to read, not a protocol error).
    pub is_error: bool,
}

impl ToolResult {
    /// The result as text: text items as they are, anything else named in brackets.
    pub fn text(&self) -> String {
        let parts: Vec<String> = self
            .content
            .iter()
            .map(|item| {
                let field = |name: &str| item[name].as_str().unwrap_or("");
                match field("type") {
                    "text" => field("text").to_owned(),
                    "image" | "audio" => format!(
                        "[{} {}, {} bytes in base64]",
                        field("type"),
                        field("mimeType"),
                        field("data").len()
                    ),
                    "resource" => match item["resource"]["text"].as_str() {
                        Some(text) => text.to_owned(),
                        None => format!(
                            "[resource {}]",
                            item["resource"]["uri"].as_str().unwrap_or("")
                        ),
                    },
                    "resource_link" => format!("[link {} {}]", field("name"), field("uri")),
                    other => format!("[{other} content]"),
                }
            })
            .collect();
        if parts.is_empty() {
            if let Some(structured) = &self.structured {
                return structured.to_string();
            }
        }
        parts.join("\n")
    }
}

/// A resource a server offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Its URI.
    pub uri: String,
    /// Its name.
    pub name: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its media type.
    #[serde(rename = "mimeType", default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One part of a resource read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceContents {
    /// Its URI.
    pub uri: String,
    /// Its media type.
    #[serde(rename = "mimeType", default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Its text, for a text resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Its bytes in base64, for a binary one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
}

/// A prompt a server offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Its name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments, as sent.
    #[serde(default)]
    pub arguments: Vec<Value>,
}

/// How far a long tool call has come (`notifications/progress`).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// How much is done.
    pub progress: f64,
    /// Out of how much, if known.
    pub total: Option<f64>,
    /// What it is doing, if it says.
    pub message: Option<String>,
}

/// A directory a server may work in (`roots/list`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Root {
    /// `file://` URI.
    pub uri: String,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Root {
    /// The root for directory `path` (absolute), named after its last component.
    pub fn directory(path: &Path) -> Root {
        let text = path.to_string_lossy();
        let mut uri = String::from("file://");
        for byte in text.bytes() {
            let plain = byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte);
            if plain {
                uri.push(byte as char);
            } else {
                uri.push_str(&format!("%{byte:02X}"));
            }
        }
        Root {
            uri,
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_root_is_a_file_uri_with_odd_bytes_escaped() {
        let root = Root::directory(Path::new("/home/ann/my project/ünï"));
        assert_eq!(root.uri, "file:///home/ann/my%20project/%C3%BCn%C3%AF");
        assert_eq!(root.name.as_deref(), Some("ünï"));
    }

    #[test]
    fn a_results_text_names_what_is_not_text() {
        let result = ToolResult {
            content: vec![
                json!({"type": "text", "text": "Echo: hi"}),
                json!({"type": "image", "data": "AAAA", "mimeType": "image/png"}),
                json!({"type": "resource", "resource": {"uri": "test://1", "text": "body"}}),
                json!({"type": "resource_link", "uri": "test://2", "name": "two"}),
            ],
            structured: None,
            is_error: false,
        };
        assert_eq!(
            result.text(),
            "Echo: hi\n[image image/png, 4 bytes in base64]\nbody\n[link two test://2]"
        );
    }
}
