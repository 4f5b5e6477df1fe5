//! Protocol messages between agent and server, carried one per sealed frame.
//!
//! A session: the agent sends [`AgentMsg::Hello`] with the hash of the schedule it runs; the server answers
//! [`ServerMsg::Welcome`] and, when the hash differs from the host's current schedule, [`ServerMsg::Jobs`]. Then the
//! agent sends reports, pipelined, and the server acknowledges each after its rows are committed. The server may
//! send `Jobs` at any time when the configuration changes. Control messages travel with envelope sequence 0;
//! a report travels with its own sequence number, which must match the envelope's.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::job::Schedule;
use crate::report::Report;

/// The protocol version this build speaks. A peer with another major version is refused with an error message.
pub const PROTOCOL_VERSION: u16 = 1;

/// Envelope sequence number used for control messages.
pub const CONTROL_SEQ: u64 = 0;

/// The SSH subsystem name agents request.
pub const SUBSYSTEM: &str = "vigil";

/// From agent to server.
///
/// Wire form: one JSON object whose `"type"` is `hello` or `report`, beside the variant's own fields. It is decoded
/// by hand (see the `Deserialize` impl below) rather than by serde's internally tagged derive, which buffers every
/// value of the object before it knows the variant.
// A message lives only between decoding and storing; boxing the report would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMsg {
    Hello {
        protocol: u16,
        agent_version: String,
        /// Hash of the schedule the agent currently runs ([`Schedule::hash`]).
        schedule_hash: String,
    },
    Report(Report),
}

/// From server to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMsg {
    Welcome { protocol: u16, server_version: String },
    Jobs { hash: String, schedule: Schedule },
    Ack { seq: u64 },
    Error { code: ErrorCode, message: String, seq: Option<u64> },
}

/// Why the server refused something; the agent branches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The protocol version is not spoken by this server.
    Version,
    /// The frame or envelope could not be read or verified.
    BadFrame,
    /// The message could not be decoded.
    BadMessage,
    /// The report failed validation; it will never be accepted, so the agent drops it.
    BadReport,
    /// The agent is not (or no longer) known.
    Unknown,
    /// The server could not store the report now (full disk, ...); retry later.
    Unavailable,
}

/// [`AgentMsg::Hello`]'s fields, as they follow its tag.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloBody {
    protocol: u16,
    agent_version: String,
    schedule_hash: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum AgentMsgType {
    Hello,
    Report,
}

impl AgentMsgType {
    /// The message of this type whose fields `body` reads.
    fn read<'de, D: Deserializer<'de>>(self, body: D) -> Result<AgentMsg, D::Error> {
        Ok(match self {
            AgentMsgType::Hello => {
                let HelloBody { protocol, agent_version, schedule_hash } = HelloBody::deserialize(body)?;
                AgentMsg::Hello { protocol, agent_version, schedule_hash }
            }
            AgentMsgType::Report => AgentMsg::Report(Report::deserialize(body)?),
        })
    }
}

/// A key of an agent message's object: the tag, or any other field (kept only when the tag comes later).
enum AgentMsgKey {
    Type,
    Other(String),
}

