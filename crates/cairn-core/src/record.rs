//! Versioned CBOR records: the only encoding of anything Cairn stores.
//!
//! A stored value is one format-version byte followed by the CBOR of the record. Readers check the
//! byte first, so a future format can be migrated instead of misread, and a value that fails to
//! decode is reported as [`ErrorKind::Corrupt`](crate::ErrorKind) with the record's name.

use serde::{de::DeserializeOwned, Serialize};

use crate::{Error, Result};

/// A type stored as a versioned CBOR record.
pub trait Record: Serialize + DeserializeOwned {
    /// Human name used in error messages ("upload job", "part"…).
    const NAME: &'static str;
    /// Format version written in the first byte; bump it when the layout changes.
    const VERSION: u8 = 1;

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        // Writing CBOR into a Vec cannot fail for our derive-generated types.
        ciborium::into_writer(self, &mut out).expect("CBOR encoding into memory");
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        Self::decode_view(bytes)
    }

    /// Decodes a stored record of this type as `T`, a view holding some of its fields: serde
    /// skips the others without building them, so a read that needs a record's small fields
    /// does not pay for a large one (a version's metadata). Checked like [`Record::decode`].
    fn decode_view<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        let (&version, body) = bytes
            .split_first()
            .ok_or_else(|| Error::corrupt(format!("empty {} record", Self::NAME)))?;
        if version != Self::VERSION {
            return Err(Error::corrupt(format!(
                "{} record has format version {version}, this build reads {}",
                Self::NAME,
                Self::VERSION
            )));
        }
        let mut rest = body;
        let value = ciborium::from_reader(&mut rest)
            .map_err(|e| Error::corrupt(format!("{} record does not decode: {e}", Self::NAME)))?;
        // One CBOR item is the whole record: bytes after it mean the record is not what was
        // written (a torn or overwritten value), which fsck must see.
        if !rest.is_empty() {
            return Err(Error::corrupt(format!(
                "{} record has {} bytes after its value",
                Self::NAME,
                rest.len()
            )));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        size: u64,
    }
    impl Record for Sample {
        const NAME: &'static str = "sample";
        const VERSION: u8 = 3;
    }

    #[test]
    fn bytes_after_the_value_are_corrupt() {
        let mut bytes = Sample {
            name: "a".into(),
            size: 1,
        }
        .encode();
        assert!(Sample::decode(&bytes).is_ok());
        bytes.push(0);
        let e = Sample::decode(&bytes).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Corrupt);
        assert!(e.reason.contains("1 bytes after"), "{}", e.reason);
    }

    #[test]
    fn round_trip_and_version_byte() {
        let s = Sample {
            name: "a".into(),
            size: 7,
        };
        let bytes = s.encode();
        assert_eq!(bytes[0], 3);
        assert_eq!(Sample::decode(&bytes).unwrap(), s);
    }

    #[test]
    fn wrong_version_and_garbage_are_corrupt() {
        let mut bytes = Sample {
            name: "a".into(),
            size: 7,
        }
        .encode();
        bytes[0] = 2;
        assert_eq!(Sample::decode(&bytes).unwrap_err().kind, ErrorKind::Corrupt);
        assert_eq!(
            Sample::decode(&[3, 0xff, 0x00]).unwrap_err().kind,
            ErrorKind::Corrupt
        );
        assert_eq!(Sample::decode(&[]).unwrap_err().kind, ErrorKind::Corrupt);
    }
}
