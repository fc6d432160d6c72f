//! Write-buffer water marks, the same for every transport.
//!
//! Above the high mark a transport calls its protocol's `pause_writing()`;
//! once the buffer drains to the low mark (pipes: to empty, as asyncio's
//! pipes do) it calls `resume_writing()`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyInt;

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

/// A water mark as `set_write_buffer_limits` receives it: asyncio takes any
/// number (a float such as `1e6` too), and checks it only by comparing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WaterMark {
    Int(i128),
    Float(f64),
}

impl<'a, 'py> FromPyObject<'a, 'py> for WaterMark {
    type Error = PyErr;

    fn extract(value: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(int) = value.cast::<PyInt>() {
            // Past i128 the mark is as good as infinite (or negative).
            return Ok(Self::Int(int.extract::<i128>().unwrap_or_else(|_| {
                if int.lt(0).unwrap_or(false) {
                    i128::MIN / 8
                } else {
                    i128::MAX / 8
                }
            })));
        }
        Ok(Self::Float(value.extract::<f64>()?))
    }
}

impl WaterMark {
    fn as_f64(self) -> f64 {
        match self {
            Self::Int(int) => int as f64,
            Self::Float(float) => float,
        }
    }

    /// Python's `4 * mark`.
    fn times_four(self) -> Self {
        match self {
            Self::Int(int) => Self::Int(int * 4),
            Self::Float(float) => Self::Float(float * 4.0),
        }
    }

    /// Python's `mark // 4` (floor division; `inf // 4` is nan).
    fn quarter(self) -> Self {
        match self {
            Self::Int(int) => Self::Int(int.div_euclid(4)),
            Self::Float(float) if float.is_infinite() => Self::Float(f64::NAN),
            Self::Float(float) => Self::Float((float / 4.0).floor()),
        }
    }

    /// Python's `self >= other` (false whenever a nan is involved).
    fn at_least(self, other: Self) -> bool {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a >= b,
            _ => self.as_f64() >= other.as_f64(),
        }
    }

    /// The byte count a buffer size is compared with: a fractional mark
    /// compares like its floor, an infinite one like no limit.
    fn bytes(self) -> usize {
        match self {
            Self::Int(int) => usize::try_from(int).unwrap_or(usize::MAX),
            Self::Float(float) => float.floor() as usize, // saturating; >= 0 here
        }
    }

    /// As Python's repr shows it, for the error message.
    fn describe(self) -> String {
        match self {
            Self::Int(int) => int.to_string(),
            Self::Float(float) if float.is_nan() => "nan".to_owned(),
            Self::Float(float) => format!("{float:?}"),
        }
    }
}

/// `(high, low)` for `set_write_buffer_limits(high, low)`, with asyncio's
/// defaults (a missing mark derives from the other, factor 4) and its error.
pub fn water_marks(high: Option<WaterMark>, low: Option<WaterMark>) -> PyResult<(usize, usize)> {
    let default_high = WaterMark::Int(DEFAULT_HIGH_WATER as i128);
    let high = match (high, low) {
        (Some(high), _) => high,
        (None, Some(low)) => low.times_four(),
        (None, None) => default_high,
    };
    let low = low.unwrap_or_else(|| high.quarter());
    if !(high.at_least(low) && low.at_least(WaterMark::Int(0))) {
        return Err(PyValueError::new_err(format!(
            "high ({}) must be >= low ({}) must be >= 0",
            high.describe(),
            low.describe()
        )));
    }
    Ok((high.bytes(), low.bytes()))
}
