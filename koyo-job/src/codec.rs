//! How job arguments become bytes and back: bincode 2's standard configuration, with a hard
//! size limit on both sides.
//!
//! Without a limit, a crafted length prefix makes bincode ask for a huge allocation and abort
//! the whole process, which no `catch_unwind` can stop. With the limit, it is an error. Nesting
//! is bounded too (see [`depth`]): a crafted row describing a value nested 200,000 levels deep
//! would otherwise overflow the stack of whatever decodes it, a worker or the admin page.

mod depth;

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer};

use crate::error::Error;

/// The largest encoded argument payload, in bytes (1 MiB). The table enforces it too.
pub const MAX_ARGS_BYTES: usize = 1 << 20;

/// How deeply job arguments may nest: each sequence, map, struct, enum variant, `Some` and
/// newtype is one level, and the tuple of a job's arguments is the first. Arguments nested
/// deeper are refused when enqueued and fail their job when stored by other means, so no
/// decode, drop or display of them can run out of stack.
pub const MAX_ARGS_DEPTH: usize = 128;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ARGS_BYTES>()
}

/// Why stored argument bytes could not be turned back into a job's arguments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a valid encoding of the job's argument types (truncated, corrupt,
    /// or claiming more data than the limit allows).
    #[error("job arguments could not be decoded: {0}")]
    Invalid(String),
    /// The arguments decoded but bytes were left over: they were written for other types.
    #[error("job arguments have {trailing} unexpected trailing bytes (written for a different signature?)")]
    TrailingBytes {
        /// How many bytes were left.
        trailing: usize,
    },
    /// The stored payload is over the size limit.
    #[error("job arguments are {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The stored size in bytes.
        size: usize,
        /// [`MAX_ARGS_BYTES`].
        limit: usize,
    },
    /// The arguments nest deeper than [`MAX_ARGS_DEPTH`] levels.
    #[error("job arguments nest more than {limit} levels deep (a recursive type, or a crafted row)")]
    TooDeep {
        /// [`MAX_ARGS_DEPTH`].
        limit: usize,
    },
}

/// Encodes arguments, refusing payloads over [`MAX_ARGS_BYTES`].
pub(crate) fn encode<A: Serialize>(args: &A) -> Result<Vec<u8>, Error> {
    let bytes = bincode::serde::encode_to_vec(args, config()).map_err(|e| Error::Serialize(e.to_string()))?;
    if bytes.len() > MAX_ARGS_BYTES {
        return Err(Error::ArgsTooLarge { size: bytes.len(), limit: MAX_ARGS_BYTES });
    }
    Ok(bytes)
}

/// Decodes arguments: all bytes must be used, and nothing may claim more than the limit.
pub fn decode<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, DecodeError> {
    if bytes.len() > MAX_ARGS_BYTES {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: MAX_ARGS_BYTES });
    }
    let (value, read) =
        bincode::serde::seed_decode_from_slice(DepthLimited::<A>(PhantomData), bytes, config()).map_err(
            |e| match e {
                bincode::error::DecodeError::OtherString(message) if message == depth::TOO_DEEP => {
                    DecodeError::TooDeep { limit: MAX_ARGS_DEPTH }
                }
                e => DecodeError::Invalid(e.to_string()),
            },
        )?;
    if read != bytes.len() {
        return Err(DecodeError::TrailingBytes { trailing: bytes.len() - read });
    }
    Ok(value)
}

/// Decodes an `A` with its nesting bounded by [`MAX_ARGS_DEPTH`].
struct DepthLimited<A>(PhantomData<A>);

impl<'de, A: DeserializeOwned> DeserializeSeed<'de> for DepthLimited<A> {
    type Value = A;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<A, D::Error> {
        A::deserialize(depth::Limited::new(deserializer, MAX_ARGS_DEPTH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let bytes = encode(&(7_i64, "héllo".to_string())).unwrap();
        assert_eq!(decode::<(i64, String)>(&bytes).unwrap(), (7, "héllo".to_string()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<(i64, String)>(&longer), Err(DecodeError::TrailingBytes { trailing: 1 }));
        assert!(matches!(decode::<(i64, String)>(&bytes[..bytes.len() - 1]), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_abort() {
        // varint 0xFD marks a u64 length follows: claim 2^40 elements.
        let crafted = [0xFD, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(matches!(decode::<(Vec<u64>,)>(&crafted), Err(DecodeError::Invalid(_))));
        assert!(matches!(decode::<(String,)>(&crafted), Err(DecodeError::Invalid(_))));
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Chain {
        End,
        Link(Box<Chain>),
    }

    fn chain(levels: usize) -> Chain {
        (0..levels).fold(Chain::End, |inner, _| Chain::Link(Box::new(inner)))
    }

    #[test]
    fn nesting_up_to_the_limit_decodes() {
        // The argument tuple is one level, each link one more, and the end of the chain one.
        let value = (chain(MAX_ARGS_DEPTH - 2),);
        let bytes = encode(&value).unwrap();
        assert_eq!(decode::<(Chain,)>(&bytes).unwrap(), value);
        let deeper = encode(&(chain(MAX_ARGS_DEPTH - 1),)).unwrap();
        assert_eq!(decode::<(Chain,)>(&deeper), Err(DecodeError::TooDeep { limit: MAX_ARGS_DEPTH }));
    }

    #[test]
    fn a_crafted_deep_payload_is_an_error_not_a_stack_overflow() {
        // What a 200,000-link chain encodes to, written by hand: variant 1 (`Link`) 200,000
        // times, then variant 0 (`End`). Decoding it unbounded overflows any thread's stack.
        let mut crafted = vec![1_u8; 200_000];
        crafted.push(0);
        let err = decode::<(Chain,)>(&crafted).unwrap_err();
        assert_eq!(err, DecodeError::TooDeep { limit: MAX_ARGS_DEPTH });
        assert!(err.to_string().contains("128 levels"), "{err}");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Node(#[allow(dead_code)] Option<Box<Node>>);

    #[derive(Debug, serde::Deserialize)]
    struct Tree(#[allow(dead_code)] Vec<Tree>);

    #[test]
    fn every_kind_of_nesting_counts() {
        let too_deep = Err(DecodeError::TooDeep { limit: MAX_ARGS_DEPTH });
        // `Some` 10,000 times: bincode writes 1 for `Some`, 0 for `None`.
        let mut options = vec![1_u8; 10_000];
        options.push(0);
        assert_eq!(decode::<(Node,)>(&options).map(|_| ()), too_deep);
        // Vectors of one vector each: length 1, 10,000 times, then an empty one.
        let mut vecs = vec![1_u8; 10_000];
        vecs.push(0);
        assert_eq!(decode::<(Tree,)>(&vecs).map(|_| ()), too_deep);
        assert!(decode::<(Tree,)>(&[1, 1, 1, 0]).is_ok());
    }

    #[test]
    fn oversized_arguments_are_refused() {
        let big = vec![1_u8; MAX_ARGS_BYTES];
        assert!(matches!(encode(&(big,)), Err(Error::ArgsTooLarge { .. })));
    }
}
