//! The key scheme of a table in Redis: its description (`{prefix}:meta`) and its rows
//! (`{prefix}:{id}`).

use crate::table::ValueType;

pub(super) fn meta_key(prefix: &str) -> String {
    format!("{prefix}:meta")
}

pub(super) fn row_key(prefix: &str, id: u32) -> String {
    format!("{prefix}:{id}")
}

pub(super) fn describe(rows: usize, dim: usize, ty: ValueType) -> String {
    let dtype = if ty == ValueType::F16 { "f16" } else { "f32" };
    format!("hotrow-table v1 rows={rows} dim={dim} dtype={dtype}")
}

/// Parses a table description; `None` if malformed.
pub(super) fn parse_description(text: &str) -> Option<(usize, usize, ValueType)> {
    let mut words = text.split_whitespace();
    if words.next()? != "hotrow-table" || words.next()? != "v1" {
        return None;
    }
    let (mut rows, mut dim, mut ty) = (None, None, None);
    for w in words {
        let (k, v) = w.split_once('=')?;
        match k {
            "rows" => rows = v.parse::<usize>().ok(),
            "dim" => dim = v.parse::<usize>().ok().filter(|&d| d > 0),
            "dtype" => {
                ty = match v {
                    "f32" => Some(ValueType::F32),
                    "f16" => Some(ValueType::F16),
                    _ => None,
                }
            }
            _ => return None,
        }
    }
    let rows = rows?;
    if rows > u32::MAX as usize {
        return None;
    }
    Some((rows, dim?, ty?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_and_refuse_garbage() {
        for ty in [ValueType::F32, ValueType::F16] {
            assert_eq!(parse_description(&describe(123, 7, ty)), Some((123, 7, ty)));
        }
        for bad in [
            "",
            "hotrow-table v2 rows=1 dim=1 dtype=f32",
            "hotrow-table v1 rows=1 dim=0 dtype=f32",
            "hotrow-table v1 rows=x dim=1 dtype=f32",
            "hotrow-table v1 rows=1 dim=1 dtype=bf16",
            "hotrow-table v1 rows=1 dim=1",
            "hotrow-table v1 rows=99999999999 dim=1 dtype=f32",
            "hotrow-table v1 rows=1 dim=1 dtype=f32 extra",
        ] {
            assert_eq!(parse_description(bad), None, "{bad:?}");
        }
    }
}
