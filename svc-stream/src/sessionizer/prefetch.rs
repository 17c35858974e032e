//! A cache prefetch hint: the one `unsafe` of the sessionizer. The push looks
//! ahead in its batch and asks for the memory the next heartbeats will touch.
//! A prefetch rather than a load: a load stalls retirement until its line
//! arrives, so a group of them overlaps only as far as the reorder buffer
//! reaches; a prefetch retires at once. It never faults, whatever the address.
#![allow(unsafe_code)]

/// Asks for the cache line holding `address` (a hint; does nothing where the
/// target has no prefetch instruction).
#[inline(always)]
pub(super) fn line<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads no memory architecturally and cannot fault, for
    // any address; SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Asks for every cache line of `bytes` bytes from `address`.
#[inline(always)]
pub(super) fn lines<T>(address: *const T, bytes: usize) {
    let start = address.cast::<u8>();
    let mut offset = 0;
    while offset < bytes {
        line(start.wrapping_add(offset));
        offset += 64;
    }
    line(start.wrapping_add(bytes.saturating_sub(1)));
}
