//! Large arrays the simulator reaches at random, backed by huge pages where the kernel
//! offers them on request.
//!
//! A 100,000-node run reaches tens of megabytes at random: with 4 KiB pages nearly every
//! access also misses the TLB and walks the page tables. Transparent huge pages (2 MiB)
//! let the TLB cover the whole array. Where the kernel backs memory with them only on
//! request (`madvise`, a common default), the array asks for them before its first
//! touch; elsewhere the advice is ignored and nothing changes but speed.

/// Arrays smaller than this stay on small pages.
const WORTH_FROM: usize = 4 << 20;

/// `len` copies of `value`, in memory advised to be backed by huge pages.
pub(super) fn huge_vec<T: Clone>(len: usize, value: T) -> Vec<T> {
    huge_collect(len, std::iter::repeat_n(value, len))
}

/// The items of `iter` (exactly `len` of them), in memory advised as [`huge_vec`]'s.
pub(super) fn huge_collect<T>(len: usize, iter: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut items = Vec::with_capacity(len);
    advise(items.as_ptr(), len * std::mem::size_of::<T>());
    items.extend(iter);
    items
}

#[cfg(target_os = "linux")]
fn advise<T>(start: *const T, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < WORTH_FROM {
        return;
    }
    let first = (start as usize).next_multiple_of(HUGE);
    let end = (start as usize + bytes) / HUGE * HUGE;
    if end > first {
        // SAFETY: the range lies inside the vector's allocation; the advice changes how
        // its pages are backed, never their contents.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise<T>(_start: *const T, _bytes: usize) {}
