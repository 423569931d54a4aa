//! A value one thread at a time may hold, taken with one compare-and-swap and given back with a
//! plain store: the client's connection slots, taken and given back once per call.
//!
//! A `std::sync::Mutex` gives its lock back with an atomic swap, to learn whether anyone sleeps
//! on it. On x86 that is a locked instruction, which waits for the store buffer to drain: on an
//! rpc call's critical path it cost about as much as the claim word's compare-and-swap. Nobody
//! sleeps on an [`Exclusive`] itself: a caller that finds every slot taken sleeps elsewhere (the
//! client's condition variable) after saying so in a counter. Dropping a [`Held`] gives the value
//! back, then issues [`barrier::light`], so whoever drops it may then read that counter: with the
//! sleeper's [`barrier::heavy`] between its count and its last look, that is Dekker's pattern, and
//! a slot given back is either seen by the sleeper's last look, or its giver sees the sleeper.
//!
//! There is no poisoning: the holder of a [`Held`] decides what a panic leaves behind (the client
//! drops the connection of a call that panicked).

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use super::barrier;

/// A `T` that at most one [`Held`] reaches at a time.
#[derive(Debug)]
pub(crate) struct Exclusive<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a `Held`, and at most one `Held` exists at a time
// (`try_take`'s compare-and-swap), so sharing an `Exclusive` between threads hands the `T` from
// one thread to another, never to two at once: what `T: Send` allows.
unsafe impl<T: Send> Sync for Exclusive<T> {}

impl<T> Exclusive<T> {
    pub(crate) const fn new(value: T) -> Self {
        Exclusive {
            held: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, unless another thread holds it.
    #[inline]
    pub(crate) fn try_take(&self) -> Option<Held<'_, T>> {
        // SYNC POINT: Acquire, pairs with the Release store in `Held::drop`: what the last holder
        // did to the value happens-before our use of it.
        let taken = self
            .held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        // Built only when taken: dropping a `Held` gives the value back, even one never used.
        taken.then(|| Held {
            cell: self,
            _value: PhantomData,
        })
    }
}

/// The one thread's hold on an [`Exclusive`]'s value; dropping it gives the value back, then
/// issues [`barrier::light`] (see the module doc).
#[derive(Debug)]
pub(crate) struct Held<'a, T> {
    cell: &'a Exclusive<T>,
    /// Shared between threads only where `&mut T` may be (`T: Sync` for `Sync`), unlike the
    /// `&Exclusive` alone, which would make it `Sync` for any `T: Send`.
    _value: PhantomData<&'a mut T>,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // `try_take` set `held` from false to true, and only our drop sets it back.
        // SAFETY: this `Held` is the only one, so nothing else references the value meanwhile.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `self` is borrowed uniquely, so this is the only reference.
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T> Drop for Held<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SYNC POINT: Release, pairs with the Acquire compare-and-swap in `try_take`.
        self.cell.held.store(false, Ordering::Release);
        // SYNC POINT: pairs with the heavy barrier of a caller about to sleep until a value is
        // given back (see the module doc): with it, our store above and the giver's next load
        // (its look at who sleeps) act as if a full barrier stood between them. Here it may be a
        // compiler fence only: the sleeper's membarrier then supplies the hardware barrier on
        // our CPU (`platform::barrier`).
        barrier::light();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_holder_at_a_time() {
        let cell = Exclusive::new(5);
        let mut held = cell.try_take().expect("free");
        assert!(cell.try_take().is_none());
        // A failed take gives nothing back (it once dropped a `Held` it had built anyway).
        assert!(cell.try_take().is_none());
        *held += 1;
        drop(held);
        assert_eq!(*cell.try_take().expect("given back"), 6);
    }

    #[test]
    fn threads_never_hold_it_together() {
        let cell = Arc::new(Exclusive::new((0u64, false)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 20_000 {
                        let Some(mut held) = cell.try_take() else {
                            std::hint::spin_loop();
                            continue;
                        };
                        assert!(!held.1, "two holders at once");
                        held.1 = true;
                        held.0 += 1;
                        held.1 = false;
                        done += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no holder panicked");
        }
        assert_eq!(cell.try_take().expect("threads gone").0, 80_000);
    }
}
