//! The contract between vigil's agent and server.
//!
//! Everything that crosses the wire is defined here and nowhere else:
//!
//! - [`report`]: the statistics an agent collects, one type per family, and their validation.
//! - [`command`]: command jobs: the spec, the run's result, output parsing.
//! - [`job`]: collectors, jobs and the schedule an agent pulls, with its stable hash.
//! - [`proto`]: the protocol messages (hello, jobs, report, ack, error), versioned.
//! - [`envelope`]: the sealed form of every frame: AES-256-CBC + HMAC-SHA256, encrypt-then-MAC.
//! - [`frame`]: length-prefixed framing with a hard size limit, pure bytes in and out.
//! - [`text`]: what agent-supplied text may hold (no controls, no bidi overrides).
//! - [`secret`]: key material with redacted `Debug`, zeroed on drop, never `Serialize`.
//!
//! Architecture invariant: this crate depends on no async runtime, SSH or database crate; the agent links it and
//! must stay small. It does no I/O.

pub mod agent_config;
pub mod command;
pub mod envelope;
pub mod frame;
pub mod job;
pub mod proto;
pub mod report;
pub mod secret;
pub mod text;

/// Lowercase hex of a byte slice.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
