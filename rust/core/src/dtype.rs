//! Element types rankwise reads and writes, and their conversion to and from f32.
//!
//! Mapped tensor bytes carry no alignment guarantee (the safetensors header length is arbitrary),
//! so every reader works on bytes; when the bytes happen to be aligned (the common case) the
//! f16 path hands them to `half`'s slice conversion, which dispatches to F16C at run time.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
}

impl DType {
    /// The safetensors name of the dtype; `None` for names rankwise does not handle.
    pub fn from_safetensors(name: &str) -> Option<DType> {
        match name {
            "F64" => Some(DType::F64),
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Element sizes of the dtypes safetensors defines, so that a header naming a dtype we do not
/// convert can still be checked for consistent offsets before we refuse it.
pub fn safetensors_dtype_size(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Converts `bytes` (little-endian elements of `dtype`) into `out`, scaled by `scale`.
/// `bytes.len()` must equal `out.len() * dtype.size()`.
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = f64::from_le_bytes(b) as f32;
            }
        }
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(halves) if cfg!(target_endian = "little") => halves.convert_to_f32_slice(out),
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        },
        DType::BF16 => {
            // bf16 is the top half of an f32: a shift, which the compiler vectorises.
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
    }
}

/// Appends `values` to `buf` as little-endian elements of `dtype` (round to nearest even).
pub fn from_f32(dtype: DType, values: &[f32], buf: &mut Vec<u8>) {
    buf.reserve(values.len() * dtype.size());
    match dtype {
        DType::F32 => values
            .iter()
            .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
        DType::F64 => values
            .iter()
            .for_each(|v| buf.extend_from_slice(&(*v as f64).to_le_bytes())),
        DType::F16 => {
            let mut halves = vec![f16::ZERO; values.len()];
            halves.convert_from_f32_slice(values);
            halves
                .iter()
                .for_each(|h| buf.extend_from_slice(&h.to_bits().to_le_bytes()));
        }
        DType::BF16 => values
            .iter()
            .for_each(|v| buf.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_bits_le() -> Vec<u8> {
        (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect()
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn f16_all_bit_patterns_match_scalar_conversion() {
        let bytes = all_bits_le();
        // Aligned (the SIMD slice path) and misaligned by one byte (the scalar fallback).
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        for src in [&bytes[..], &shifted[1..]] {
            let mut out = vec![0f32; 65536];
            to_f32(DType::F16, src, &mut out);
            for bits in 0..=u16::MAX {
                let want = f16::from_bits(bits).to_f32();
                assert!(same(out[bits as usize], want), "bits {bits:#06x}");
            }
        }
    }

    #[test]
    fn bf16_all_bit_patterns_match_scalar_conversion() {
        let bytes = all_bits_le();
        let mut out = vec![0f32; 65536];
        to_f32(DType::BF16, &bytes, &mut out);
        for bits in 0..=u16::MAX {
            assert!(same(out[bits as usize], bf16::from_bits(bits).to_f32()));
        }
    }

    #[test]
    fn half_round_trips_exactly_through_f32() {
        for dtype in [DType::F16, DType::BF16] {
            let bytes = all_bits_le();
            let mut vals = vec![0f32; 65536];
            to_f32(dtype, &bytes, &mut vals);
            let mut back = Vec::new();
            from_f32(dtype, &vals, &mut back);
            for i in 0..65536 {
                if !vals[i].is_nan() {
                    assert_eq!(
                        back[2 * i..2 * i + 2],
                        bytes[2 * i..2 * i + 2],
                        "{dtype:?} {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn f32_and_f64_round_trip() {
        let vals = [0.0f32, -1.5, 3.25e-8, f32::MAX, f32::MIN_POSITIVE];
        for dtype in [DType::F32, DType::F64] {
            let mut bytes = Vec::new();
            from_f32(dtype, &vals, &mut bytes);
            let mut out = vec![0f32; vals.len()];
            to_f32(dtype, &bytes, &mut out);
            assert_eq!(out, vals);
        }
    }
}
