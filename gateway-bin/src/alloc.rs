//! The global allocator of the `gateway` binary (the default `mimalloc` feature): mimalloc,
//! asked for plain blocks whenever plain blocks already have the alignment asked for.
//!
//! The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`. In mimalloc 3
//! that call takes its fast path only when a free block of the size happens to be aligned, and
//! otherwise over-allocates (size + alignment - 1, one size class up) unless the size class is
//! a power of two: a 72- or 3,600-byte box with 8-byte alignment pays the slow path and a
//! bigger block. mimalloc's size classes are multiples of 8 (of 16 above 16 bytes) and a page's
//! first block is 16-aligned, so a block of a size that is a multiple of an alignment up to 16
//! is aligned already: such requests (every Rust type's are) take `mi_malloc`, others the
//! aligned calls. On the proxy's request path this was 6 of 34 allocations per request
//! (BENCHMARKS.md).
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: gateway_bin::alloc::MiMalloc = gateway_bin::alloc::MiMalloc;
//!
//! let boxed = Box::new([7u64; 9]); // 72 bytes, aligned to 8: a plain block
//! assert_eq!(&*boxed as *const _ as usize % 8, 0);
//! let mut grown = vec![1u8; 3];
//! grown.extend_from_slice(&[2; 5000]);
//! assert_eq!(grown.len(), 5003);
//! ```
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every mimalloc block of a size that is a multiple of it has
/// (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// Whether a plain block of `size` bytes is aligned to `align`.
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && size.is_multiple_of(align)
}

/// mimalloc as a [`GlobalAlloc`] (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

// SAFETY: every method returns a block from mimalloc of at least the size asked for, aligned as
// asked (plain blocks only where `plain` holds, see the module docs), or null; blocks are
// freed and resized by mimalloc, which accepts blocks from its aligned and plain calls alike.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation calls accept any size and a power-of-two alignment,
        // which `Layout` guarantees.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a block this allocator returned, with its layout; the new
        // block keeps the alignment (plain only where a plain block of the new size has it).
        unsafe {
            if plain(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Asks mimalloc to give the memory it holds free back to the OS now. mimalloc returns an
/// emptied page's memory only when it frees another page after its purge delay (1 s): after a
/// burst of frees a quiet process keeps the last second's worth resident until it is busy
/// again. The server calls this once a burst of idle connections has been parked (the memory
/// their tasks held), as HAProxy trims its allocator when it releases its pools. Harmless when
/// mimalloc is not the global allocator (its own heap is then empty).
pub fn give_back_free_memory() {
    // SAFETY: `mi_collect` takes no pointer and may be called from any thread at any time.
    unsafe { mi_collect(true) }
}

unsafe extern "C" {
    /// `mimalloc.h`'s `mi_collect`, in the library `libmimalloc-sys` builds and links (its
    /// bindings declare it only under their `extended` feature, which adds a crate for it).
    fn mi_collect(force: bool);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block is aligned as asked, usable over its whole size, and survives a resize with
    /// its contents, for the sizes and alignments on both sides of the plain/aligned split.
    #[test]
    fn blocks_are_aligned_and_usable() {
        let mut held = Vec::new();
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1, 7, 8, 12, 16, 24, 48, 72, 80, 160, 1000, 1024, 3600, 70_000,
            ] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                for zeroed in [false, true] {
                    // SAFETY: non-zero sizes; each block is freed once with its layout.
                    unsafe {
                        let p = if zeroed {
                            MiMalloc.alloc_zeroed(layout)
                        } else {
                            MiMalloc.alloc(layout)
                        };
                        assert!(!p.is_null(), "{size} bytes aligned {align}");
                        assert_eq!(p as usize % align, 0, "{size} bytes aligned {align}");
                        if zeroed {
                            assert!((0..size).all(|i| *p.add(i) == 0));
                        }
                        for i in 0..size {
                            *p.add(i) = i as u8;
                        }
                        let grown = MiMalloc.realloc(p, layout, size * 3 + 1);
                        assert!(!grown.is_null());
                        assert_eq!(grown as usize % align, 0, "grown {size} aligned {align}");
                        assert!((0..size).all(|i| *grown.add(i) == i as u8));
                        held.push((
                            grown,
                            Layout::from_size_align_unchecked(size * 3 + 1, align),
                        ));
                    }
                }
            }
        }
        for (p, layout) in held {
            // SAFETY: each block came from this allocator with this layout.
            unsafe { MiMalloc.dealloc(p, layout) }
        }
    }
}
