//! Polled 16550 output on COM1. Each THRE wait is followed by a burst of up to 16 bytes
//! (the FIFO depth) to keep the number of port exits low.

use crate::io::{inb, outb};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 1 << 5;
const FIFO_DEPTH: usize = 16;

/// True while the last byte written was not a newline.
static MID_LINE: AtomicBool = AtomicBool::new(false);

/// Programs 8N1, no interrupts, FIFOs on.
pub fn init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0x07);
}

fn wait_thre() {
    for _ in 0..100_000 {
        if inb(LSR) & LSR_THRE != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Writes raw bytes.
pub fn write(bytes: &[u8]) {
    for chunk in bytes.chunks(FIFO_DEPTH) {
        wait_thre();
        for &b in chunk {
            outb(COM1, b);
        }
    }
    if let Some(&last) = bytes.last() {
        MID_LINE.store(last != b'\n', Ordering::Relaxed);
    }
}

/// Emits a newline if a partial line was written.
pub fn ensure_line_start() {
    if MID_LINE.load(Ordering::Relaxed) {
        write(b"\n");
    }
}
