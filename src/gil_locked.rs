//! State that only threads holding the GIL touch, with the GIL as its lock.
//!
//! The loop's ready queue, its handle pool and a transport's buffers are
//! read and written by Python-facing code only: every caller holds the GIL,
//! so a second, real lock serialises nothing the GIL does not already, yet
//! costs two atomic read-modify-write instructions per use. A busy
//! iteration took seven such locks, a `call_soon` two (docs/performance.md:
//! the Future round trip ran 20% faster without them).
//!
//! [`GilLocked::lock`] asks for a [`Python`] token, the proof of holding the
//! GIL, and the guard it returns cannot leave the thread (it is not `Send`),
//! so it cannot be carried into `Python::detach`. What the GIL does not rule
//! out is re-entry on the same thread: code that runs Python while holding
//! a guard (a destructor, a callback) could come back for it. The loop never
//! does that (it would deadlock on a real lock too: see `Garbage` in
//! event_loop.rs), and a flag turns a slip into a panic, which PyO3 reports
//! as an exception, instead of two live mutable references.
//!
//! The module declares that it needs the GIL (`gil_used = true` in lib.rs),
//! so a free-threaded CPython turns its GIL on when importing it.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use pyo3::gc::PyVisit;
use pyo3::Python;

pub struct GilLocked<T> {
    borrowed: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: every access goes through a guard, and a guard exists only on a
// thread that holds the GIL (`lock` takes a `Python` token, `lock_in_traverse`
// runs inside the collector, which holds it), and is not `Send`. Taking and
// releasing the GIL orders one thread's accesses before the next thread's.
unsafe impl<T: Send> Sync for GilLocked<T> {}

impl<T> GilLocked<T> {
    pub const fn new(value: T) -> Self {
        Self {
            borrowed: Cell::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Exclusive access for as long as the guard lives.
    ///
    /// # Panics
    /// If this thread already holds a guard of this value (see the module
    /// documentation): a bug in the loop, never a user's error.
    #[inline]
    pub fn lock<'py>(&'py self, _py: Python<'py>) -> GilGuard<'py, T> {
        self.acquire()
            .expect("ferroloop: GIL-locked state re-entered")
    }

    /// For `__clear__`: moves out what `take` returns, unless a guard is
    /// live (the collector can start at any allocation, inside code holding
    /// one), and drops it once the guard is gone (a destructor may run
    /// Python code). The collector holds the GIL; attaching only proves it.
    pub fn take_for_clear<R>(&self, take: impl FnOnce(&mut T) -> R) {
        Python::attach(|_py| {
            let taken = self.acquire().map(|mut guard| take(&mut guard));
            drop(taken);
        });
    }

    /// For `__traverse__`, which may not use the Python API (so has no
    /// token) but runs with the GIL held; None if a guard is live, as when
    /// the collector runs inside code holding one.
    pub fn lock_in_traverse<'a>(&'a self, _visit: &PyVisit<'a>) -> Option<GilGuard<'a, T>> {
        self.acquire()
    }

    /// A guard, or None if one is live. Callers prove they hold the GIL.
    #[inline]
    fn acquire(&self) -> Option<GilGuard<'_, T>> {
        if self.borrowed.replace(true) {
            return None;
        }
        Some(GilGuard {
            owner: self,
            not_send: PhantomData,
        })
    }
}

impl<T: Default> Default for GilLocked<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

pub struct GilGuard<'a, T> {
    owner: &'a GilLocked<T>,
    /// A raw pointer is neither `Send` nor `Sync`: the guard stays on the
    /// thread that holds the GIL.
    not_send: PhantomData<*mut ()>,
}

impl<T> Deref for GilGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (the flag), on a GIL holder.
        unsafe { &*self.owner.value.get() }
    }
}

impl<T> DerefMut for GilGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` keeps this borrow unique.
        unsafe { &mut *self.owner.value.get() }
    }
}

impl<T> Drop for GilGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.owner.borrowed.set(false);
    }
}
