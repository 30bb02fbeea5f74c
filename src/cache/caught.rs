//! Calls into code hotrow does not own (row sources, a device's share of a multi-GPU call)
//! with a panic in them caught and turned into a value, so a panicking source fails one
//! call instead of unwinding through the cache.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{HotrowError, Result};

/// `call`, with a panic in it returned as [`HotrowError::RowSourcePanicked`].
pub(crate) fn caught<R>(call: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(call))
        .map_err(|p| HotrowError::RowSourcePanicked(panic_message(&*p)))?
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_with_their_message() {
        let ok = caught(|| Ok(7));
        assert_eq!(ok.unwrap(), 7);
        let err = caught::<()>(|| Err(HotrowError::InvalidArgument("no".into())));
        assert!(matches!(err, Err(HotrowError::InvalidArgument(_))));
        let text = caught::<()>(|| panic!("row {} is gone", 3));
        assert!(matches!(text, Err(HotrowError::RowSourcePanicked(m)) if m == "row 3 is gone"));
        let fixed = caught::<()>(|| panic!("fixed text"));
        assert!(matches!(fixed, Err(HotrowError::RowSourcePanicked(m)) if m == "fixed text"));
        let other = caught::<()>(|| std::panic::panic_any(5u8));
        assert!(
            matches!(other, Err(HotrowError::RowSourcePanicked(m)) if m.contains("without a message"))
        );
    }
}