impl<'de> Deserialize<'de> for AgentMsgKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = AgentMsgKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AgentMsgKey, E> {
                Ok(if v == "type" { AgentMsgKey::Type } else { AgentMsgKey::Other(v.to_owned()) })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Same wire form and errors as serde's internally tagged derive, without its buffering: when `"type"` is the
/// object's first key (as every vigil agent writes it), the variant's fields are read straight from the input. Any
/// other order is still accepted, through a `serde_json::Value` of the object.
impl<'de> Deserialize<'de> for AgentMsg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MsgVisitor;
        impl<'de> Visitor<'de> for MsgVisitor {
            type Value = AgentMsg;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an agent message (an object with \"type\": \"hello\" or \"report\")")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AgentMsg, A::Error> {
                let first = match map.next_key::<AgentMsgKey>()? {
                    None => return Err(de::Error::missing_field("type")),
                    Some(AgentMsgKey::Type) => {
                        let kind: AgentMsgType = map.next_value()?;
                        return kind.read(de::value::MapAccessDeserializer::new(map));
                    }
                    Some(AgentMsgKey::Other(key)) => key,
                };
                // The tag comes later: the object is read whole, written again with the tag first, and decoded
                // from that. (Decoding the variant from a `serde_json::Value` instead would compile a second
                // decoder of every report type into the agent, which decodes its own spool.)
                let mut object = serde_json::Map::new();
                object.insert(first, map.next_value()?);
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if object.insert(key, value).is_some() {
                        return Err(de::Error::custom("duplicate field in agent message"));
                    }
                }
                let tag = object.remove("type").ok_or_else(|| de::Error::missing_field("type"))?;
                let mut json = b"{\"type\":".to_vec();
                let written = serde_json::to_writer(&mut json, &tag).and_then(|()| {
                    object.iter().try_for_each(|(key, value)| {
                        json.push(b',');
                        serde_json::to_writer(&mut json, key)?;
                        json.push(b':');
                        serde_json::to_writer(&mut json, value)
                    })
                });
                written.map_err(de::Error::custom)?;
                json.push(b'}');
                serde_json::from_slice(&json).map_err(de::Error::custom)
            }
        }
        d.deserialize_map(MsgVisitor)
    }
}

impl AgentMsg {
    /// The envelope sequence number this message travels with.
    pub fn seq(&self) -> u64 {
        match self {
            AgentMsg::Hello { .. } => CONTROL_SEQ,
            AgentMsg::Report(r) => r.seq,
        }
    }

    /// Checks every agent-supplied string (the hello's version and schedule hash are shown and stored too) and,
    /// for a report, [`Report::validate`].
    pub fn validate(&self) -> Result<(), crate::report::ReportError> {
        match self {
            AgentMsg::Hello { agent_version, schedule_hash, .. } => {
                crate::report::check_text("agent_version", agent_version, crate::report::limits::MAX_TEXT)?;
                crate::report::check_text("schedule_hash", schedule_hash, crate::report::limits::MAX_TEXT)
            }
            AgentMsg::Report(r) => r.validate(),
        }
    }
}

