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
//! Versions only ever grow by appending [`Frame`] variants (the codec
//! writes a variant as its index, so the order is the format): version `n`
//! is the variants of version `n - 1` plus those listed as new in `n`.
//! [`encode`] writes a frame in the form the link's version knows, and
//! [`decode`] refuses a variant newer than the version the frame claims.
//!
//! | version | adds |
//! | --- | --- |
//! | 1 | `Call`, `Cast`, `Reply`, `Ping`, `Pong` |
//! | 2 | `TracedCast`: a cast that keeps its trace id |
//! | 3 | `Batch`: several frames in one link message |
//!
//! A release speaks a range of versions; the compatibility promise (see the
//! README, "Upgrading") is that each release still speaks the newest version
//! of the release before it, so neighbouring releases always link. Every
//! version's layout is pinned by stored bytes in this module's tests.

use actors::{codec, AgentId, CallError};
use serde::{Deserialize, Serialize};

/// The oldest frame format this build reads and writes.
pub const MIN_WIRE_VERSION: u16 = 1;
/// The newest frame format this build reads and writes.
pub const MAX_WIRE_VERSION: u16 = 3;
/// The first version with [`Frame::Batch`].
pub const BATCH_VERSION: u16 = 3;
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

/// A link frame, in its newest form; see the module doc for which
/// versions know which variants.
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
    /// Since version 2: [`Frame::Cast`] with the trace it belongs to, so a
    /// cast can be followed across nodes like a call. On a version 1 link
    /// it is sent as a plain `Cast` and the receiver starts a new trace.
    TracedCast {
        /// The target agent.
        to: AgentId,
        /// The trace the cast belongs to.
        trace: u64,
        /// The encoded agent message.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Since version 3: frames sent together, to be handled in order, each
    /// encoded as it would be sent alone (version prefix included); never
    /// a hello or another batch. Only sent on links of version 3 or later.
    Batch(Vec<serde_bytes::ByteBuf>),
}

impl Frame {
    /// The first frame version that has this variant.
    pub fn since(&self) -> u16 {
        match self {
            Frame::Call { .. }
            | Frame::Cast { .. }
            | Frame::Reply { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. } => 1,
            Frame::TracedCast { .. } => 2,
            Frame::Batch(_) => BATCH_VERSION,
        }
    }

    /// About how many bytes the frame takes encoded, version included:
    /// enough that encoding it rarely grows the buffer.
    fn encoded_size_hint(&self) -> usize {
        // Version, variant, numbers, length prefixes and short names.
        const FIXED: usize = 64;
        let id = |to: &AgentId| to.kind().len() + to.name().len();
        FIXED
            + match self {
                Frame::Call {
                    from, to, payload, ..
                } => from.len() + id(to) + payload.len(),
                Frame::Cast { to, payload } | Frame::TracedCast { to, payload, .. } => {
                    id(to) + payload.len()
                }
                Frame::Reply { result, .. } => result.as_ref().map_or(64, Vec::len),
                Frame::Ping { from, .. } | Frame::Pong { from, .. } => from.len(),
                Frame::Batch(frames) => frames.iter().map(|f| f.len() + 5).sum(),
            }
    }

    /// The frame as a peer speaking `version` can read it: a variant newer
    /// than `version` becomes the older variant that carries its meaning.
    fn for_version(&self, version: u16) -> std::borrow::Cow<'_, Frame> {
        use std::borrow::Cow;
        match self {
            Frame::TracedCast { to, payload, .. } if version < 2 => Cow::Owned(Frame::Cast {
                to: to.clone(),
                payload: payload.clone(),
            }),
            _ => Cow::Borrowed(self),
        }
    }
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
    /// A variant that the frame's version does not have yet.
    #[error("frame of version {version} holds a variant of version {since}")]
    Variant {
        /// The version the frame claims.
        version: u16,
        /// The version that introduced its variant.
        since: u16,
    },
    /// A batch holding what it may not: a hello or another batch.
    #[error("a batch frame holds {0}")]
    BadBatch(&'static str),
}

/// What arrives on a link: a hello or a versioned frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The peer's hello.
    Hello(Hello),
    /// Any later frame.
    Frame(Frame),
}

fn with_version(
    version: u16,
    body: &impl Serialize,
    capacity: usize,
) -> Result<Vec<u8>, codec::CodecError> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&version.to_le_bytes());
    codec::encode_into(body, &mut out)?;
    Ok(out)
}

/// Encodes a hello.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    with_version(HELLO_VERSION, hello, 64).expect("a hello always encodes")
}

