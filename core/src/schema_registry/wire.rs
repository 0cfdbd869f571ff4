//! The Confluent wire format: a magic byte 0, the schema id as 4 big-endian bytes, then the
//! Avro binary datum. Every Confluent-compatible consumer reads document records in this form.

use super::SchemaId;

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;

/// Frames an Avro datum with its schema id.
pub fn frame(id: SchemaId, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0} bytes is too short for the Confluent wire format (magic byte and schema id)")]
    TooShort(usize),
    #[error("magic byte {0:#04x}, expected 0x00 (Confluent wire format)")]
    BadMagic(u8),
}

/// Splits a framed value into its schema id and Avro datum.
pub fn unframe(value: &[u8]) -> Result<(SchemaId, &[u8]), WireError> {
    if value.len() < HEADER_LEN {
        return Err(WireError::TooShort(value.len()));
    }
    if value[0] != MAGIC {
        return Err(WireError::BadMagic(value[0]));
    }
    let id = u32::from_be_bytes(value[1..HEADER_LEN].try_into().expect("four bytes"));
    Ok((id, &value[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let framed = frame(258, b"avro");
        assert_eq!(&framed[..5], &[0, 0, 0, 1, 2]);
        assert_eq!(unframe(&framed), Ok((258, &b"avro"[..])));
        assert_eq!(unframe(&[0, 1]), Err(WireError::TooShort(2)));
        assert_eq!(unframe(&[9, 0, 0, 0, 1]), Err(WireError::BadMagic(9)));
    }
}
