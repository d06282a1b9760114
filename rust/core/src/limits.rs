//! Size limits checked before anything is allocated from what a file claims, so that a corrupt
//! or hostile header gives an error instead of an allocation abort (docs/ALGORITHMS.md lists
//! them). Each is far above any real LoRA adapter.

use crate::error::{Error, Result};

/// Largest safetensors header: the reference reader's limit; a bigger length field is corrupt.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Largest extent of one tensor dimension (2³¹): beyond any vocabulary or hidden size.
pub const MAX_DIM: usize = 1 << 31;

/// Largest byte size of one tensor (16 GiB).
pub const MAX_TENSOR_BYTES: usize = 1 << 34;

/// Largest LoRA rank of one module (2¹⁶): ranks are at most min(d_out, d_in) to mean anything.
pub const MAX_RANK: usize = 1 << 16;

/// A zeroed `Vec<f32>` of `n` values, or an error saying `what` could not be allocated (never
/// the allocator's abort).
pub fn zeroed_f32(n: usize, what: &str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::invalid(format!(
            "cannot allocate {n} float32 values ({} bytes) for {what}",
            n.saturating_mul(4)
        ))
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_allocations_are_errors() {
        let e = zeroed_f32(usize::MAX / 2, "a test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot allocate") && e.contains("a test"), "{e}");
        assert_eq!(zeroed_f32(3, "x").unwrap(), vec![0.0; 3]);
    }
}
