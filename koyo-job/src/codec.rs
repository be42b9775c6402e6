//! How job arguments become bytes and back: bincode 2's standard configuration, with a hard
//! size limit on both sides.
//!
//! Without a limit, a crafted length prefix makes bincode ask for a huge allocation and abort
//! the whole process, which no `catch_unwind` can stop. With the limit, it is an error.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The largest encoded argument payload, in bytes (1 MiB). The table enforces it too.
pub const MAX_ARGS_BYTES: usize = 1 << 20;

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
    TrailingBytes { trailing: usize },
    /// The stored payload is over the size limit.
    #[error("job arguments are {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
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
    let (value, read) = bincode::serde::decode_from_slice::<A, _>(bytes, config())
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError::TrailingBytes { trailing: bytes.len() - read });
    }
    Ok(value)
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

    #[test]
    fn oversized_arguments_are_refused() {
        let big = vec![1_u8; MAX_ARGS_BYTES];
        assert!(matches!(encode(&(big,)), Err(Error::ArgsTooLarge { .. })));
    }
}