/// Encodes a frame in `version`, which both ends of the link speak, in
/// the form that version knows.
pub fn encode(version: u16, frame: &Frame) -> Result<Vec<u8>, codec::CodecError> {
    debug_assert!((MIN_WIRE_VERSION..=MAX_WIRE_VERSION).contains(&version));
    with_version(
        version,
        frame.for_version(version).as_ref(),
        frame.encoded_size_hint(),
    )
}

/// Puts frames made by [`encode`] into one batch frame of `version`, which
/// must be at least [`BATCH_VERSION`].
pub fn encode_batch(version: u16, frames: Vec<Vec<u8>>) -> Result<Vec<u8>, codec::CodecError> {
    debug_assert!(version >= BATCH_VERSION);
    let bytes: usize = frames.iter().map(|f| f.len() + 5).sum();
    let batch = Frame::Batch(frames.into_iter().map(serde_bytes::ByteBuf::from).collect());
    let mut out = Vec::with_capacity(bytes + 8);
    out.extend_from_slice(&version.to_le_bytes());
    codec::encode_into(&batch, &mut out)?;
    Ok(out)
}

/// The index the codec writes for [`Frame::Batch`] (variants are written
/// as their index, in declaration order); pinned by a test.
const BATCH_VARIANT: u32 = 6;

/// The frames of a batch link message, still encoded, borrowed from it
/// rather than copied out one by one; `None` if `bytes` is not a batch.
/// Read them with [`unbatch`]. [`decode`] reads the same message as a
/// [`Frame::Batch`] that owns copies.
pub fn batch_frames(bytes: &[u8]) -> Option<Result<Vec<&[u8]>, WireError>> {
    let (head, body) = bytes.split_first_chunk::<2>()?;
    let version = u16::from_le_bytes(*head);
    if !(BATCH_VERSION..=MAX_WIRE_VERSION).contains(&version) {
        return None;
    }
    match codec::decode_prefix::<u32>(body) {
        Ok((BATCH_VARIANT, used)) => {
            Some(codec::decode_borrowed(&body[used..]).map_err(Into::into))
        }
        _ => None,
    }
}

/// The frames of a batch, in order.
pub fn unbatch<B: AsRef<[u8]>>(
    frames: impl IntoIterator<Item = B>,
) -> impl Iterator<Item = Result<Frame, WireError>> {
    frames
        .into_iter()
        .map(|bytes| match decode(bytes.as_ref())? {
            Incoming::Frame(Frame::Batch(_)) => Err(WireError::BadBatch("another batch")),
            Incoming::Hello(_) => Err(WireError::BadBatch("a hello")),
            Incoming::Frame(frame) => Ok(frame),
        })
}

/// Decodes what arrived on a link.
pub fn decode(bytes: &[u8]) -> Result<Incoming, WireError> {
    let Some((head, body)) = bytes.split_first_chunk::<2>() else {
        return Err(WireError::Short(bytes.len()));
    };
    match u16::from_le_bytes(*head) {
        HELLO_VERSION => Ok(Incoming::Hello(codec::decode(body)?)),
        v if (MIN_WIRE_VERSION..=MAX_WIRE_VERSION).contains(&v) => {
            let frame: Frame = codec::decode(body)?;
            match frame.since() {
                since if since > v => Err(WireError::Variant { version: v, since }),
                _ => Ok(Incoming::Frame(frame)),
            }
        }
        v => Err(WireError::Version(v)),
    }
}

