//! [`RowLayout`]: the one description of a row that buffers, ops and shaders share.

use crate::error::{HotrowError, Result};

/// WGSL declarations of an element type `$ty` read 4 values at a time: the alias, its lane
/// count `$lanes`, and `$lane(v, c)`, lane `c` as f32.
macro_rules! wgsl_vec4_elem {
    ($ty:literal, $lanes:literal, $lane:literal) => {
        concat!(
            "alias ",
            $ty,
            " = vec4<f32>;\nconst ",
            $lanes,
            ": u32 = 4u;\nfn ",
            $lane,
            "(v: ",
            $ty,
            ", c: u32) -> f32 { return v[c]; }\n"
        )
    };
}

/// As [`wgsl_vec4_elem`], for an element of one f32.
macro_rules! wgsl_f32_elem {
    ($ty:literal, $lanes:literal, $lane:literal) => {
        concat!(
            "alias ",
            $ty,
            " = f32;\nconst ",
            $lanes,
            ": u32 = 1u;\nfn ",
            $lane,
            "(v: ",
            $ty,
            ", c: u32) -> f32 { return v; }\n"
        )
    };
}
pub(crate) use {wgsl_f32_elem, wgsl_vec4_elem};

/// The element type `Elem` that kernels read rows in (`ELEM_LANES`, `elem_lane`).
const ELEM_VEC4: &str = wgsl_vec4_elem!("Elem", "ELEM_LANES", "elem_lane");
const ELEM_F32: &str = wgsl_f32_elem!("Elem", "ELEM_LANES", "elem_lane");

/// Every element prefix a row layout can give (for the shader validation tests).
pub(crate) const ELEM_PREFIXES: &[&str] = &[ELEM_VEC4, ELEM_F32];

/// How one row is stored: `dim` values of `value_bytes()` bytes each, read by kernels
/// `vector_width()` values at a time (whole `vec4`s when `dim` is a multiple of 4).
///
/// ```
/// let l = hotrow::RowLayout::f32(130).unwrap();
/// assert_eq!((l.dim(), l.row_bytes(), l.vector_width()), (130, 520, 1));
/// assert_eq!(hotrow::RowLayout::f32(128).unwrap().vector_width(), 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowLayout {
    dim: usize,
}

impl RowLayout {
    /// Rows of `dim` f32 values; `dim` must be at least 1.
    pub fn f32(dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(HotrowError::InvalidArgument(
                "dim must be at least 1".into(),
            ));
        }
        Ok(Self { dim })
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes of one value.
    pub fn value_bytes(&self) -> usize {
        4
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        (self.dim * self.value_bytes()) as u64
    }

    /// Bytes of `rows` rows.
    pub fn bytes(&self, rows: usize) -> u64 {
        rows as u64 * self.row_bytes()
    }

    /// Values a kernel reads at once: 4 when `dim % 4 == 0` (whole `vec4`s), else 1.
    pub fn vector_width(&self) -> usize {
        if self.dim.is_multiple_of(4) {
            4
        } else {
            1
        }
    }

    /// Kernel elements per row (`dim / vector_width()`).
    pub fn width(&self) -> u32 {
        (self.dim / self.vector_width()) as u32
    }

    /// The WGSL prefix declaring this layout's element type.
    pub(crate) fn elem_prefix(&self) -> &'static str {
        if self.vector_width() == 4 {
            ELEM_VEC4
        } else {
            ELEM_F32
        }
    }
}
