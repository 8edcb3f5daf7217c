//! A SHA-256 whose running state can be saved and restored, so that an upload resumed on
//! another replica (or after a restart) goes on hashing where the previous one stopped
//! instead of reading the received bytes back.

use serde::{Deserialize, Serialize};
use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

const BLOCK: usize = 64;
const INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 over a stream, serializable between any two updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed so far, including those still in `tail`.
    len: u64,
    /// The bytes of an incomplete block, fewer than 64.
    #[serde(with = "hex_bytes")]
    tail: Vec<u8>,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl ResumableSha256 {
    /// A hasher over the empty input.
    pub fn new() -> Self {
        Self {
            state: INITIAL_STATE,
            len: 0,
            tail: Vec::with_capacity(BLOCK),
        }
    }

    /// Number of bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Feeds more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let need = BLOCK - self.tail.len();
            let take = need.min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < BLOCK {
                return;
            }
            let block = std::mem::take(&mut self.tail);
            compress(&mut self.state, &block);
            self.tail = block;
            self.tail.clear();
        }
        let whole = data.len() / BLOCK * BLOCK;
        if whole > 0 {
            compress(&mut self.state, &data[..whole]);
        }
        self.tail.extend_from_slice(&data[whole..]);
    }

    /// The digest of everything fed so far; the hasher itself is left as it was.
    pub fn finalize(&self) -> [u8; 32] {
        let mut state = self.state;
        let mut last = self.tail.clone();
        last.push(0x80);
        while last.len() % BLOCK != BLOCK - 8 {
            last.push(0);
        }
        last.extend_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        compress(&mut state, &last);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The digest as lowercase hex.
    pub fn finalize_hex(&self) -> String {
        hex::encode(self.finalize())
    }
}

/// Runs the compression function over whole 64-byte blocks.
fn compress(state: &mut [u32; 8], data: &[u8]) {
    debug_assert_eq!(data.len() % BLOCK, 0);
    // compress256 takes a slice of owned blocks; copying them in batches keeps the call
    // count low without an unsafe cast.
    const BATCH: usize = 256;
    let mut buf: Vec<GenericArray<u8, U64>> = Vec::with_capacity(BATCH.min(data.len() / BLOCK));
    for group in data.chunks(BLOCK * BATCH) {
        buf.clear();
        buf.extend(
            group
                .chunks_exact(BLOCK)
                .map(|b| *GenericArray::from_slice(b)),
        );
        sha2::compress256(state, &buf);
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        if bytes.len() >= super::BLOCK {
            return Err(serde::de::Error::custom("hash tail longer than a block"));
        }
        Ok(bytes)
    }
}

/// SHA-256 of a byte slice as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = ResumableSha256::new();
    h.update(data);
    h.finalize_hex()
}

/// True when `s` looks like a lowercase hex SHA-256 digest.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn reference(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn matches_reference_for_every_length_and_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let input = &data[..len];
            for split in [0, 1, len / 3, len / 2, len.saturating_sub(1), len] {
                let split = split.min(len);
                let mut h = ResumableSha256::new();
                h.update(&input[..split]);
                h.update(&input[split..]);
                assert_eq!(
                    h.finalize_hex(),
                    reference(input),
                    "len {len} split {split}"
                );
            }
        }
    }

    #[test]
    fn survives_a_serialization_round_trip_mid_stream() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = ResumableSha256::new();
        h.update(&data[..4_321]);
        let saved = serde_json::to_string(&h).unwrap();
        let mut restored: ResumableSha256 = serde_json::from_str(&saved).unwrap();
        restored.update(&data[4_321..]);
        assert_eq!(restored.finalize_hex(), reference(&data));
        assert_eq!(restored.len(), data.len() as u64);
    }

    #[test]
    fn rejects_an_oversized_tail() {
        let bad = format!(
            r#"{{"state":[0,0,0,0,0,0,0,0],"len":0,"tail":"{}"}}"#,
            "00".repeat(64)
        );
        assert!(serde_json::from_str::<ResumableSha256>(&bad).is_err());
    }

    #[test]
    fn recognises_hex_digests() {
        assert!(is_sha256_hex(&sha256_hex(b"x")));
        assert!(!is_sha256_hex("ABC"));
        assert!(!is_sha256_hex(&"G".repeat(64)));
    }
}