/// The versions a node speaks: the build's whole range unless the
/// configuration narrows it (`wire_versions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// The oldest version spoken.
    pub min: u16,
    /// The newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// Every version this build speaks.
    pub const BUILD: VersionRange = VersionRange {
        min: MIN_WIRE_VERSION,
        max: MAX_WIRE_VERSION,
    };

    /// The highest version both ranges contain, if any.
    pub fn negotiate(self, peer: VersionRange) -> Option<u16> {
        let high = peer.max.min(self.max);
        (high >= peer.min.max(self.min)).then_some(high)
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl std::str::FromStr for VersionRange {
    type Err = String;

    /// Parses `N` or `MIN-MAX`, which must lie within this build's range.
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |t: &str| {
            t.trim()
                .parse::<u16>()
                .map_err(|_| "expected a version or MIN-MAX, such as 1-2".to_owned())
        };
        let range = match text.split_once('-') {
            Some((min, max)) => VersionRange {
                min: number(min)?,
                max: number(max)?,
            },
            None => {
                let v = number(text)?;
                VersionRange { min: v, max: v }
            }
        };
        let build = VersionRange::BUILD;
        if range.min > range.max || range.min < build.min || range.max > build.max {
            return Err(format!("this build speaks frame versions {build}"));
        }
        Ok(range)
    }
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
        let negotiate = |min, max| VersionRange::BUILD.negotiate(VersionRange { min, max });
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(1, 5), Some(MAX_WIRE_VERSION));
        assert_eq!(negotiate(MAX_WIRE_VERSION + 1, MAX_WIRE_VERSION + 3), None);
        let old = VersionRange { min: 1, max: 1 };
        let new_only = VersionRange { min: 2, max: 2 };
        assert_eq!(VersionRange::BUILD.negotiate(old), Some(1));
        assert_eq!(old.negotiate(VersionRange::BUILD), Some(1));
        assert_eq!(new_only.negotiate(old), None);
        assert_eq!(old.negotiate(new_only), None);
    }

    #[test]
    fn version_ranges_parse_within_the_build_only() {
        assert_eq!("1".parse(), Ok(VersionRange { min: 1, max: 1 }));
        assert_eq!("1-3".parse(), Ok(VersionRange::BUILD));
        for bad in ["0", "2-1", "1-9", "x", "1-", ""] {
            assert!(bad.parse::<VersionRange>().is_err(), "{bad}");
        }
        assert_eq!(VersionRange::BUILD.to_string(), "1-3");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The hello of a peer speaking versions 1 to 3.
    fn peer_hello() -> Vec<u8> {
        encode_hello(&Hello {
            node: "b".into(),
            incarnation: 1,
            min_version: 1,
            max_version: 3,
            software: "x".into(),
        })
    }

    fn traced_cast() -> Frame {
        Frame::TracedCast {
            to: "echo/e".parse().unwrap(),
            trace: 0x0102_0304,
            payload: vec![42],
        }
    }

    /// One frame of every variant, with the bytes of version 1 and 2.
    fn fixtures() -> Vec<(Frame, &'static str, &'static str)> {
        let to: AgentId = "counter/x".parse().unwrap();
        vec![
            (
                Frame::Call {
                    id: 7,
                    from: "a".into(),
                    to: to.clone(),
                    timeout_ms: 1000,
                    hops: 1,
                    trace: 300,
                    payload: vec![1, 2, 3],
                },
                "01000007016107636f756e7465720178fbe80301fb2c0103010203",
                "02000007016107636f756e7465720178fbe80301fb2c0103010203",
            ),
            (
                Frame::Cast {
                    to: "echo/e".parse().unwrap(),
                    payload: vec![42],
                },
                "010001046563686f0165012a",
                "020001046563686f0165012a",
            ),
            (
                Frame::Reply {
                    id: 9,
                    result: Ok(vec![5]),
                },
                "01000209000105",
                "02000209000105",
            ),
            (
                Frame::Reply {
                    id: 9,
                    result: Err(CallError::Timeout {
                        agent: "counter/x".into(),
                        ms: 5,
                    }),
                },
                "01000209010309636f756e7465722f7805",
                "02000209010309636f756e7465722f7805",
            ),
            (
                Frame::Ping {
                    nonce: 3,
                    from: "b".into(),
                },
                "010003030162",
                "020003030162",
            ),
            (
                Frame::Pong {
                    nonce: 3,
                    from: "c".into(),
                },
                "010004030163",
                "020004030163",
            ),
            (
                traced_cast(),
                "010001046563686f0165012a",
                "020005046563686f0165fc04030201012a",
            ),
        ]
    }

    #[test]
    fn every_frame_keeps_its_layout_in_every_version() {
        // Stored fixtures: if one changes, that version changed and nodes
        // of other releases can no longer read us. Add a version instead.
        for (frame, v1, v2) in fixtures() {
            assert_eq!(
                hex(&encode(1, &frame).unwrap()),
                v1,
                "{frame:?} in version 1"
            );
            assert_eq!(
                hex(&encode(2, &frame).unwrap()),
                v2,
                "{frame:?} in version 2"
            );
            // Version 3 only appends `Batch`: the others keep version 2's.
            assert_eq!(
                hex(&encode(3, &frame).unwrap()),
                format!("0300{}", &v2[4..]),
                "{frame:?} in version 3"
            );
        }
    }

    #[test]
    fn a_batch_keeps_its_layout() {
        let cast = Frame::Cast {
            to: "echo/e".parse().unwrap(),
            payload: vec![42],
        };
        let bytes = encode_batch(3, vec![encode(3, &cast).unwrap(), vec![3, 0]]).unwrap();
        assert_eq!(hex(&bytes), "030006020c030001046563686f0165012a020300");
    }

    #[test]
    fn a_batch_carries_frames_in_order_and_never_nests() {
        let frames = vec![
            Frame::Cast {
                to: "echo/e".parse().unwrap(),
                payload: vec![1],
            },
            traced_cast(),
            Frame::Reply {
                id: 3,
                result: Ok(vec![2, 3]),
            },
        ];
        let alone = frames.iter().map(|f| encode(3, f).unwrap()).collect();
        let bytes = encode_batch(BATCH_VERSION, alone).unwrap();
        assert_eq!(&bytes[..2], &BATCH_VERSION.to_le_bytes());
        let Incoming::Frame(Frame::Batch(bodies)) = decode(&bytes).unwrap() else {
            panic!("not a batch");
        };
        let back: Vec<Frame> = unbatch(bodies).map(Result::unwrap).collect();
        assert_eq!(back, frames);

        let inner = encode(BATCH_VERSION, &Frame::Batch(Vec::new())).unwrap();
        let hello = peer_hello();
        let nested = encode_batch(BATCH_VERSION, vec![inner, hello, vec![1]]).unwrap();
        let Incoming::Frame(Frame::Batch(bodies)) = decode(&nested).unwrap() else {
            panic!("not a batch");
        };
        let refused: Vec<_> = unbatch(bodies).collect();
        assert_eq!(
            refused,
            vec![
                Err(WireError::BadBatch("another batch")),
                Err(WireError::BadBatch("a hello")),
                Err(WireError::Short(1)),
            ]
        );
    }

    #[test]
    fn a_batch_in_a_version_2_frame_is_refused() {
        let mut bytes = encode_batch(3, Vec::new()).unwrap();
        bytes[..2].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(WireError::Variant {
                version: 2,
                since: 3
            })
        );
        let older = VersionRange { min: 1, max: 2 };
        assert!(VersionRange::BUILD.negotiate(older).unwrap() < BATCH_VERSION);
    }

    #[test]
    fn batch_frames_reads_a_batch_in_place_and_nothing_else() {
        let alone: Vec<Vec<u8>> = [
            traced_cast(),
            Frame::Ping {
                nonce: 1,
                from: "a".into(),
            },
        ]
        .iter()
        .map(|f| encode(BATCH_VERSION, f).unwrap())
        .collect();
        let bytes = encode_batch(BATCH_VERSION, alone.clone()).unwrap();
        let frames = batch_frames(&bytes).unwrap().unwrap();
        assert_eq!(frames, alone.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(
            bytes.as_ptr_range().contains(&frames[0].as_ptr()),
            "not copied"
        );
        let Incoming::Frame(Frame::Batch(owned)) = decode(&bytes).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(
            owned,
            alone
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect::<Vec<_>>()
        );

        // Not batches: any other frame, a hello, a batch claiming version 2.
        assert_eq!(
            batch_frames(&encode(BATCH_VERSION, &traced_cast()).unwrap()),
            None
        );
        assert_eq!(batch_frames(&encode(2, &traced_cast()).unwrap()), None);
        let hello = peer_hello();
        assert_eq!(batch_frames(&hello), None);
        let mut old = bytes.clone();
        old[..2].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(batch_frames(&old), None);
        assert_eq!(batch_frames(&[3]), None);
        // A batch cut short is an error, not a panic.
        assert!(matches!(
            batch_frames(&bytes[..bytes.len() - 1]),
            Some(Err(WireError::Body(_)))
        ));
    }

    #[test]
    fn a_traced_cast_becomes_a_plain_cast_on_a_version_1_link() {
        let bytes = encode(1, &traced_cast()).unwrap();
        let plain = Frame::Cast {
            to: "echo/e".parse().unwrap(),
            payload: vec![42],
        };
        assert_eq!(decode(&bytes).unwrap(), Incoming::Frame(plain));
        let bytes = encode(2, &traced_cast()).unwrap();
        assert_eq!(decode(&bytes).unwrap(), Incoming::Frame(traced_cast()));
    }

    #[test]
    fn a_variant_newer_than_its_frame_version_is_refused() {
        let mut bytes = encode(2, &traced_cast()).unwrap();
        bytes[..2].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(WireError::Variant {
                version: 1,
                since: 2
            })
        );
    }

    #[test]
    fn the_hello_keeps_its_layout() {
        // Version 0 is how releases find a common version: it never moves.
        let hello = Hello {
            node: "n".into(),
            incarnation: 258,
            min_version: 1,
            max_version: 2,
            software: "0.1.0".into(),
        };
        assert_eq!(hex(&encode_hello(&hello)), "0000016efb0201010205302e312e30");
    }
}
