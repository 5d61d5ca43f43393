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
    // Small buffers (a login's first read) are not worth keeping.
    if b.capacity() < BUF_SIZE || b.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    b.clear();
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
