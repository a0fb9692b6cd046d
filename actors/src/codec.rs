//! The binary codec: the one place that knows the encoding (bincode 2).
//!
//! Everything that crosses a link or reaches the disk in binary goes through
//! [`encode`] and [`decode`], so the encoding can be swapped here alone.
//! Decoding is bounded: a length prefix larger than the input is refused
//! before anything is allocated for it.
//!
//! # Compatibility rules
//! bincode writes fields in order and enum variants by index, not by name,
//! so renaming a field or a variant keeps the format, and:
//! - new enum variants go at the end, and no variant is ever removed;
//! - a struct never gains a field in place: add a new message variant or a
//!   new state version instead.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The largest input [`decode`] accepts, whatever the caller's own cap.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// A value that could not be encoded or bytes that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The value could not be written.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// The bytes decoded, but some were left over.
    #[error("cannot decode: {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encodes `value` at the end of `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a whole `T` from `bytes`; leftover bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes a `T` from the start of `bytes`, borrowing from them where `T`
/// does (`&[u8]`, `&str`); returns it with the number of bytes it took.
pub fn decode_prefix<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes a whole `T` from `bytes`, borrowing from them where `T` does;
/// leftover bytes are an error.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Add(i64),
        Get {},
    }

    #[test]
    fn values_round_trip() {
        let bytes = encode(&Msg::Add(-5)).unwrap();
        assert_eq!(decode::<Msg>(&bytes).unwrap(), Msg::Add(-5));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_refused_without_panic() {
        assert!(decode::<Msg>(&[0xff; 8]).is_err());
        assert!(decode::<Msg>(&[]).is_err());
        let mut bytes = encode(&Msg::Get {}).unwrap();
        bytes.push(0);
        assert_eq!(decode::<Msg>(&bytes), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn borrowed_decoding_reads_what_encode_wrote_in_place() {
        let bytes = encode(&(7u32, vec![b"ab".as_slice()])).unwrap();
        let (head, used): (u32, usize) = decode_prefix(&bytes).unwrap();
        assert_eq!(head, 7);
        let rest: Vec<&[u8]> = decode_borrowed(&bytes[used..]).unwrap();
        assert_eq!(rest, vec![b"ab".as_slice()]);
        let inside = bytes.as_ptr_range();
        assert!(inside.contains(&rest[0].as_ptr()), "borrowed, not copied");
        assert_eq!(
            decode_borrowed::<u32>(&bytes),
            Err(CodecError::Trailing(bytes.len() - used))
        );
    }

    #[test]
    fn a_huge_length_prefix_is_refused_before_allocating() {
        // A Vec<u8> whose varint length claims u64::MAX bytes.
        let mut bytes = vec![253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
    }
}
