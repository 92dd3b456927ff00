//! The allocator of components: the standard library's (wasi-libc's dlmalloc)
//! behind a cache of freed small blocks, one list per size class.
//!
//! A plugin call allocates and frees the same few small sizes over and over
//! (the input batch, the answer, the nodes of a parsed JSON document). A
//! cached block is handed out again in a handful of instructions, where
//! dlmalloc spends tens to hundreds on each `malloc` and `free`. A component
//! has one thread, so the lists need no lock.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Cached sizes are rounded up to a multiple of this.
const CLASS_BYTES: usize = 16;

/// Larger blocks go straight to the system allocator.
const LARGEST_CACHED: usize = 512;

const CLASSES: usize = LARGEST_CACHED / CLASS_BYTES;

/// Freed blocks one class keeps at most; more go back to the system
/// allocator, so that a burst of one size pins at most 32 KiB of it.
const MAX_CACHED: u32 = 64;

/// The alignment of every cached block; a layout that asks for more is not cached.
const ALIGN: usize = 8;

/// Freed blocks of one size class, linked through their first word.
#[derive(Clone, Copy)]
struct FreeList {
    head: *mut u8,
    len: u32,
}

/// [`System`] behind per-size-class lists of freed blocks.
pub(crate) struct CachingAllocator {
    lists: UnsafeCell<[FreeList; CLASSES]>,
}

// SAFETY: installed only in single-threaded components (see lib.rs), so no two
// threads ever reach the lists.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[allow(unsafe_code)]
unsafe impl Sync for CachingAllocator {}

impl CachingAllocator {
    pub(crate) const fn new() -> CachingAllocator {
        CachingAllocator { lists: UnsafeCell::new([FreeList { head: ptr::null_mut(), len: 0 }; CLASSES]) }
    }

    /// The size class of `layout`, if its blocks are cached.
    fn class(layout: Layout) -> Option<usize> {
        (layout.align() <= ALIGN && layout.size() <= LARGEST_CACHED)
            .then(|| layout.size().max(1).div_ceil(CLASS_BYTES) - 1)
    }

    /// The layout every block of `class` is allocated with.
    fn class_layout(class: usize) -> Layout {
        Layout::from_size_align((class + 1) * CLASS_BYTES, ALIGN).expect("a small power-of-two alignment")
    }

    /// Run `f` on the free list of `class`.
    #[allow(unsafe_code)]
    fn with_list<R>(&self, class: usize, f: impl FnOnce(&mut FreeList) -> R) -> R {
        // SAFETY: one thread (see `Sync`), and `f` never calls back into the
        // allocator, so this is the only reference to the list while it lives.
        f(unsafe { &mut (*self.lists.get())[class] })
    }

    /// Blocks cached for `class` now.
    #[cfg(test)]
    fn cached(&self, class: usize) -> u32 {
        self.with_list(class, |list| list.len)
    }
}

#[allow(unsafe_code)]
// SAFETY: every block handed out is a block of at least the layout's size and
// alignment, from `System`, used by no one else until it is freed again.
unsafe impl GlobalAlloc for CachingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = Self::class(layout) else { return unsafe { System.alloc(layout) } };
        self.with_list(class, |list| {
            if list.head.is_null() {
                return unsafe { System.alloc(Self::class_layout(class)) };
            }
            let block = list.head;
            // SAFETY: a cached block is free, aligned to `ALIGN`, and holds the next link.
            list.head = unsafe { block.cast::<*mut u8>().read() };
            list.len -= 1;
            block
        })
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = Self::class(layout) else { return unsafe { System.dealloc(block, layout) } };
        self.with_list(class, |list| {
            if list.len == MAX_CACHED {
                return unsafe { System.dealloc(block, Self::class_layout(class)) };
            }
            // SAFETY: the block is ours again, at least 16 bytes, aligned to `ALIGN`.
            unsafe { block.cast::<*mut u8>().write(list.head) };
            list.head = block;
            list.len += 1;
        })
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises a valid size for this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::class(layout), Self::class(new_layout)) {
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            (Some(old), Some(new)) if old == new => block,
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    fn fill(block: *mut u8, len: usize, byte: u8) {
        unsafe { ptr::write_bytes(block, byte, len) };
    }

    fn holds(block: *mut u8, len: usize, byte: u8) -> bool {
        unsafe { std::slice::from_raw_parts(block, len) }.iter().all(|b| *b == byte)
    }

    #[test]
    fn a_freed_small_block_is_handed_out_again_and_live_blocks_are_left_alone() {
        let allocator = CachingAllocator::new();
        let class = |size| CachingAllocator::class(Layout::from_size_align(size, 1).unwrap());
        assert_eq!([1, 16, 17, 512, 513].map(class), [Some(0), Some(0), Some(1), Some(CLASSES - 1), None]);
        // Sizes of distinct classes (or none), so that each freed block is its class's only one.
        let sizes = [1, 17, 40, 100, 200, 300, 512, 513, 4096];
        let blocks: Vec<_> = (0u8..)
            .zip(sizes)
            .map(|(byte, size)| {
                let layout = Layout::from_size_align(size, 1).unwrap();
                let block = unsafe { allocator.alloc(layout) };
                fill(block, size, byte);
                (block, layout, byte)
            })
            .collect();
        // Free every other block, then ask for the same sizes again.
        for &(block, layout, _) in blocks.iter().step_by(2) {
            unsafe { allocator.dealloc(block, layout) };
        }
        for &(block, layout, _) in blocks.iter().step_by(2) {
            let again = unsafe { allocator.alloc(layout) };
            if CachingAllocator::class(layout).is_some() {
                assert_eq!(again, block, "size {} is cached", layout.size());
            }
            fill(again, layout.size(), 0xee);
            unsafe { allocator.dealloc(again, layout) };
        }
        for &(block, layout, byte) in blocks.iter().skip(1).step_by(2) {
            assert!(holds(block, layout.size(), byte), "size {} kept its bytes", layout.size());
            unsafe { allocator.dealloc(block, layout) };
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_within_a_class_across_classes_and_beyond_them() {
        let allocator = CachingAllocator::new();
        let mut layout = Layout::from_size_align(5, 1).unwrap();
        let mut block = unsafe { allocator.alloc(layout) };
        fill(block, 5, 7);
        for new_size in [12, 40, 600, 5000, 300, 3] {
            block = unsafe { allocator.realloc(block, layout, new_size) };
            assert!(holds(block, layout.size().min(new_size).min(5), 7), "to {new_size}");
            layout = Layout::from_size_align(new_size, 1).unwrap();
        }
        unsafe { allocator.dealloc(block, layout) };
    }

    #[test]
    fn a_class_caches_at_most_its_limit_and_over_aligned_blocks_are_not_cached() {
        let allocator = CachingAllocator::new();
        let layout = Layout::from_size_align(32, 8).unwrap();
        let blocks: Vec<_> = (0..MAX_CACHED + 10).map(|_| unsafe { allocator.alloc(layout) }).collect();
        for block in blocks {
            unsafe { allocator.dealloc(block, layout) };
        }
        assert_eq!(allocator.cached(1), MAX_CACHED);
        let aligned = Layout::from_size_align(32, 64).unwrap();
        let block = unsafe { allocator.alloc(aligned) };
        assert_eq!(block as usize % 64, 0);
        unsafe { allocator.dealloc(block, aligned) };
        assert_eq!(allocator.cached(1), MAX_CACHED);
    }
}
