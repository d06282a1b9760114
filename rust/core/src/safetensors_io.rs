//! Memory-mapped safetensors files: header validation, f32 reads straight from the mapped bytes,
//! and a writer.
//!
//! The header is validated in full when a file is opened, at least as strictly as the reference
//! reader (`safetensors`): no duplicate keys, dtype known, shape × element size = byte length,
//! the tensors' data tiling the data section exactly (no overlap, gap or trailing bytes), sizes
//! within `crate::limits`. Every later read is then a plain slice of the map. Values are only
//! touched when a module asks for them.
//!
//! A mapped file that shrinks underneath us would turn a read into SIGBUS. So every access to
//! the mapped bytes first re-checks the open file (fstat: size and modification time, on our own
//! descriptor): a file truncated or rewritten in place since it was opened is an error naming
//! it. A file replaced by rename keeps its old inode alive through our descriptor: reads stay
//! consistent with the file as it was opened. (The check cannot cover a truncation during the
//! few milliseconds one module is read; every mmap reader shares that hazard.)

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use memmap2::Mmap;
use rayon::prelude::*;
use serde_json::Value;

use crate::dtype::{self, DType};
use crate::error::{Error, Result};
use crate::limits::{self, MAX_DIM, MAX_HEADER_BYTES, MAX_TENSOR_BYTES};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The dtype as the header names it (kept for messages and `inspect`).
    pub dtype_name: String,
    /// `None` for a dtype safetensors knows but rankwise does not convert (integers, fp8).
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    /// Byte range of the data, absolute in the file.
    pub begin: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        // A zero anywhere first: the other extents' product may not fit (`[2^31, 2^31, 0]`).
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape.iter().product()
    }
}

