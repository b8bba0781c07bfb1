//! The two encodings a call's messages may use, chosen per call in the request head.
//!
//! `rkyv` is for Rust clients: the server validates the archived bytes in place (bytecheck) and
//! reads fields without deserializing. `json` is for everyone else: any language can produce it
//! from `docs/protocol.md` alone. The crate enables rkyv's `unaligned` format, so an archive can be
//! read straight out of a received QUIC chunk whatever its address.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;

/// How a call's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// rkyv 0.8 archive (little-endian, unaligned, validated).
    Rkyv = 0,
    /// UTF-8 JSON object.
    Json = 1,
}

impl Encoding {
    /// The encoding's number in the request head.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Reads an encoding from its number.
    pub fn from_u8(value: u8) -> Option<Encoding> {
        match value {
            0 => Some(Encoding::Rkyv),
            1 => Some(Encoding::Json),
            _ => None,
        }
    }

    /// The encoding's name, as used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Rkyv => "rkyv",
            Encoding::Json => "json",
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rkyv" => Ok(Encoding::Rkyv),
            "json" => Ok(Encoding::Json),
            other => Err(format!("unknown encoding {other:?}: expected rkyv or json")),
        }
    }
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not a valid archive of the expected type.
    #[error("invalid rkyv message: {0}")]
    Rkyv(String),
    /// The bytes are not valid JSON of the expected shape.
    #[error("invalid JSON message: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is valid but not an object (serde would read an array as the fields in order).
    #[error("invalid JSON message: a message is one JSON object ({{...}}), not {0}")]
    NotAnObject(&'static str),
}

/// A message type that travels in either encoding.
///
/// Implemented for every type in [`crate::schema`] that has the derives; the bounds are rkyv's
/// own, spelled once here so callers need not repeat them.
pub trait WireMessage: Sized + serde::Serialize + serde::de::DeserializeOwned {
    /// Appends the encoded message to `out`.
    fn encode(&self, encoding: Encoding, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decodes (and for rkyv, validates) one message.
    fn decode(encoding: Encoding, bytes: &[u8]) -> Result<Self, CodecError>;
}

impl<T> WireMessage for T
where
    T: serde::Serialize + serde::de::DeserializeOwned + rkyv::Archive,
    T: for<'a> rkyv::Serialize<HighSerializer<Vec<u8>, ArenaHandle<'a>, rancor::Error>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    fn encode(&self, encoding: Encoding, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match encoding {
            Encoding::Rkyv => {
                // Serialized straight after whatever `out` holds (a frame header): rkyv's
                // pointers are relative, and the unaligned format needs no padding.
                let buf = std::mem::take(out);
                *out = rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, buf)
                    .map_err(|e| CodecError::Rkyv(e.to_string()))?;
            }
            Encoding::Json => serde_json::to_writer(&mut *out, self)?,
        }
        Ok(())
    }

    fn decode(encoding: Encoding, bytes: &[u8]) -> Result<Self, CodecError> {
        match encoding {
            Encoding::Rkyv => rkyv::from_bytes::<T, rancor::Error>(bytes)
                .map_err(|e| CodecError::Rkyv(e.to_string())),
            Encoding::Json => {
                // An array would be read as the fields in order, which the protocol does not
                // promise: one object per message, as `docs/protocol.md` says.
                match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'[') => return Err(CodecError::NotAnObject("an array")),
                    Some(b'{') | None => {}
                    Some(_) => return Err(CodecError::NotAnObject("a scalar")),
                }
                Ok(serde_json::from_slice(bytes)?)
            }
        }
    }
}

/// Validates an rkyv archive in place and returns a reference into `bytes`: no copy, no
/// deserialization. This is the server's way to read a request.
pub fn access_archived<T>(bytes: &[u8]) -> Result<&T::Archived, CodecError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Portable,
{
    rkyv::access::<T::Archived, rancor::Error>(bytes).map_err(|e| CodecError::Rkyv(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::*;

    fn sample_request() -> CompletionRequest {
        CompletionRequest {
            prefix: "fn main() {\n    let x = ".into(),
            suffix: "\n}\n".into(),
            language: "rust".into(),
            file_path: Some("/tmp/main.rs".into()),
            context: Some(ContextMetadata {
                lsp_symbols: None,
                git_status: Some("M main.rs".into()),
                project_files: Some(vec!["lib.rs".into()]),
            }),
        }
    }

    #[test]
    fn both_encodings_round_trip() {
        for encoding in [Encoding::Rkyv, Encoding::Json] {
            let mut out = Vec::new();
            sample_request().encode(encoding, &mut out).unwrap();
            assert_eq!(
                CompletionRequest::decode(encoding, &out).unwrap(),
                sample_request()
            );
        }
    }

    #[test]
    fn a_json_message_is_an_object_not_an_array() {
        assert!(HealthRequest::decode(Encoding::Json, b" {}").is_ok());
        for bytes in [&b"[]"[..], b"  [ ]", b"\"x\"", b"7"] {
            let error = HealthRequest::decode(Encoding::Json, bytes).unwrap_err();
            assert!(error.to_string().contains("one JSON object"), "{error}");
        }
        // serde alone would read the fields in order from an array.
        let array = br#"["fn ", "", "rust", null, null]"#;
        assert!(serde_json::from_slice::<CompletionRequest>(array).is_ok());
        assert!(CompletionRequest::decode(Encoding::Json, array).is_err());
    }

    #[test]
    fn encoding_appends_after_existing_bytes() {
        for encoding in [Encoding::Rkyv, Encoding::Json] {
            let mut out = b"hdr".to_vec();
            sample_request().encode(encoding, &mut out).unwrap();
            assert_eq!(&out[..3], b"hdr");
            let decoded = CompletionRequest::decode(encoding, &out[3..]).unwrap();
            assert_eq!(decoded, sample_request());
        }
    }

    #[test]
    fn archives_are_read_in_place_at_any_alignment() {
        let mut archive = Vec::new();
        sample_request()
            .encode(Encoding::Rkyv, &mut archive)
            .unwrap();
        for offset in 0..8 {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(&archive);
            let archived = access_archived::<CompletionRequest>(&shifted[offset..]).unwrap();
            assert_eq!(archived.language.as_str(), "rust");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // (64 zero bytes happen to be a valid archive of empty strings and `None`s.)
        for bytes in [&b""[..], b"\xff\xff\xff", b"{\"prefix\":1}", &[0xffu8; 64]] {
            assert!(CompletionRequest::decode(Encoding::Json, bytes).is_err());
            assert!(CompletionRequest::decode(Encoding::Rkyv, bytes).is_err());
        }
    }

    #[test]
    fn json_uses_the_documented_names() {
        let json = serde_json::to_value(ProviderInfo {
            name: "claude".into(),
            kind: "anthropic".into(),
            model: "claude-haiku-4-5".into(),
            status: ProviderStatus::RateLimited,
            latency_ms: 3,
            auth_status: AuthStatus::NeedsAuth,
            message: Some("why".into()),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name":"claude","kind":"anthropic","model":"claude-haiku-4-5","status":"rate_limited","latency_ms":3,"auth_status":"needs_auth","message":"why"})
        );
    }
}
