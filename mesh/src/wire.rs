//! Link frames: what nodes say to each other over `ractor_cluster` links.
//!
//! Every frame starts with a two-byte little-endian format version, then
//! the frame encoded by [`actors::codec`]. Version 0 is reserved for
//! [`Hello`], whose layout never changes, so that two nodes of any releases
//! can always tell each other which versions they speak:
//! 1. when a link is ready, each side sends `Hello` with its version range;
//! 2. each side picks the highest version both speak, or, if there is none,
//!    logs both ranges and closes the link;
//! 3. every later frame is written in the chosen version.
//!
//! Within one version, frames follow the codec's compatibility rules.

use actors::{codec, AgentId, CallError};
use serde::{Deserialize, Serialize};

/// The oldest frame format this build reads and writes.
pub const MIN_WIRE_VERSION: u16 = 1;
/// The newest frame format this build reads and writes.
pub const MAX_WIRE_VERSION: u16 = 1;
/// The largest frame `ractor_cluster` accepts; a larger one ends the link.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// The version slot of the [`Hello`] frame.
const HELLO_VERSION: u16 = 0;

/// The first frame on a link; its layout is frozen across releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's node name.
    pub node: String,
    /// The sender's incarnation (changes at every start).
    pub incarnation: u64,
    /// The oldest frame version the sender speaks.
    pub min_version: u16,
    /// The newest frame version the sender speaks.
    pub max_version: u16,
    /// The sender's release, for log lines.
    pub software: String,
}

/// A frame of version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Deliver `payload` to `to` and send a [`Frame::Reply`] with `id` back
    /// to node `from`.
    Call {
        /// The caller's request number, unique per caller node.
        id: u64,
        /// The node waiting for the reply.
        from: String,
        /// The target agent.
        to: AgentId,
        /// How long the caller waits, so the callee can drop stale work.
        timeout_ms: u64,
        /// How many times the call was forwarded already (ownership moved
        /// while it travelled); bounded so a call never circles.
        hops: u8,
        /// The trace the call belongs to, so one request can be followed
        /// through every node's log.
        trace: u64,
        /// The encoded agent message.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Deliver `payload` to `to`; nobody waits for an answer.
    Cast {
        /// The target agent.
        to: AgentId,
        /// The encoded agent message.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The answer to the call `id`.
    Reply {
        /// The caller's request number.
        id: u64,
        /// The encoded reply, or why there is none.
        #[serde(with = "reply_bytes")]
        result: Result<Vec<u8>, CallError>,
    },
    /// A liveness probe; node `from` wants [`Frame::Pong`] with `nonce`.
    Ping {
        /// Echoed in the answer.
        nonce: u64,
        /// The node probing.
        from: String,
    },
    /// The answer to a [`Frame::Ping`].
    Pong {
        /// The probe's nonce.
        nonce: u64,
        /// The node answering.
        from: String,
    },
}

/// Writes a reply's bytes as one byte string: the same encoding as a byte
/// sequence, without a per-byte visit.
mod reply_bytes {
    use actors::CallError;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    pub(super) fn serialize<S: Serializer>(
        result: &Result<Vec<u8>, CallError>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        result
            .as_ref()
            .map(|bytes| serde_bytes::Bytes::new(bytes))
            .serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Result<Vec<u8>, CallError>, D::Error> {
        let result = Result::<ByteBuf, CallError>::deserialize(deserializer)?;
        Ok(result.map(ByteBuf::into_vec))
    }
}

/// A frame that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer than two bytes: no version.
    #[error("frame of {0} bytes has no version")]
    Short(usize),
    /// A version this build does not speak.
    #[error(
        "frame version {0} is not supported \
         (this node speaks {MIN_WIRE_VERSION}..={MAX_WIRE_VERSION})"
    )]
    Version(u16),
    /// The body is not a valid frame.
    #[error("bad frame: {0}")]
    Body(#[from] codec::CodecError),
}

/// What arrives on a link: a hello or a versioned frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The peer's hello.
    Hello(Hello),
    /// Any later frame.
    Frame(Frame),
}

fn with_version(version: u16, body: &impl Serialize) -> Result<Vec<u8>, codec::CodecError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&version.to_le_bytes());
    codec::encode_into(body, &mut out)?;
    Ok(out)
}

/// Encodes a hello.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    with_version(HELLO_VERSION, hello).expect("a hello always encodes")
}

/// Encodes a frame in `version`, which both ends of the link speak.
pub fn encode(version: u16, frame: &Frame) -> Result<Vec<u8>, codec::CodecError> {
    debug_assert!((MIN_WIRE_VERSION..=MAX_WIRE_VERSION).contains(&version));
    with_version(version, frame)
}

/// Decodes what arrived on a link.
pub fn decode(bytes: &[u8]) -> Result<Incoming, WireError> {
    let Some((head, body)) = bytes.split_first_chunk::<2>() else {
        return Err(WireError::Short(bytes.len()));
    };
    match u16::from_le_bytes(*head) {
        HELLO_VERSION => Ok(Incoming::Hello(codec::decode(body)?)),
        v if (MIN_WIRE_VERSION..=MAX_WIRE_VERSION).contains(&v) => {
            Ok(Incoming::Frame(codec::decode(body)?))
        }
        v => Err(WireError::Version(v)),
    }
}

/// The highest version both ranges contain, if any.
pub fn negotiate(peer_min: u16, peer_max: u16) -> Option<u16> {
    let high = peer_max.min(MAX_WIRE_VERSION);
    (high >= peer_min.max(MIN_WIRE_VERSION)).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_version() {
        let frame = Frame::Call {
            id: 7,
            from: "a".into(),
            to: "counter/x".parse().unwrap(),
            timeout_ms: 1000,
            hops: 0,
            trace: 7,
            payload: vec![1, 2, 3],
        };
        let bytes = encode(1, &frame).unwrap();
        assert_eq!(&bytes[..2], &[1, 0]);
        assert_eq!(decode(&bytes).unwrap(), Incoming::Frame(frame));
    }

    #[test]
    fn hello_is_readable_whatever_the_frame_version() {
        let hello = Hello {
            node: "b".into(),
            incarnation: 9,
            min_version: 1,
            max_version: 4,
            software: "9.9.9".into(),
        };
        assert_eq!(
            decode(&encode_hello(&hello)).unwrap(),
            Incoming::Hello(hello)
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        assert_eq!(decode(&[9]), Err(WireError::Short(1)));
        assert_eq!(decode(&[0x63, 0, 1]), Err(WireError::Version(0x63)));
        assert!(matches!(
            decode(&[1, 0, 0xff, 0xff]),
            Err(WireError::Body(_))
        ));
        assert!(matches!(decode(&[0xff; 8]), Err(WireError::Version(_))));
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(1, 5), Some(MAX_WIRE_VERSION));
        assert_eq!(negotiate(MAX_WIRE_VERSION + 1, MAX_WIRE_VERSION + 3), None);
    }

    #[test]
    fn version_1_frames_keep_their_layout() {
        // A stored fixture: if this changes, version 1 changed and old
        // nodes can no longer read us. Bump the version instead.
        let frame = Frame::Cast {
            to: "echo/e".parse().unwrap(),
            payload: vec![42],
        };
        let bytes = encode(1, &frame).unwrap();
        assert_eq!(bytes, [1, 0, 1, 4, 101, 99, 104, 111, 1, 101, 1, 42]);
    }
}