pub struct MappedFile {
    path: PathBuf,
    map: Option<Mmap>,
    /// The open file behind the map, and its size and modification time when it was opened:
    /// re-checked before the mapped bytes are read (see the module doc).
    file: File,
    stamp: Stamp,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile> {
        let io_err = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let stamp = Stamp::of(&file).map_err(io_err)?;
        let len = stamp.len;
        if len < 8 {
            return Err(Error::header(
                path,
                format!("file is {len} bytes, too short for the 8-byte header length (truncated?)"),
            ));
        }
        // SAFETY: the map is read-only; a file truncated underneath us is caught by
        // `check_unchanged` before the mapped bytes are read (see the module doc).
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        if map.len() as u64 != len {
            return Err(changed(path));
        }
        let (tensors, metadata) = parse_header(path, &map)?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map: Some(map),
            file,
            stamp,
            tensors,
            metadata,
        })
    }

    /// An error naming the file when it was truncated, extended or rewritten since it was
    /// opened (its mapped pages could then be gone, or mix two versions).
    pub fn check_unchanged(&self) -> Result<()> {
        match Stamp::of(&self.file) {
            Ok(now) if now == self.stamp => Ok(()),
            Ok(now) => Err(Error::header(
                &self.path,
                format!(
                    "the file changed after it was opened ({} bytes then, {} now, or rewritten \
                     in place); reload the adapter",
                    self.stamp.len, now.len
                ),
            )),
            Err(source) => Err(Error::Io {
                path: self.path.display().to_string(),
                source,
            }),
        }
    }

    /// Opens many files in parallel; one result per path, in order.
    pub fn open_many(paths: &[PathBuf]) -> Vec<Result<MappedFile>> {
        paths
            .par_iter()
            .map(|p| crate::error::catch_panic("opening safetensors", || MappedFile::open(p)))
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn info(&self, key: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(key)
            .ok_or_else(|| Error::tensor(&self.path, key, "no such tensor in the file"))
    }

    /// The raw bytes of a tensor and its (supported) dtype.
    pub fn bytes(&self, key: &str) -> Result<(&[u8], DType, &TensorInfo)> {
        let info = self.info(key)?;
        let dtype = info.dtype.ok_or_else(|| {
            Error::tensor(
                &self.path,
                key,
                format!(
                    "dtype {} is not supported (rankwise reads F16, BF16, F32 and F64)",
                    info.dtype_name
                ),
            )
        })?;
        self.check_unchanged()?;
        let map = self.map.as_deref().unwrap_or(&[]);
        Ok((&map[info.begin..info.end], dtype, info))
    }

    /// Converts a tensor to f32 into `out` (which must hold exactly `numel` values), times `scale`.
    pub fn read_into(&self, key: &str, out: &mut [f32]) -> Result<()> {
        let (bytes, dtype, info) = self.bytes(key)?;
        if out.len() != info.numel() {
            return Err(Error::tensor(
                &self.path,
                key,
                format!(
                    "expected {} values, the tensor has {}",
                    out.len(),
                    info.numel()
                ),
            ));
        }
        dtype::to_f32(dtype, bytes, out);
        Ok(())
    }

    pub fn read(&self, key: &str) -> Result<Vec<f32>> {
        let n = self.info(key)?.numel();
        let mut out = limits::zeroed_f32(n, &format!("tensor '{key}' of {}", self.path.display()))?;
        self.read_into(key, &mut out)?;
        Ok(out)
    }

    /// Fails with the file, key and flat index of the first NaN or Inf. Works on the bit
    /// patterns, so no conversion is paid for.
    pub fn check_finite(&self, key: &str) -> Result<()> {
        let (bytes, dtype, _) = self.bytes(key)?;
        let first_bad = match dtype {
            DType::F16 => first_nonfinite(bytes, |b| (u16::from_le_bytes(b) & 0x7C00) == 0x7C00),
            DType::BF16 => first_nonfinite(bytes, |b| (u16::from_le_bytes(b) & 0x7F80) == 0x7F80),
            DType::F32 => first_nonfinite(bytes, |b| {
                (u32::from_le_bytes(b) & 0x7F80_0000) == 0x7F80_0000
            }),
            // Finite doubles beyond float32's range read as inf: refused here too.
            DType::F64 => first_nonfinite(bytes, |b| {
                (f64::from_le_bytes(b) as f32).is_infinite() || f64::from_le_bytes(b).is_nan()
            }),
        };
        match first_bad {
            None => Ok(()),
            Some(i) => {
                let sz = dtype.size();
                let raw = &bytes[i * sz..(i + 1) * sz];
                if dtype == DType::F64 {
                    let v = f64::from_le_bytes(raw.try_into().unwrap_or([0; 8]));
                    if v.is_finite() {
                        return Err(Error::tensor(
                            &self.path,
                            key,
                            format!(
                                "value {v:e} at flat index {i} is outside float32's range \
                                 (rankwise computes in float32)"
                            ),
                        ));
                    }
                }
                let mut v = [0f32; 1];
                dtype::to_f32(dtype, raw, &mut v);
                Err(Error::tensor(
                    &self.path,
                    key,
                    format!(
                        "contains {} (first at flat index {i}); weights must be finite",
                        nonfinite_name(v[0])
                    ),
                ))
            }
        }
    }

    /// Tells the kernel this process is done with a tensor's pages, so they leave our resident
    /// set (they stay in the page cache). Purely advisory: errors are ignored.
    pub fn release(&self, key: &str) {
        let (Some(map), Some(info)) = (self.map.as_ref(), self.tensors.get(key)) else {
            return;
        };
        release_range(map, info.begin, info.end);
    }

    /// The byte ranges of two tensors: one range when they are neighbours in the file (a
    /// module's lora_A and lora_B are, in PEFT's files), else two.
    fn pair_ranges(&self, a: &str, b: &str) -> Vec<(usize, usize)> {
        let (Some(ia), Some(ib)) = (self.tensors.get(a), self.tensors.get(b)) else {
            return Vec::new();
        };
        if ia.end == ib.begin || ib.end == ia.begin {
            vec![(ia.begin.min(ib.begin), ia.end.max(ib.end))]
        } else {
            vec![(ia.begin, ia.end), (ib.begin, ib.end)]
        }
    }

    /// `release` of two tensors, with as few calls as their layout allows: each call
    /// interrupts the process's other threads to flush their TLBs.
    pub fn release_pair(&self, a: &str, b: &str) {
        if let Some(map) = self.map.as_ref() {
            for (begin, end) in self.pair_ranges(a, b) {
                release_range(map, begin, end);
            }
        }
    }

    /// Maps two tensors' pages in one call each (Linux's MADV_POPULATE_READ) before they are
    /// read: one call instead of a page fault per 4 KiB. Advisory: errors (older kernels,
    /// other systems) are ignored and the reads fault the pages in as usual.
    pub fn populate_pair(&self, a: &str, b: &str) {
        #[cfg(target_os = "linux")]
        if let Some(map) = self.map.as_ref() {
            for (begin, end) in self.pair_ranges(a, b) {
                const PAGE: usize = 4096;
                let start = (begin / PAGE) * PAGE;
                let stop = end.min(map.len());
                if stop > start {
                    let _ = map.advise_range(memmap2::Advice::PopulateRead, start, stop - start);
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (a, b);
    }

    /// Releases every page of the file from the resident set (see `release`).
    pub fn release_all(&self) {
        if let Some(map) = self.map.as_ref() {
            release_range(map, 0, map.len());
        }
    }
}

/// "NaN", "inf" or "-inf": what a non-finite value is, for messages.
pub fn nonfinite_name(v: f32) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

/// What `check_unchanged` compares: the size and modification time of the open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(file: &File) -> std::io::Result<Stamp> {
        let m = file.metadata()?;
        Ok(Stamp {
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

fn changed(path: &Path) -> Error {
    Error::header(
        path,
        "the file changed while it was being opened; reload the adapter",
    )
}

#[cfg(unix)]
fn release_range(map: &Mmap, begin: usize, end: usize) {
    const PAGE: usize = 4096;
    // Round inwards: pages shared with a neighbouring tensor stay mapped.
    let start = begin.div_ceil(PAGE) * PAGE;
    let stop = (end / PAGE) * PAGE;
    if stop > start {
        // SAFETY: the map is a private read-only file mapping; DONTNEED only drops our page
        // table entries, and a later read faults the same bytes back in from the file.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, stop - start)
        };
    }
}

#[cfg(not(unix))]
fn release_range(_map: &Mmap, _begin: usize, _end: usize) {}

/// The index of the first value that is `bad`. Blocks of values are scanned with a
/// branch-free fold (which the compiler vectorises, unlike an early-exit search); only a block
/// with a hit is searched. Serves the finite checks on raw bytes here and on converted values
/// (`units`).
pub(crate) fn first_where<T: Copy>(values: &[T], bad: impl Fn(T) -> bool) -> Option<usize> {
    const BLOCK: usize = 256;
    values.chunks(BLOCK).enumerate().find_map(|(i, blk)| {
        let hit = blk.iter().fold(false, |acc, &v| acc | bad(v));
        hit.then(|| blk.iter().position(|&v| bad(v)))
            .flatten()
            .map(|j| i * BLOCK + j)
    })
}

/// `first_where` on the values of little-endian `N`-byte bit patterns.
fn first_nonfinite<const N: usize>(bytes: &[u8], bad: impl Fn([u8; N]) -> bool) -> Option<usize> {
    first_where(bytes.as_chunks::<N>().0, bad)
}

type Header = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

/// Any JSON value, checked for an object that names a key twice (at any depth): serde_json
/// keeps the last of two silently, so which tensor a duplicated key means would be a guess.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<NoDuplicateKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key '{key}' appears twice"
                )));
            }
        }
        Ok(self)
    }
}

