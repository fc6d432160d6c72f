//! Write-buffer water marks, the same for every transport.
//!
//! Above the high mark a transport calls its protocol's `pause_writing()`;
//! once the buffer drains to the low mark (pipes: to empty, as asyncio's
//! pipes do) it calls `resume_writing()`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// asyncio's default high water mark; the low one is a quarter of it.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// The check a transport makes after its buffer grew or its marks changed:
/// true, once, when `buffered` went over `high` and the protocol must be
/// paused (`paused` records that it is).
pub fn crossed_high_water(paused: &mut bool, buffered: usize, high: usize) -> bool {
    if *paused || buffered <= high {
        return false;
    }
    *paused = true;
    true
}

/// `(high, low)` for `set_write_buffer_limits(high, low)`, with asyncio's
/// defaults (a missing mark derives from the other, factor 4) and its error.
pub fn water_marks(high: Option<i64>, low: Option<i64>) -> PyResult<(usize, usize)> {
    let default_high = DEFAULT_HIGH_WATER as i64;
    let (high, low) = match (high, low) {
        (None, None) => (default_high, default_high / 4),
        (None, Some(low)) => (4 * low, low),
        // Python's floor division, as asyncio computes `high // 4`.
        (Some(high), None) => (high, high.div_euclid(4)),
        (Some(high), Some(low)) => (high, low),
    };
    if !(high >= low && low >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high as usize, low as usize))
}
