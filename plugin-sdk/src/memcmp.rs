//! `memcmp` for components, eight bytes at a time.
//!
//! wasi-libc's `memcmp` compares a byte at a time, and a plugin calls it
//! often: for every `==` on strings and for every key a `BTreeMap` compares
//! (a parsed JSON object's). Defined here, it takes the place of wasi-libc's
//! when a component is linked: a header-filter call of 64 messages counts
//! 7 % fewer instructions with it, a redact-transform call 1 % fewer.

/// Compare the `len` bytes at `left` with those at `right` as unsigned
/// bytes, as C's `memcmp`: negative, zero or positive.
///
/// # Safety
/// Both must point to `len` readable bytes.
#[cfg_attr(all(target_family = "wasm", not(test)), unsafe(no_mangle))]
#[allow(unsafe_code)]
pub(crate) unsafe extern "C" fn memcmp(left: *const u8, right: *const u8, len: usize) -> i32 {
    let mut at = 0;
    while at + 8 <= len {
        // SAFETY: `at + 8 <= len` bytes are readable on both sides.
        let (a, b) = unsafe {
            (left.add(at).cast::<u64>().read_unaligned(), right.add(at).cast::<u64>().read_unaligned())
        };
        if a != b {
            // Read big-endian, the first byte that differs decides.
            return if u64::from_be(a) < u64::from_be(b) { -1 } else { 1 };
        }
        at += 8;
    }
    while at < len {
        // SAFETY: `at < len`.
        let (a, b) = unsafe { (*left.add(at), *right.add(at)) };
        if a != b {
            return i32::from(a) - i32::from(b);
        }
        at += 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn compare(left: &[u8], right: &[u8]) -> std::cmp::Ordering {
        assert_eq!(left.len(), right.len());
        // SAFETY: both slices hold `left.len()` bytes.
        unsafe { memcmp(left.as_ptr(), right.as_ptr(), left.len()) }.cmp(&0)
    }

    #[test]
    fn orders_as_slices_do_whatever_the_length_and_wherever_they_differ() {
        for len in 0..=20 {
            let base: Vec<u8> = (0..len as u8).map(|n| n.wrapping_mul(37)).collect();
            assert_eq!(compare(&base, &base), std::cmp::Ordering::Equal, "len {len}");
            for at in 0..len {
                // Above and below, and across 0x80: bytes compare unsigned.
                for byte in [0, 1, 0x7f, 0x80, 0xfe, 0xff] {
                    let mut other = base.clone();
                    other[at] = byte;
                    assert_eq!(compare(&base, &other), base.cmp(&other), "len {len}, byte {byte:#x} at {at}");
                    assert_eq!(compare(&other, &base), other.cmp(&base), "len {len}, byte {byte:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn the_first_difference_decides_not_a_later_one() {
        let (left, right) = (b"abcdefgh\x01zzzzzzz", b"abcdefgh\x02aaaaaaa");
        assert_eq!(compare(left, right), std::cmp::Ordering::Less);
        let (left, right) = (b"a\xffcdefghij", b"b\x00cdefghij");
        assert_eq!(compare(left, right), std::cmp::Ordering::Less);
    }
}
