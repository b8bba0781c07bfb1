//! Tool calling: an agent's conversation — turns with the model's tool calls and their
//! results — and the tools it may call, written in each API's own shape.
//!
//! OpenAI-compatible servers take `tools` as functions and answer with `tool_calls` (streamed
//! in pieces by index: [`CallParts`] puts them together); Anthropic takes `tools` with an
//! `input_schema` and answers with `tool_use` blocks (their input streamed as partial JSON);
//! Ollama takes OpenAI's `tools` and answers with whole `tool_calls` on one line. A call whose
//! arguments are not JSON is still a call: its arguments are the text as sent, and the agent
//! tells the model so.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A tool a model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON Schema of its arguments (an object schema).
    pub parameters: Value,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// Its id, to give its result back under (made up when the API has none).
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its arguments: a JSON object, or the text as sent if it was not JSON.
    pub arguments: Value,
}

/// One turn of an agent's conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// Instructions for the model.
    System(String),
    /// What the user (or the agent on the user's behalf) says.
    User(String),
    /// What the model answered: text, and the tools it called.
    Assistant {
        /// Its text.
        text: String,
        /// Its calls, in order.
        calls: Vec<ToolCall>,
    },
    /// The result of one call.
    Tool {
        /// The call's id.
        call_id: String,
        /// The tool's name.
        name: String,
        /// What it gave back (or why it failed, or was refused).
        content: String,
        /// Whether it failed.
        is_error: bool,
    },
}

/// A step of an agent's conversation to ask a model for.
#[derive(Debug, Clone, Copy)]
pub struct ConverseInput<'a> {
    /// The conversation so far.
    pub turns: &'a [Turn],
    /// The tools it may call.
    pub tools: &'a [ToolSpec],
    /// Longest answer, in tokens.
    pub max_tokens: u32,
}

// ---- OpenAI-compatible (and Ollama's requests) ----

/// `tools` as OpenAI (and Ollama) take them.
pub(crate) fn openai_tools(tools: &[ToolSpec]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            json!({"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters,
            }})
        })
        .collect()
}

/// `messages` as OpenAI takes them (`ollama`: Ollama's variant, arguments as objects).
pub(crate) fn openai_messages(turns: &[Turn], ollama: bool) -> Vec<Value> {
    turns
        .iter()
        .map(|turn| match turn {
            Turn::System(text) => json!({"role": "system", "content": text}),
            Turn::User(text) => json!({"role": "user", "content": text}),
            Turn::Assistant { text, calls } => {
                let mut message = json!({"role": "assistant", "content": text});
                if !calls.is_empty() {
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|c| {
                            let arguments = if ollama {
                                // Ollama takes an object only: arguments that were not JSON go
                                // back empty (the tool's result said what was wrong).
                                match &c.arguments {
                                    Value::Object(_) => c.arguments.clone(),
                                    _ => json!({}),
                                }
                            } else {
                                // OpenAI sends (and takes back) the arguments as a JSON string.
                                match &c.arguments {
                                    Value::String(raw) => Value::String(raw.clone()),
                                    other => Value::String(other.to_string()),
                                }
                            };
                            json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
                        })
                        .collect();
                    message["tool_calls"] = Value::Array(calls);
                }
                message
            }
            Turn::Tool {
                call_id,
                name,
                content,
                ..
            } => {
                if ollama {
                    json!({"role": "tool", "content": content, "tool_name": name})
                } else {
                    json!({"role": "tool", "tool_call_id": call_id, "content": content})
                }
            }
        })
        .collect()
}

/// OpenAI-style tool calls streamed in pieces (by `index`), put together. The id and the
/// name come whole, once (some servers repeat them on every piece: kept once); the
/// arguments come in pieces. A server that leaves `index` out is followed by id: a new id is
/// a new call.
#[derive(Debug, Default)]
pub(crate) struct CallParts {
    parts: BTreeMap<u64, (String, String, String)>,
    /// The index of the call read last, for pieces without one.
    last: Option<u64>,
}

impl CallParts {
    /// Adds one chunk's `delta.tool_calls`.
    pub(crate) fn feed(&mut self, calls: &Value) {
        let Some(calls) = calls.as_array() else {
            return;
        };
        for call in calls {
            let id = call["id"].as_str().filter(|id| !id.is_empty());
            let index = match call["index"].as_u64() {
                Some(index) => index,
                None => match (self.last, id) {
                    (Some(last), Some(id)) if self.parts.get(&last).is_some_and(|p| p.0 != id) => {
                        self.parts.keys().next_back().map_or(0, |k| k + 1)
                    }
                    (Some(last), _) => last,
                    (None, _) => 0,
                },
            };
            self.last = Some(index);
            let part = self.parts.entry(index).or_default();
            if let Some(id) = id {
                if part.0.is_empty() {
                    part.0 = id.to_owned();
                }
            }
            if let Some(name) = call["function"]["name"].as_str() {
                if part.1.is_empty() {
                    part.1 = name.to_owned();
                } else if part.1 != name {
                    // A name streamed in pieces.
                    part.1.push_str(name);
                }
            }
            match &call["function"]["arguments"] {
                Value::String(piece) => part.2.push_str(piece),
                // Some servers send the arguments whole, as an object.
                Value::Object(_) => part.2 = call["function"]["arguments"].to_string(),
                _ => {}
            }
        }
    }