/// Parses and validates the header of a whole safetensors file held in `buf`.
pub fn parse_header(path: &Path, buf: &[u8]) -> Result<Header> {
    let herr = |r: String| Error::header(path, r);
    let file_len = buf.len() as u64;
    if file_len < 8 {
        return Err(herr(format!(
            "file is {file_len} bytes, too short for the 8-byte header length (truncated?)"
        )));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&buf[..8]);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER_BYTES {
        return Err(herr(format!(
            "header length field says {n} bytes, more than the {MAX_HEADER_BYTES} allowed (corrupt file?)"
        )));
    }
    if 8 + n > file_len {
        return Err(herr(format!(
            "header length field says {n} bytes but the file has only {} after it (truncated?)",
            file_len - 8
        )));
    }
    let n = n as usize;
    let data_start = 8 + n;
    let data_len = buf.len() - data_start;
    let text = &buf[8..data_start];
    // The reference reader's rule: the header is a JSON object from its first byte.
    if text.first() != Some(&b'{') {
        return Err(herr(
            "header does not start with '{' (not a safetensors file?)".into(),
        ));
    }
    let json: Value =
        serde_json::from_slice(text).map_err(|e| herr(format!("header is not valid JSON: {e}")))?;
    serde_json::from_slice::<NoDuplicateKeys>(text)
        .map_err(|e| herr(format!("header is ambiguous: {e}")))?;
    let Value::Object(entries) = json else {
        return Err(herr("header is not a JSON object".into()));
    };

    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (key, entry) in entries {
        if key == "__metadata__" {
            let Value::Object(m) = entry else {
                return Err(herr("__metadata__ is not an object of strings".into()));
            };
            for (k, v) in m {
                match v {
                    Value::String(s) => metadata.insert(k, s),
                    _ => return Err(herr(format!("__metadata__ value of '{k}' is not a string"))),
                };
            }
            continue;
        }
        let info = parse_entry(path, &key, &entry, data_start, data_len)?;
        tensors.insert(key, info);
    }

    // The tensors tile the data section exactly, as the reference reader requires: sorted by
    // start, each begins where the previous one ends (an overlap or a gap is an error, a
    // zero-size tensor included) and the last ends where the file does.
    let mut spans: Vec<(&String, &TensorInfo)> = tensors.iter().collect();
    spans.sort_by_key(|(_, t)| (t.begin, t.end));
    let mut covered = data_start;
    let mut prev: Option<&String> = None;
    for (k, t) in spans {
        if t.begin != covered {
            let what = if t.begin < covered {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            let other = match prev {
                Some(p) => format!("the data of tensor '{p}'"),
                None => "the start of the data".into(),
            };
            return Err(Error::tensor(
                path,
                k,
                format!(
                    "data {what} {other} (data_offsets [{}, {}]; it ends at {})",
                    t.begin - data_start,
                    t.end - data_start,
                    covered - data_start
                ),
            ));
        }
        covered = t.end;
        prev = Some(k);
    }
    if covered != buf.len() {
        return Err(herr(format!(
            "the data section has {data_len} bytes but the tensors cover only {} (trailing bytes)",
            covered - data_start
        )));
    }
    Ok((tensors, metadata))
}

fn parse_entry(
    path: &Path,
    key: &str,
    entry: &Value,
    data_start: usize,
    data_len: usize,
) -> Result<TensorInfo> {
    let terr = |r: String| Error::tensor(path, key, r);
    let obj = entry
        .as_object()
        .ok_or_else(|| terr("header entry is not an object".into()))?;
    let dtype_name = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| terr("header entry has no string 'dtype'".into()))?;
    let elem = dtype::safetensors_dtype_size(dtype_name)
        .ok_or_else(|| terr(format!("unknown dtype '{dtype_name}'")))?;
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| terr("header entry has no 'shape' list".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| terr("shape has an entry that is not a non-negative integer".into()))?;
    if let Some(&d) = shape.iter().find(|&&d| d > MAX_DIM) {
        return Err(terr(format!(
            "shape {shape:?} has an extent {d} above the limit of {MAX_DIM}"
        )));
    }
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| terr("'data_offsets' is not a pair of non-negative integers".into()))?;
    let (b, e) = offsets;
    if b > e {
        return Err(terr(format!(
            "data_offsets [{b}, {e}] end before they begin"
        )));
    }
    if e > data_len as u64 {
        return Err(terr(format!(
            "data_offsets [{b}, {e}] run past the end of the data ({data_len} bytes; truncated file?)"
        )));
    }
    let (b, e) = (b as usize, e as usize);
    let nbytes = shape
        .iter()
        .try_fold(elem, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| terr(format!("shape {shape:?} overflows")))?;
    if nbytes > MAX_TENSOR_BYTES {
        return Err(terr(format!(
            "shape {shape:?} of {dtype_name} needs {nbytes} bytes, above the limit of \
             {MAX_TENSOR_BYTES} bytes per tensor"
        )));
    }
    if nbytes != e - b {
        return Err(terr(format!(
            "shape {shape:?} of {dtype_name} needs {nbytes} bytes but data_offsets [{b}, {e}] hold {}",
            e - b
        )));
    }
    Ok(TensorInfo {
        dtype_name: dtype_name.to_string(),
        dtype: DType::from_safetensors(dtype_name),
        shape,
        begin: data_start + b,
        end: data_start + e,
    })
}

