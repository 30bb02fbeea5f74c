//! [`RowLayout`]: the one description of a row that buffers, ops and shaders share: how
//! many values, how they are stored ([`RowFormat`]), and the WGSL that reads them.

use super::int8::quantize_row;
use crate::error::{HotrowError, Result};

/// How the values of a row are stored on the GPU. Kernels always compute in f32; compact
/// formats are decoded as rows are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RowFormat {
    /// 4 bytes per value.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes per value (rows padded to whole 4-byte words).
    F16,
    /// 8-bit row-wise quantization, as FBGEMM's fused 8-bit row-wise format: one byte per
    /// value `q` (0..=255) and, per row, an f32 scale and bias: value = `q * scale + bias`,
    /// with `bias` the row's minimum and `scale` its range / 255, so every value is within
    /// `scale / 2` of the original (1 byte per value + 8 per row, rows padded to 4 bytes).
    /// [`RowLayout::encode_rows`] says exactly where that bound holds (extreme and
    /// non-finite rows).
    Int8,
}

/// WGSL declarations of the element a thread works on (`Elem`: `vec4<f32>` or `f32`, with
/// `ELEM_LANES` and `elem_lane(v, c)`), the storage type of a rows binding (`RowWord`) and
/// `load_row(row, c, width)`: element `c` of row `row` of the binding `rows`, whose rows
/// hold `width` elements, decoded to f32. `$rows` is the storage type, `$load` the body.
macro_rules! wgsl_rows {
    (vec4, $word:literal, $load:literal) => {
        concat!(
            "alias Elem = vec4<f32>;\nconst ELEM_LANES: u32 = 4u;\n",
            "fn elem_lane(v: Elem, c: u32) -> f32 { return v[c]; }\n",
            "alias RowWord = ",
            $word,
            ";\nfn load_row(row: u32, c: u32, width: u32) -> Elem {\n",
            $load,
            "\n}\n"
        )
    };
    (scalar, $word:literal, $load:literal) => {
        concat!(
            "alias Elem = f32;\nconst ELEM_LANES: u32 = 1u;\n",
            "fn elem_lane(v: Elem, c: u32) -> f32 { return v; }\n",
            "alias RowWord = ",
            $word,
            ";\nfn load_row(row: u32, c: u32, width: u32) -> Elem {\n",
            $load,
            "\n}\n"
        )
    };
}
pub(crate) use wgsl_rows;