    /// The calls, complete; empty when none were made.
    pub(crate) fn finish(&mut self) -> Vec<ToolCall> {
        self.last = None;
        std::mem::take(&mut self.parts)
            .into_iter()
            .map(|(index, (id, name, arguments))| ToolCall {
                id: if id.is_empty() {
                    format!("call_{index}")
                } else {
                    id
                },
                name,
                arguments: parse_arguments(&arguments),
            })
            .collect()
    }
}

/// Arguments as JSON, or, when they are not JSON, the text as sent.
pub(crate) fn parse_arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

// ---- Anthropic ----

/// `tools` as Anthropic takes them.
pub(crate) fn anthropic_tools(tools: &[ToolSpec]) -> Vec<Value> {
    tools
        .iter()
        .map(
            |t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}),
        )
        .collect()
}

/// The system prompt and `messages` as Anthropic takes them: tool results are user turns of
/// `tool_result` blocks, consecutive ones merged (the API wants turns to alternate).
pub(crate) fn anthropic_messages(turns: &[Turn]) -> (Option<String>, Vec<Value>) {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut push = |role: &str, blocks: Vec<Value>| {
        if let Some(last) = messages.last_mut() {
            if last["role"] == role {
                if let Some(existing) = last["content"].as_array_mut() {
                    existing.extend(blocks);
                    return;
                }
            }
        }
        messages.push(json!({"role": role, "content": blocks}));
    };
    for turn in turns {
        match turn {
            Turn::System(text) => system.push(text.clone()),
            Turn::User(text) => push("user", vec![json!({"type": "text", "text": text})]),
            Turn::Assistant { text, calls } => {
                let mut blocks = Vec::new();
                // The API refuses a text block of whitespace alone.
                if !text.trim().is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in calls {
                    let input = match &call.arguments {
                        Value::Object(_) => call.arguments.clone(),
                        _ => json!({}),
                    };
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
                }
                push("assistant", blocks);
            }
            Turn::Tool {
                call_id,
                content,
                is_error,
                ..
            } => push(
                "user",
                vec![
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}),
                ],
            ),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    (system, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns() -> Vec<Turn> {
        vec![
            Turn::System("Be careful.".into()),
            Turn::User("Fix the bug.".into()),
            Turn::Assistant {
                text: "Reading it.".into(),
                calls: vec![
                    ToolCall {
                        id: "c1".into(),
                        name: "read_file".into(),
                        arguments: json!({"path": "src/lib.rs"}),
                    },
                    ToolCall {
                        id: "c2".into(),
                        name: "list_dir".into(),
                        arguments: json!({"path": "."}),
                    },
                ],
            },
            Turn::Tool {
                call_id: "c1".into(),
                name: "read_file".into(),
                content: "fn main() {}".into(),
                is_error: false,
            },
            Turn::Tool {
                call_id: "c2".into(),
                name: "list_dir".into(),
                content: "src/".into(),
                is_error: false,
            },
        ]
    }

    #[test]
    fn each_api_gets_the_conversation_in_its_shape() {
        let openai = openai_messages(&turns(), false);
        assert_eq!(
            openai[2]["tool_calls"][0]["function"]["arguments"],
            r#"{"path":"src/lib.rs"}"#
        );
        assert_eq!(
            openai[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "fn main() {}"})
        );
        let ollama = openai_messages(&turns(), true);
        assert_eq!(
            ollama[2]["tool_calls"][0]["function"]["arguments"],
            json!({"path": "src/lib.rs"})
        );
        assert_eq!(ollama[4]["tool_name"], "list_dir");
        let (system, anthropic) = anthropic_messages(&turns());
        assert_eq!(system.as_deref(), Some("Be careful."));
        assert_eq!(
            anthropic.len(),
            3,
            "the two results share one user turn: {anthropic:?}"
        );
        assert_eq!(anthropic[1]["content"][1]["type"], "tool_use");
        assert_eq!(anthropic[2]["content"][1]["tool_use_id"], "c2");
    }

    #[test]
    fn streamed_call_pieces_are_put_together() {
        let mut parts = CallParts::default();
        parts.feed(&json!([{"index": 0, "id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": ""}}]));
        parts.feed(&json!([{"index": 0, "function": {"arguments": "{\"pa"}}]));
        parts.feed(&json!([{"index": 0, "function": {"arguments": "th\": \"a.rs\"}"}}, {"index": 1, "function": {"name": "oops", "arguments": "not json"}}]));
        let calls = parts.finish();
        assert_eq!(
            calls[0],
            ToolCall {
                id: "call_a".into(),
                name: "read_file".into(),
                arguments: json!({"path": "a.rs"})
            }
        );
        assert_eq!(calls[1].id, "call_1");
        assert_eq!(calls[1].arguments, json!("not json"));
        assert!(parts.finish().is_empty());

        // A server that repeats the id and name on every piece, and one without indexes.
        let mut parts = CallParts::default();
        parts.feed(
            &json!([{"id": "a", "function": {"name": "read_file", "arguments": "{\"path\":"}}]),
        );
        parts.feed(&json!([{"id": "a", "function": {"name": "read_file", "arguments": "\"x\"}"}}]));
        parts.feed(&json!([{"id": "b", "function": {"name": "list_dir", "arguments": "{}"}}]));
        let calls = parts.finish();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0].name, "read_file");
        assert_eq!(calls[0].arguments, json!({"path": "x"}));
        assert_eq!(calls[1].id, "b");
    }
}
