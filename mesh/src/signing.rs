//! Signed NATS messages: announcements and goodbyes carry an HMAC-SHA256
//! made with the cluster secret, over the subject, a timestamp and the body.
//!
//! A receiver checks, in order:
//! 1. the envelope's size and shape (bounded before any parsing);
//! 2. the MAC, in constant time: a message from anyone without the secret,
//!    or sent on another subject, is refused;
//! 3. the timestamp is within [`MAX_CLOCK_SKEW`] of the receiver's clock,
//!    so an old capture cannot be replayed later;
//! 4. (in [`ReplayGuard`]) the timestamp is newer than the last one seen
//!    from the same sender incarnation, so a recent capture cannot be
//!    replayed either.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, hmac};
use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// The largest signed message accepted, before parsing.
pub const MAX_SIGNED_BYTES: usize = 64 * 1024;
/// How far a message's timestamp may be from the receiver's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Domain separation: a MAC made for something else never verifies here.
const CONTEXT: &[u8] = b"agent-mesh signed message v1\0";

/// Why a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The message is larger than [`MAX_SIGNED_BYTES`].
    #[error("message of {0} bytes exceeds the limit of {MAX_SIGNED_BYTES} bytes")]
    TooLarge(usize),
    /// The envelope is not valid JSON of the expected shape.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The MAC does not match: wrong secret, forged or altered.
    #[error("bad signature (forged, altered, or signed with another secret)")]
    BadSignature,
    /// The timestamp is too far from this node's clock.
    #[error("timestamp {age_ms} ms away from this node's clock (replay or clock skew)")]
    Stale {
        /// How far, in milliseconds.
        age_ms: u64,
    },
    /// The timestamp is not newer than one already seen from the sender.
    #[error("replayed: timestamp not newer than the sender's last message")]
    Replayed,
}

impl SigningError {
    /// A short stable name of the reason, for counting and log keys.
    pub fn kind(&self) -> &'static str {
        match self {
            SigningError::TooLarge(_) => "too_large",
            SigningError::Malformed(_) => "malformed",
            SigningError::BadSignature => "bad_signature",
            SigningError::Stale { .. } => "stale",
            SigningError::Replayed => "replayed",
        }
    }
}

/// A signed message as it travels on NATS.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    /// Signing time, Unix milliseconds.
    ts_ms: u64,
    /// The message, as JSON text (signed byte for byte).
    body: String,
    /// HMAC-SHA256, lowercase hex.
    mac: String,
}

/// Signs and checks messages with the cluster secret.
pub(crate) struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Signer {
    /// A signer keyed by the cluster secret.
    pub(crate) fn new(secret: &Secret) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
        }
    }

    fn tag(&self, subject: &str, ts_ms: u64, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        ctx.update(&(subject.len() as u64).to_be_bytes());
        ctx.update(subject.as_bytes());
        ctx.update(&ts_ms.to_be_bytes());
        ctx.update(body);
        ctx.sign()
    }

    /// Wraps `body` (JSON text) for `subject`, signed at `ts_ms`.
    pub(crate) fn seal(&self, subject: &str, body: String, ts_ms: u64) -> Vec<u8> {
        let mac = hex(self.tag(subject, ts_ms, body.as_bytes()).as_ref());
        serde_json::to_vec(&Envelope { ts_ms, body, mac }).expect("envelopes encode")
    }

    /// Checks a message received on `subject` at `now_ms`; returns the
    /// signing time and the body.
    pub(crate) fn open(
        &self,
        subject: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(u64, String), SigningError> {
        if payload.len() > MAX_SIGNED_BYTES {
            return Err(SigningError::TooLarge(payload.len()));
        }
        let envelope: Envelope =
            serde_json::from_slice(payload).map_err(|e| SigningError::Malformed(e.to_string()))?;
        let mac = unhex(&envelope.mac).ok_or(SigningError::BadSignature)?;
        let expected = self.tag(subject, envelope.ts_ms, envelope.body.as_bytes());
        constant_time::verify_slices_are_equal(expected.as_ref(), &mac)
            .map_err(|_| SigningError::BadSignature)?;
        let age_ms = now_ms.abs_diff(envelope.ts_ms);
        if age_ms > MAX_CLOCK_SKEW.as_millis() as u64 {
            return Err(SigningError::Stale { age_ms });
        }
        Ok((envelope.ts_ms, envelope.body))
    }
}

