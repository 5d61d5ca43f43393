//! Reusable I/O buffers. A client holds buffers only while it has work in
//! flight: idle clients give theirs back here, so 10,000 idle clients cost
//! no buffer memory and busy clients never call the allocator per request.
use std::cell::RefCell;

use bytes::BytesMut;

const BUF_SIZE: usize = 8 * 1024;
/// Buffers grown beyond this (a big COPY or result) are freed, not kept.
const MAX_KEPT_CAPACITY: usize = 64 * 1024;
const MAX_KEPT: usize = 1024;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room to read into.
pub fn take() -> BytesMut {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Returns a buffer (its contents are discarded).
pub fn give(mut b: BytesMut) {
    // A buffer read from has its consumed front cut off (`advance`): get
    // it back (no copy: the buffer is empty, and not shared) before judging
    // its size.
    b.clear();
    // Small buffers (a login's first read) are not worth keeping.
    let whole = b.capacity() >= BUF_SIZE || b.try_reclaim(BUF_SIZE);
    if !whole || b.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < MAX_KEPT {
            f.push(b);
        }
    });
}

/// Gives `b` back if it is empty, leaving an unallocated buffer in place.
pub fn release_if_empty(b: &mut BytesMut) {
    if b.is_empty() && b.capacity() > 0 {
        give(std::mem::take(b));
    }
}

/// Makes sure `b` has a pooled allocation before reading into it.
pub fn ensure(b: &mut BytesMut) {
    if b.capacity() == 0 {
        *b = take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};

    fn pooled() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    /// A buffer that was read from and consumed goes back to the pool
    /// whole, and comes out again as the same allocation.
    #[test]
    fn consumed_buffers_are_reused() {
        let mut b = take();
        let at = b.as_ptr();
        b.put_slice(&[7u8; 100]);
        b.advance(100);
        assert!(b.capacity() < BUF_SIZE, "advance cuts the front off");
        let n = pooled();
        give(b);
        assert_eq!(pooled(), n + 1, "the buffer is kept");
        let again = take();
        assert_eq!(again.as_ptr(), at, "the pooled allocation is reused");
        assert!(again.capacity() >= BUF_SIZE && again.is_empty());
        // a small buffer is not kept (nor grown)
        give(BytesMut::with_capacity(256));
        assert_eq!(pooled(), n);
    }
}