/// The row prefix of each format, as a literal (so kernels can `concat!` more onto it).
macro_rules! row_prefix {
    (F32_V4) => {
        $crate::gpu::wgsl_rows!(vec4, "vec4<f32>", "return rows[row * width + c];")
    };
    (F32_S) => {
        $crate::gpu::wgsl_rows!(scalar, "f32", "return rows[row * width + c];")
    };
    // f16 rows packed two to a word, decoded with integer operations (exact everywhere:
    // `unpack2x16float` needs a downlevel flag some drivers lack, and may flush subnormals).
    (F16_V4) => {
        concat!(
            $crate::gpu::row_prefix!(F16_BITS),
            $crate::gpu::wgsl_rows!(
                vec4,
                "u32",
                "let w = row * 2u * width + 2u * c;\nlet a = rows[w];\nlet b = rows[w + 1u];\nreturn vec4<f32>(f16_bits(a & 0xffffu), f16_bits(a >> 16u), f16_bits(b & 0xffffu), f16_bits(b >> 16u));"
            )
        )
    };
    (F16_S) => {
        concat!(
            $crate::gpu::row_prefix!(F16_BITS),
            $crate::gpu::wgsl_rows!(
                scalar,
                "u32",
                "let w = rows[row * ((width + 1u) / 2u) + c / 2u];\nreturn f16_bits((w >> (16u * (c & 1u))) & 0xffffu);"
            )
        )
    };
    // The f32 value of the IEEE binary16 whose bits are the low 16 of `h`.
    (F16_BITS) => {
        "fn f16_bits(h: u32) -> f32 {\n    let sign = (h & 0x8000u) << 16u;\n    let e = (h >> 10u) & 0x1fu;\n    let m = h & 0x3ffu;\n    if (e == 0u) {\n        let v = f32(m) * 5.9604645e-8;\n        return select(v, -v, sign != 0u);\n    }\n    if (e == 31u) {\n        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));\n    }\n    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));\n}\n"
    };
    // f16 rows read as `f16` where the adapter has `shader-f16` (`enable f16`).
    (F16_NATIVE_V4) => {
        concat!(
            "enable f16;\n",
            $crate::gpu::wgsl_rows!(vec4, "vec4<f16>", "return vec4<f32>(rows[row * width + c]);")
        )
    };
    (F16_NATIVE_S) => {
        concat!(
            "enable f16;\n",
            $crate::gpu::wgsl_rows!(
                scalar,
                "f16",
                "return f32(rows[row * (width + (width & 1u)) + c]);"
            )
        )
    };
    // int8 rows: the quantized bytes four to a word, then the row's scale and bias as bits.
    (INT8_V4) => {
        $crate::gpu::wgsl_rows!(
            vec4,
            "u32",
            "let base = row * (width + 2u);\nlet w = rows[base + c];\nlet q = vec4<f32>(f32(w & 0xffu), f32((w >> 8u) & 0xffu), f32((w >> 16u) & 0xffu), f32(w >> 24u));\nreturn q * bitcast<f32>(rows[base + width]) + bitcast<f32>(rows[base + width + 1u]);"
        )
    };
    (INT8_S) => {
        $crate::gpu::wgsl_rows!(
            scalar,
            "u32",
            "let words = (width + 3u) / 4u;\nlet base = row * (words + 2u);\nlet q = f32((rows[base + c / 4u] >> (8u * (c & 3u))) & 0xffu);\nreturn q * bitcast<f32>(rows[base + words]) + bitcast<f32>(rows[base + words + 1u]);"
        )
    };
    // f32 rows followed by their optimizer state (training): one Elem of state after each
    // row, so a row is `width + 1` Elems apart (4 words of state room when read as vec4,
    // else 1; a scalar read of a row whose dim is a multiple of 4 keeps the vec4 layout's
    // 4 words, so both reads agree on where rows start).
    (F32_STATE_V4) => {
        $crate::gpu::wgsl_rows!(vec4, "vec4<f32>", "return rows[row * (width + 1u) + c];")
    };
    (F32_STATE_S) => {
        $crate::gpu::wgsl_rows!(
            scalar,
            "f32",
            "return rows[row * (width + select(1u, 4u, (width & 3u) == 0u)) + c];"
        )
    };
    // f32 rows followed by two values of state per value (Adam's moments): rows `3 width`
    // Elems apart, read as vec4 or one value at a time.
    (F32_MOMENTS_V4) => {
        $crate::gpu::wgsl_rows!(vec4, "vec4<f32>", "return rows[row * (3u * width) + c];")
    };
    (F32_MOMENTS_S) => {
        $crate::gpu::wgsl_rows!(scalar, "f32", "return rows[row * (3u * width) + c];")
    };
    // Raw 4-byte words (moving compact rows between buffers unchanged).
    (RAW_WORDS) => {
        "alias Elem = u32;\nconst ELEM_LANES: u32 = 1u;\nfn elem_lane(v: Elem, c: u32) -> f32 { return bitcast<f32>(v); }\nalias RowWord = u32;\nfn load_row(row: u32, c: u32, width: u32) -> Elem { return rows[row * width + c]; }\n"
    };
    // A second, plain f32 operand (block_matmul's A): `AElem`, `AELEM_LANES`, `aelem_lane`.
    (A_VEC4) => {
        "alias AElem = vec4<f32>;\nconst AELEM_LANES: u32 = 4u;\nfn aelem_lane(v: AElem, c: u32) -> f32 { return v[c]; }\n"
    };
    (A_F32) => {
        "alias AElem = f32;\nconst AELEM_LANES: u32 = 1u;\nfn aelem_lane(v: AElem, c: u32) -> f32 { return v; }\n"
    };
}
pub(crate) use row_prefix;