impl ServerMsg {
    /// The envelope sequence number this message travels with.
    pub fn seq(&self) -> u64 {
        match self {
            ServerMsg::Ack { seq } => *seq,
            _ => CONTROL_SEQ,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_tagged() {
        let m = AgentMsg::Hello { protocol: 1, agent_version: "0.1.0".into(), schedule_hash: "ab".into() };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"hello","protocol":1,"agent_version":"0.1.0","schedule_hash":"ab"}"#
        );
        let a = ServerMsg::Ack { seq: 9 };
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"type":"ack","seq":9}"#);
        assert_eq!(a.seq(), 9);
    }

    #[test]
    fn hello_strings_are_checked() {
        let hello = |v: &str| AgentMsg::Hello { protocol: 1, agent_version: v.into(), schedule_hash: "ab".into() };
        hello("0.1.0").validate().unwrap();
        assert_eq!(hello("0.1\u{1b}[2J").validate().unwrap_err().field, "agent_version");
        assert_eq!(hello("0.1\u{202e}").validate().unwrap_err().field, "agent_version");
        assert_eq!(hello(&"9".repeat(600)).validate().unwrap_err().problem, "text too long");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in ["", "{", "null", r#"{"type":"nope"}"#, r#"{"type":"ack"}"#, "\u{0}\u{1}"] {
            assert!(serde_json::from_str::<ServerMsg>(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<AgentMsg>(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod report_msg_tests {
    use super::*;
    use crate::report::{MemoryStats, Stats};

    #[test]
    fn report_message_round_trips() {
        let r = Report {
            seq: 3,
            job: "vitals".into(),
            collected_at_ms: 5,
            dropped: 2,
            stats: Stats {
                memory: Some(MemoryStats { total: 10, used: 5, available: 5, free: 5, used_pct: 50.0 }),
                ..Stats::default()
            },
        };
        let m = AgentMsg::Report(r);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.starts_with(r#"{"type":"report","seq":3,"#), "{json}");
        assert_eq!(serde_json::from_str::<AgentMsg>(&json).unwrap(), m);
        assert_eq!(m.seq(), 3);
    }

    /// The tag may come anywhere in the object (JSON objects have no order); the variant's fields are checked the
    /// same way on both paths.
    #[test]
    fn the_tag_is_found_wherever_it_is() {
        let hello = AgentMsg::Hello { protocol: 1, agent_version: "0.1.0".into(), schedule_hash: "ab".into() };
        for json in [
            r#"{"type":"hello","protocol":1,"agent_version":"0.1.0","schedule_hash":"ab"}"#,
            r#"{"protocol":1,"type":"hello","agent_version":"0.1.0","schedule_hash":"ab"}"#,
            r#"{"protocol":1,"agent_version":"0.1.0","schedule_hash":"ab","type":"hello"}"#,
        ] {
            assert_eq!(serde_json::from_str::<AgentMsg>(json).unwrap(), hello, "{json}");
        }
        let report = r#""seq":4,"job":"vitals","collected_at_ms":5,"stats":{"swap":{"total":8,"used":2,"free":6,"used_pct":25.0}}"#;
        let first: AgentMsg = serde_json::from_str(&format!(r#"{{"type":"report",{report}}}"#)).unwrap();
        let last: AgentMsg = serde_json::from_str(&format!(r#"{{{report},"type":"report"}}"#)).unwrap();
        assert_eq!(first, last);
        let AgentMsg::Report(r) = first else { panic!("not a report") };
        assert_eq!((r.seq, r.job.as_str(), r.dropped), (4, "vitals", 0));
        assert_eq!(r.stats.swap.map(|s| s.used), Some(2));

        for (bad, why) in [
            (r#"{"type":"hello","protocol":1,"agent_version":"0.1.0","schedule_hash":"ab","x":1}"#, "unknown field"),
            (r#"{"protocol":1,"agent_version":"0.1.0","schedule_hash":"ab","x":1,"type":"hello"}"#, "unknown field"),
            (r#"{"type":"hello","protocol":1,"agent_version":"0.1.0"}"#, "missing field `schedule_hash`"),
            (r#"{"protocol":1,"agent_version":"0.1.0"}"#, "missing field `type`"),
            (r#"{}"#, "missing field `type`"),
            (r#"{"type":"welcome","protocol":1}"#, "unknown variant `welcome`"),
            (r#"{"protocol":1,"type":"welcome"}"#, "unknown variant `welcome`"),
            (r#"{"type":"report","type":"report","seq":1}"#, "unknown field `type`"),
            (r#"{"seq":1,"seq":2,"type":"report"}"#, "duplicate field"),
            (r#"{"type":"hello","protocol":70000,"agent_version":"0.1.0","schedule_hash":"ab"}"#, "u16"),
            (r#"["hello"]"#, "agent message"),
        ] {
            let e = serde_json::from_str::<AgentMsg>(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

/// Why a message could not be sealed, or a received frame turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error(transparent)]
    Envelope(#[from] crate::envelope::EnvelopeError),
    #[error("undecodable message: {0}")]
    Decode(serde_json::Error),
    #[error("unencodable message: {0}")]
    Encode(serde_json::Error),
    #[error("message sequence {inner} does not match its envelope's {outer}")]
    SeqMismatch { inner: u64, outer: u64 },
}

/// Serializes, seals and frames a message: the bytes to write to the channel.
pub fn seal_msg<M: Serialize>(
    keys: &crate::secret::EnvelopeKeys,
    agent_id: &str,
    seq: u64,
    msg: &M,
) -> Result<Vec<u8>, MsgError> {
    let json = serde_json::to_vec(msg).map_err(MsgError::Encode)?;
    Ok(crate::frame::encode(&crate::envelope::seal(keys, agent_id, seq, &json)?))
}

/// Opens one frame (tag first, then decryption) and decodes the message in it, with the envelope's sequence.
pub fn open_msg<M: serde::de::DeserializeOwned>(
    keys: &crate::secret::EnvelopeKeys,
    frame: &[u8],
) -> Result<(crate::envelope::Opened, M), MsgError> {
    let opened = crate::envelope::open(keys, frame)?;
    let msg = serde_json::from_slice(&opened.plaintext).map_err(MsgError::Decode)?;
    Ok((opened, msg))
}