/// Signs `body` (JSON text) for `subject` with the cluster secret's text,
/// at `ts_ms`, exactly as a node does: for tools and tests that speak for
/// a node, which need the secret anyway.
pub fn seal_with(secret: &str, subject: &str, body: String, ts_ms: u64) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    Signer { key }.seal(subject, body, ts_ms)
}

/// Remembers the newest timestamp per sender incarnation.
#[derive(Debug, Default)]
pub(crate) struct ReplayGuard {
    last: HashMap<(String, u64), u64>,
}

impl ReplayGuard {
    /// Accepts `ts_ms` from `(name, incarnation)` only if it is newer than
    /// every earlier one; forgets senders silent past the clock skew.
    pub(crate) fn check(
        &mut self,
        name: &str,
        incarnation: u64,
        ts_ms: u64,
        now_ms: u64,
    ) -> Result<(), SigningError> {
        let horizon = now_ms.saturating_sub(2 * MAX_CLOCK_SKEW.as_millis() as u64);
        if self.last.len() > 64 {
            self.last.retain(|_, ts| *ts >= horizon);
        }
        let last = self.last.entry((name.to_owned(), incarnation)).or_insert(0);
        if ts_ms <= *last {
            return Err(SigningError::Replayed);
        }
        *last = ts_ms;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(secret: &str) -> Signer {
        Signer::new(&Secret::for_tests(secret))
    }

    #[test]
    fn a_sealed_message_opens_with_the_same_secret_only() {
        let now = now_ms();
        let sealed = signer("one-secret").seal("mesh.c.announce", "{\"a\":1}".into(), now);
        let (ts, body) = signer("one-secret")
            .open("mesh.c.announce", &sealed, now)
            .unwrap();
        assert_eq!((ts, body.as_str()), (now, "{\"a\":1}"));
        assert_eq!(
            signer("another").open("mesh.c.announce", &sealed, now),
            Err(SigningError::BadSignature)
        );
        assert_eq!(
            signer("one-secret").open("mesh.c.goodbye", &sealed, now),
            Err(SigningError::BadSignature),
            "a message moved to another subject must not verify"
        );
    }

    #[test]
    fn altered_stale_oversized_and_garbage_messages_are_refused() {
        let s = signer("k");
        let now = now_ms();
        let sealed = String::from_utf8(s.seal("x", "{\"a\":1}".into(), now)).unwrap();
        let altered = sealed.replace("\\\"a\\\":1", "\\\"a\\\":2");
        assert_ne!(altered, sealed);
        assert_eq!(
            s.open("x", altered.as_bytes(), now),
            Err(SigningError::BadSignature)
        );
        let later = now + MAX_CLOCK_SKEW.as_millis() as u64 + 1;
        assert!(matches!(
            s.open("x", sealed.as_bytes(), later),
            Err(SigningError::Stale { .. })
        ));
        let big = vec![b' '; MAX_SIGNED_BYTES + 1];
        assert!(matches!(
            s.open("x", &big, now),
            Err(SigningError::TooLarge(_))
        ));
        for junk in [&b""[..], b"\xff\xff", b"{\"ts_ms\":1}", b"[[[[[[[["] {
            assert!(matches!(
                s.open("x", junk, now),
                Err(SigningError::Malformed(_))
            ));
        }
    }

    #[test]
    fn the_guard_refuses_a_timestamp_seen_before() {
        let mut guard = ReplayGuard::default();
        let now = now_ms();
        guard.check("a", 1, now, now).unwrap();
        assert_eq!(guard.check("a", 1, now, now), Err(SigningError::Replayed));
        assert_eq!(
            guard.check("a", 1, now - 1, now),
            Err(SigningError::Replayed)
        );
        guard.check("a", 2, now - 1, now).unwrap();
        guard.check("a", 1, now + 1, now).unwrap();
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