pub(crate) const F32_V4: &str = row_prefix!(F32_V4);
pub(crate) const F32_S: &str = row_prefix!(F32_S);
pub(crate) const F16_V4: &str = row_prefix!(F16_V4);
pub(crate) const F16_S: &str = row_prefix!(F16_S);
pub(crate) const F16_NATIVE_V4: &str = row_prefix!(F16_NATIVE_V4);
pub(crate) const F16_NATIVE_S: &str = row_prefix!(F16_NATIVE_S);
pub(crate) const INT8_V4: &str = row_prefix!(INT8_V4);
pub(crate) const INT8_S: &str = row_prefix!(INT8_S);
pub(crate) const RAW_WORDS: &str = row_prefix!(RAW_WORDS);
pub(crate) const F32_STATE_V4: &str = row_prefix!(F32_STATE_V4);
pub(crate) const F32_STATE_S: &str = row_prefix!(F32_STATE_S);
pub(crate) const F32_MOMENTS_V4: &str = row_prefix!(F32_MOMENTS_V4);
pub(crate) const F32_MOMENTS_S: &str = row_prefix!(F32_MOMENTS_S);

/// Every row prefix a kernel that decodes rows is compiled with, indexed by
/// [`RowLayout::prefix_index`].
pub(crate) const ROW_PREFIXES: &[&str] = &[
    F32_V4,
    F32_S,
    F16_V4,
    F16_S,
    F16_NATIVE_V4,
    F16_NATIVE_S,
    INT8_V4,
    INT8_S,
    F32_STATE_V4,
    F32_STATE_S,
    F32_MOMENTS_V4,
    F32_MOMENTS_S,
];

/// [`ROW_PREFIXES`] and [`RAW_WORDS`]: the prefixes of copy_rows.wgsl.
pub(crate) const COPY_PREFIXES: &[&str] = &[
    F32_V4,
    F32_S,
    F16_V4,
    F16_S,
    F16_NATIVE_V4,
    F16_NATIVE_S,
    INT8_V4,
    INT8_S,
    F32_STATE_V4,
    F32_STATE_S,
    F32_MOMENTS_V4,
    F32_MOMENTS_S,
    RAW_WORDS,
];

/// How one row is stored: `dim` values in a [`RowFormat`], read by kernels
/// `vector_width()` values at a time (whole `vec4`s when `dim` is a multiple of 4).
///
/// ```
/// use hotrow::{RowFormat, RowLayout};
/// let l = RowLayout::f32(130).unwrap();
/// assert_eq!((l.dim(), l.row_bytes(), l.vector_width()), (130, 520, 1));
/// assert_eq!(RowLayout::f32(128).unwrap().vector_width(), 4);
/// assert_eq!(RowLayout::new(128, RowFormat::F16).unwrap().row_bytes(), 256);
/// assert_eq!(RowLayout::new(128, RowFormat::Int8).unwrap().row_bytes(), 136);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowLayout {
    dim: usize,
    format: RowFormat,
    /// f16 rows read as WGSL `f16` (the adapter has `shader-f16`); else unpacked from words.
    native_f16: bool,
    /// Kernels may read whole `vec4`s (when `dim % 4 == 0`); off where an op's output
    /// columns are not 4-aligned (table-batched bags of mixed widths).
    vec4: bool,
    /// f32 rows followed by this many values of optimizer state ([`RowLayout::with_state`]).
    state: u32,
}

impl RowLayout {
    /// Rows of `dim` f32 values; `dim` must be at least 1.
    pub fn f32(dim: usize) -> Result<Self> {
        Self::new(dim, RowFormat::F32)
    }

    /// Rows of `dim` values stored as `format`; `dim` must be at least 1.
    pub fn new(dim: usize, format: RowFormat) -> Result<Self> {
        if dim == 0 {
            return Err(HotrowError::InvalidArgument(
                "dim must be at least 1".into(),
            ));
        }
        Ok(Self {
            dim,
            format,
            native_f16: false,
            vec4: true,
            state: 0,
        })
    }

    /// The same f32 layout with room for `values` of optimizer state after each row
    /// (training): one value (a row-wise accumulator) takes 4 words when `dim % 4 == 0`
    /// (rows stay 16-byte aligned), else 1; two a value (`2 dim`: Adam's moments) take
    /// `2 dim`. Kernels read the values as before; the state travels with the row wherever
    /// rows are moved as words.
    pub(crate) fn with_state(self, values: usize) -> Self {
        debug_assert_eq!(self.format, RowFormat::F32, "state rides on f32 rows only");
        debug_assert!(
            values <= 1 || values == 2 * self.dim,
            "state of {values} values"
        );
        Self {
            state: if self.format == RowFormat::F32 {
                values as u32
            } else {
                0
            },
            ..self
        }
    }

