//! GGML tensor element types: ids as stored in GGUF, block sizes and byte sizes.

use crate::error::{Error, Result};

/// A GGML tensor type. Discriminants are the ids GGUF stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit float.
    F32 = 0,
    /// IEEE half.
    F16 = 1,
    /// 4-bit, scale only (blocks of 32).
    Q4_0 = 2,
    /// 4-bit, scale and min (blocks of 32).
    Q4_1 = 3,
    /// 8-bit, scale only (blocks of 32).
    Q8_0 = 8,
    /// 8-bit with scale and scaled sum (activations for Q4_1).
    Q8_1 = 9,
    /// 4-bit k-quant (super-blocks of 256).
    Q4K = 12,
    /// 6-bit k-quant (super-blocks of 256).
    Q6K = 14,
    /// 8-bit k-quant (activations for k-quants).
    Q8K = 15,
    /// bfloat16.
    BF16 = 30,
}

impl GgmlType {
    /// Maps a GGUF type id; unknown or unimplemented ids are an error, not a guess.
    pub fn from_u32(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            12 => Self::Q4K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            other => return Err(Error::unsupported(format!("ggml type id {other}"))),
        })
    }

    /// Number of elements in one block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q4K | Self::Q6K | Self::Q8K => 256,
        }
    }

    /// Bytes in one block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q4K => 144,
            Self::Q6K => 210,
            Self::Q8K => 292,
        }
    }

    /// Bytes for a row of `n` elements, or an error when `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn row_bytes(self, n: u64) -> Result<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return Err(Error::gguf(format!(
                "row of {n} elements is not a multiple of the {self:?} block size {bs}"
            )));
        }
        (n / bs)
            .checked_mul(self.type_size() as u64)
            .ok_or_else(|| Error::gguf("tensor size overflows"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_id_is_an_error() {
        assert!(GgmlType::from_u32(7).is_err());
        assert_eq!(GgmlType::from_u32(3).unwrap(), GgmlType::Q4_1);
    }

    #[test]
    fn row_bytes_rejects_partial_blocks() {
        assert_eq!(GgmlType::Q4_1.row_bytes(64).unwrap(), 40);
        assert!(GgmlType::Q4_1.row_bytes(33).is_err());
        assert_eq!(GgmlType::F32.row_bytes(3).unwrap(), 12);
    }
}