/// One tensor to write: f32 values converted to `dtype` on the way out.
pub struct TensorOut<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// Writes a safetensors file (keys in sorted order, header padded to 8 bytes).
pub fn write(
    path: &Path,
    tensors: &[TensorOut],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut sorted: Vec<&TensorOut> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(b.name));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).unwrap_or_default(),
        );
    }
    let mut offset = 0usize;
    for t in &sorted {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::invalid(format!(
                "tensor '{}': shape {:?} does not hold {} values",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        let nbytes = t.data.len() * t.dtype.size();
        header.insert(
            t.name.to_string(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + nbytes],
            }),
        );
        offset += nbytes;
    }
    let mut hbytes = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::invalid(format!("cannot encode header: {e}")))?;
    while hbytes.len() % 8 != 0 {
        hbytes.push(b' ');
    }
    let mut buf = Vec::with_capacity(8 + hbytes.len() + offset);
    buf.extend_from_slice(&(hbytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(&hbytes);
    for t in &sorted {
        dtype::from_f32(t.dtype, t.data, &mut buf);
    }
    let io_err = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = File::create(path).map_err(io_err)?;
    f.write_all(&buf).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut buf = (header.len() as u64).to_le_bytes().to_vec();
        buf.extend_from_slice(header.as_bytes());
        buf.extend_from_slice(data);
        buf
    }

    fn err_of(buf: &[u8]) -> String {
        parse_header(Path::new("x.safetensors"), buf)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn accepts_what_the_reference_writer_writes() {
        use safetensors::tensor::{serialize, TensorView};
        let a: Vec<u8> = (0..24).collect();
        let b: Vec<u8> = (0..8).collect();
        let views = vec![
            (
                "w.a",
                TensorView::new(safetensors::Dtype::F32, vec![2, 3], &a).unwrap(),
            ),
            (
                "w.b",
                TensorView::new(safetensors::Dtype::BF16, vec![4], &b).unwrap(),
            ),
        ];
        let buf = serialize(views, None).unwrap();
        let (t, _) = parse_header(Path::new("x"), &buf).unwrap();
        assert_eq!(t["w.a"].shape, vec![2, 3]);
        assert_eq!(t["w.b"].dtype, Some(DType::BF16));
        assert_eq!(t["w.a"].end - t["w.a"].begin, 24);
    }

    #[test]
    fn too_short_and_truncated_header() {
        assert!(err_of(&[1, 2, 3]).contains("too short"));
        let mut buf = header_file("{}", &[]);
        buf[0] = 200;
        assert!(err_of(&buf).contains("truncated"));
        let mut huge = header_file("{}", &[]);
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err_of(&huge).contains("corrupt"));
    }

    #[test]
    fn invalid_json_and_entries() {
        assert!(err_of(&header_file("{not json", &[])).contains("not valid JSON"));
        assert!(err_of(&header_file("[1,2]", &[])).contains("does not start with"));
        let e = err_of(&header_file(
            r#"{"k":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("'k'") && e.contains("data_offsets"), "{e}");
        let e = err_of(&header_file(
            r#"{"k":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("shape"), "{e}");
    }

    #[test]
    fn offsets_past_end_overlap_and_size_mismatch() {
        let past = header_file(
            r#"{"k":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0; 8],
        );
        let e = err_of(&past);
        assert!(
            e.contains("tensor 'k'") && e.contains("past the end"),
            "{e}"
        );
        let overlap = header_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
        );
        let e = err_of(&overlap);
        assert!(
            e.contains("overlaps") && e.contains("'a'") && e.contains("'b'"),
            "{e}"
        );
        let size = header_file(
            r#"{"k":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert!(err_of(&size).contains("needs 6 bytes"));
        let backwards = header_file(
            r#"{"k":{"dtype":"F16","shape":[0],"data_offsets":[8,4]}}"#,
            &[0; 8],
        );
        assert!(err_of(&backwards).contains("end before"));
    }

    #[test]
    fn stricter_than_serde_and_as_strict_as_the_reference_reader() {
        let e4 = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let dup = header_file(&format!(r#"{{"a":{e4},"a":{e4}}}"#), &[0; 4]);
        assert!(
            err_of(&dup).contains("key 'a' appears twice"),
            "{}",
            err_of(&dup)
        );
        let dup_meta = header_file(
            &format!(r#"{{"__metadata__":{{"f":"1","f":"2"}},"a":{e4}}}"#),
            &[0; 4],
        );
        assert!(err_of(&dup_meta).contains("key 'f' appears twice"));
        let gap = header_file(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            &[0; 12],
        );
        let e = err_of(&gap);
        assert!(
            e.contains("tensor 'b'") && e.contains("gap after the data of tensor 'a'"),
            "{e}"
        );
        let trailing = header_file(&format!(r#"{{"a":{e4}}}"#), &[0; 6]);
        assert!(err_of(&trailing).contains("cover only 4 (trailing bytes)"));
        let zero_in_overlap = header_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
        );
        let e = err_of(&zero_in_overlap);
        assert!(e.contains("tensor 'z'") && e.contains("overlaps"), "{e}");
        let space = header_file(&format!(r#" {{"a":{e4}}}"#), &[0; 4]);
        assert!(err_of(&space).contains("does not start with"));
        // Zero-size tensors where they tile consistently are fine.
        let ok = header_file(
            &format!(r#"{{"a":{e4},"z":{{"dtype":"F16","shape":[0,5],"data_offsets":[4,4]}}}}"#),
            &[0; 4],
        );
        let (t, _) = parse_header(Path::new("x"), &ok).unwrap();
        assert_eq!(t["z"].numel(), 0);
    }

    #[test]
    fn claimed_sizes_beyond_the_limits_are_refused() {
        let huge_dim = header_file(
            &format!(
                r#"{{"z":{{"dtype":"F32","shape":[{},0],"data_offsets":[0,0]}}}}"#,
                1u64 << 40
            ),
            &[],
        );
        let e = err_of(&huge_dim);
        assert!(
            e.contains("tensor 'z'") && e.contains("above the limit"),
            "{e}"
        );
        // 64 GiB claimed (the check comes before the offsets are compared with the file).
        let n = 1u64 << 36;
        let big = header_file(
            &format!(
                r#"{{"z":{{"dtype":"F32","shape":[{},1024],"data_offsets":[0,{n}]}}}}"#,
                n / 4096
            ),
            &[],
        );
        let e = err_of(&big);
        assert!(e.contains("past the end") || e.contains("limit"), "{e}");
        let zero_product = TensorInfo {
            dtype_name: "F32".into(),
            dtype: Some(DType::F32),
            shape: vec![1 << 31, 1 << 31, 1 << 31, 0],
            begin: 0,
            end: 0,
        };
        assert_eq!(zero_product.numel(), 0);
    }

    #[test]
    fn a_file_changed_after_open_is_an_error_not_a_signal() {
        let dir = std::env::temp_dir().join(format!("rw-st-chg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let vals: Vec<f32> = (0..4096).map(|i| i as f32).collect();
        let outs = [TensorOut {
            name: "t",
            dtype: DType::F32,
            shape: &[4096],
            data: &vals,
        }];
        write(&path, &outs, &BTreeMap::new()).unwrap();
        let f = MappedFile::open(&path).unwrap();
        assert_eq!(f.read("t").unwrap(), vals);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        for e in [
            f.read("t").unwrap_err().to_string(),
            f.check_finite("t").unwrap_err().to_string(),
        ] {
            assert!(
                e.contains("t.safetensors") && e.contains("changed after it was opened"),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn f64_beyond_float32_and_subnormals() {
        let dir = std::env::temp_dir().join(format!("rw-st-f64-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let mut bytes = Vec::new();
        for v in [1.0f64, 1e300, f64::NAN] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut sub = Vec::new();
        for v in [1e-42f32, -1e-45, 1.0] {
            sub.extend_from_slice(&v.to_le_bytes());
        }
        let header = r#"{"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},"s":{"dtype":"F32","shape":[3],"data_offsets":[24,36]}}"#;
        let mut data = bytes.clone();
        data.extend_from_slice(&sub);
        std::fs::write(&path, header_file(header, &data)).unwrap();
        let f = MappedFile::open(&path).unwrap();
        let e = f.check_finite("d").unwrap_err().to_string();
        assert!(
            e.contains("'d'")
                && e.contains("1e300 at flat index 1")
                && e.contains("float32's range"),
            "{e}"
        );
        f.check_finite("s").unwrap();
        assert_eq!(f.read("s").unwrap(), vec![1e-42f32, -1e-45, 1.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dtypes_unknown_and_unsupported() {
        let e = err_of(&header_file(
            r#"{"k":{"dtype":"F12","shape":[1],"data_offsets":[0,2]}}"#,
            &[0; 2],
        ));
        assert!(e.contains("unknown dtype 'F12'"), "{e}");
        let buf = header_file(
            r#"{"k":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}}"#,
            &[0; 2],
        );
        let (t, _) = parse_header(Path::new("x"), &buf).unwrap();
        assert_eq!(t["k"].dtype, None);
    }

    #[test]
    fn first_nonfinite_finds_the_first_bad_value_in_any_block() {
        let f16_bad = |b: [u8; 2]| (u16::from_le_bytes(b) & 0x7C00) == 0x7C00;
        let f64_bad =
            |b: [u8; 8]| (u64::from_le_bytes(b) & 0x7FF0_0000_0000_0000) == 0x7FF0_0000_0000_0000;
        for n in [0usize, 1, 511, 512, 513, 1500] {
            let halves = vec![0x3C00u16; n]; // 1.0
            let bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
            assert_eq!(first_nonfinite(&bytes, f16_bad), None);
            for bad in [0, 510, 511, 512, 1023, 1499] {
                if bad >= n {
                    continue;
                }
                let mut b = bytes.clone();
                b[2 * bad..2 * bad + 2].copy_from_slice(&0x7E00u16.to_le_bytes()); // NaN
                let later = (bad + 700).min(n - 1);
                b[2 * later..2 * later + 2].copy_from_slice(&0xFC00u16.to_le_bytes()); // -Inf
                assert_eq!(first_nonfinite(&b, f16_bad), Some(bad), "n {n}, bad {bad}");
            }
            let doubles: Vec<u8> = (0..n)
                .flat_map(|i| if i == n / 2 { f64::INFINITY } else { i as f64 }.to_le_bytes())
                .collect();
            let want = (n > 0).then_some(n / 2);
            assert_eq!(first_nonfinite(&doubles, f64_bad), want, "n {n}");
        }
    }

    #[test]
    fn write_then_open_round_trips_and_finds_nonfinite() {
        let dir = std::env::temp_dir().join(format!("rw-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let vals = [1.0f32, -2.0, 0.5, f32::NAN];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let outs = [
            TensorOut {
                name: "b",
                dtype: DType::F16,
                shape: &[2, 2],
                data: &vals,
            },
            TensorOut {
                name: "a",
                dtype: DType::BF16,
                shape: &[3],
                data: &vals[..3],
            },
        ];
        write(&path, &outs, &meta).unwrap();
        let f = MappedFile::open(&path).unwrap();
        assert_eq!(f.metadata()["format"], "pt");
        assert_eq!(f.read("a").unwrap(), vec![1.0, -2.0, 0.5]);
        f.check_finite("a").unwrap();
        let e = f.check_finite("b").unwrap_err().to_string();
        assert!(
            e.contains("NaN") && e.contains("index 3") && e.contains("'b'"),
            "{e}"
        );
        assert!(f
            .read("zzz")
            .unwrap_err()
            .to_string()
            .contains("no such tensor"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