    /// Whether each row carries optimizer state after its values.
    pub(crate) fn has_state(&self) -> bool {
        self.state > 0
    }

    /// Values of optimizer state each row carries.
    pub(crate) fn state_values(&self) -> usize {
        self.state as usize
    }

    /// Words of optimizer-state room after each row (0 without state).
    pub(crate) fn state_words(&self) -> usize {
        match (self.state, self.dim % 4) {
            (0, _) => 0,
            (1, 0) => 4,
            (1, _) => 1,
            (n, _) => n as usize,
        }
    }

    /// The same layout, read one value at a time by kernels (never as `vec4`s).
    pub(crate) fn scalar(self) -> Self {
        Self {
            vec4: false,
            ..self
        }
    }

    /// The same layout, with f16 rows read as WGSL `f16` when `native` (the device must have
    /// `wgpu::Features::SHADER_F16`).
    pub(crate) fn with_native_f16(self, native: bool) -> Self {
        Self {
            native_f16: native && self.format == RowFormat::F16,
            ..self
        }
    }

    /// Whether f16 rows are read as WGSL `f16`.
    pub fn native_f16(&self) -> bool {
        self.native_f16
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// How the values are stored.
    pub fn format(&self) -> RowFormat {
        self.format
    }

    /// 4-byte words of one stored row.
    pub fn words_per_row(&self) -> usize {
        match self.format {
            RowFormat::F32 => self.dim + self.state_words(),
            RowFormat::F16 => self.dim.div_ceil(2),
            RowFormat::Int8 => self.dim.div_ceil(4) + 2,
        }
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> u64 {
        self.words_per_row() as u64 * 4
    }

    /// Bytes of `rows` rows.
    pub fn bytes(&self, rows: usize) -> u64 {
        rows as u64 * self.row_bytes()
    }

    /// Values a kernel reads at once: 4 when `dim % 4 == 0` (whole `vec4`s), else 1.
    pub fn vector_width(&self) -> usize {
        if self.vec4 && self.dim.is_multiple_of(4) {
            4
        } else {
            1
        }
    }

    /// Kernel elements per row (`dim / vector_width()`).
    pub fn width(&self) -> u32 {
        (self.dim / self.vector_width()) as u32
    }

    /// Encodes whole rows of f32 `values` (`dim` each) into `out`, `words_per_row()` words
    /// per row, as the GPU stores them: f32 bits; f16 pairs (element `2i` in the low half of
    /// word `i`, rounded to nearest even, a row of odd dim padded with 0); int8 bytes (element
    /// `4i + b` in byte `b` of word `i`) then the row's scale and bias as f32 bits.
    ///
    /// int8: `bias` is the row's minimum, `scale` its range / 255 rounded up to an f32,
    /// `q = round((x - bias) / scale)`, decoded as `q * scale + bias`. Every value of a
    /// finite row decodes within `scale / 2` of itself plus the rounding of that f32
    /// multiply-add (an ulp of the larger of `|x|` and `|bias|`), subnormal rows included,
    /// as long as the range is at most `255 * scale_max` (about `f32::MAX`, `scale_max`
    /// the largest scale whose `255 * scale` is finite). A wider row (values of both signs
    /// beyond about `f32::MAX / 2`) saturates: its scale is `scale_max`, so that no decode
    /// overflows, and values above `bias + 255 * scale_max` decode to that. On the GPU the
    /// same multiply-add may be fused, and may flush subnormal values to zero (WGSL allows
    /// it; NVIDIA's Vulkan driver does): a kernel's decoded value can then differ from this
    /// CPU decode by up to `f32::MIN_POSITIVE` (1.2e-38) more. A constant
    /// row decodes exactly, the sign of a zero included (its scale is a zero of the same
    /// sign). A row with a NaN or an infinity gets a NaN scale and bias: decoded, all its
    /// values are NaN.
    ///
    /// ```
    /// use hotrow::{RowFormat, RowLayout};
    /// let l = RowLayout::new(3, RowFormat::Int8).unwrap();
    /// let x = [0.5f32, -1.0, 2.0];
    /// let mut words = vec![0u32; l.words_per_row()];
    /// l.encode_rows(&x, &mut words);
    /// let mut back = [0f32; 3];
    /// l.decode_rows(&words, &mut back);
    /// let scale = 3.0 / 255.0;
    /// assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() <= scale / 2.0 + 1e-6));
    /// ```
    pub fn encode_rows(&self, values: &[f32], out: &mut [u32]) {
        let (dim, words) = (self.dim, self.words_per_row());
        let rows = values.chunks_exact(dim).zip(out.chunks_exact_mut(words));
        match self.format {
            RowFormat::F32 => {
                for (src, dst) in rows {
                    let (values, state) = dst.split_at_mut(dim);
                    for (d, v) in values.iter_mut().zip(src) {
                        *d = v.to_bits();
                    }
                    // (a fresh row's optimizer state starts at 0)
                    state.fill(0);
                }
            }
            RowFormat::F16 if cfg!(target_endian = "little") => {
                use half::slice::HalfFloatSliceExt;
                for (src, dst) in rows {
                    // On a little-endian host, word i holding element 2i in its low half is
                    // the f16 array itself: convert straight into it (vectorised by `half`).
                    let halves: &mut [half::f16] = bytemuck::cast_slice_mut(dst);
                    halves[..dim].convert_from_f32_slice(src);
                    if dim % 2 == 1 {
                        halves[dim] = half::f16::ZERO;
                    }
                }
            }
            RowFormat::F16 => {
                for (src, dst) in rows {
                    for (d, pair) in dst.iter_mut().zip(src.chunks(2)) {
                        let lo = half::f16::from_f32(pair[0]).to_bits() as u32;
                        let hi = pair.get(1).map_or(0, |&v| half::f16::from_f32(v).to_bits());
                        *d = lo | (hi as u32) << 16;
                    }
                }
            }
            RowFormat::Int8 => {
                for (src, dst) in rows {
                    let (q, tail) = dst.split_at_mut(words - 2);
                    let (scale, bias) = quantize_row(src, q);
                    tail[0] = scale.to_bits();
                    tail[1] = bias.to_bits();
                }
            }
        }
    }

    /// Decodes whole stored rows (`words_per_row()` words each) into f32 values, as the
    /// kernels do: the CPU reference of what the GPU reads.
    pub fn decode_rows(&self, words: &[u32], out: &mut [f32]) {
        let (dim, n) = (self.dim, self.words_per_row());
        for (src, dst) in words.chunks_exact(n).zip(out.chunks_exact_mut(dim)) {
            for (c, d) in dst.iter_mut().enumerate() {
                *d = match self.format {
                    RowFormat::F32 => f32::from_bits(src[c]),
                    RowFormat::F16 => {
                        half::f16::from_bits((src[c / 2] >> (16 * (c % 2))) as u16).to_f32()
                    }
                    RowFormat::Int8 => {
                        let q = (src[c / 4] >> (8 * (c % 4))) & 0xff;
                        let (scale, bias) =
                            (f32::from_bits(src[n - 2]), f32::from_bits(src[n - 1]));
                        q as f32 * scale + bias
                    }
                };
            }
        }
    }

    /// The WGSL prefix declaring how kernels read rows of this layout.
    pub(crate) fn elem_prefix(&self) -> &'static str {
        ROW_PREFIXES[self.prefix_index()]
    }

    /// Index of [`RowLayout::elem_prefix`] in [`ROW_PREFIXES`].
    pub(crate) fn prefix_index(&self) -> usize {
        let scalar = usize::from(self.vector_width() != 4);
        let format = match (self.format, self.native_f16) {
            (RowFormat::F32, _) if self.state > 1 => 5,
            (RowFormat::F32, _) if self.state == 1 => 4,
            (RowFormat::F32, _) => 0,
            (RowFormat::F16, false) => 1,
            (RowFormat::F16, true) => 2,
            (RowFormat::Int8, _) => 3,
        };
        2 * format + scalar
    }
}
