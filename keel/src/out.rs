//! keel's own lines on stdout and stderr, written so that they can never panic: a reader that
//! went away (`keel ... 2>&1 | head -c1`, `keel stat ... | head -1`) or a full disk only loses
//! the line, and keel carries on to its normal exit. `println!` and friends panic instead.

use std::fmt;
use std::io::Write;

/// Writes `args` and a newline to stderr, ignoring failures.
pub fn write_err_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Writes `args` to stderr, ignoring failures.
pub fn write_err_text(args: fmt::Arguments<'_>) {
    let _ = write!(std::io::stderr().lock(), "{args}");
}

/// Writes `args` and a newline to stdout, ignoring failures.
pub fn write_out_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}

/// Writes `args` to stdout, ignoring failures.
pub fn write_out_text(args: fmt::Arguments<'_>) {
    let _ = write!(std::io::stdout().lock(), "{args}");
}

/// `eprintln!` that never panics.
macro_rules! err_line {
    ($($arg:tt)*) => { $crate::out::write_err_line(format_args!($($arg)*)) };
}

/// `eprint!` that never panics.
macro_rules! err_text {
    ($($arg:tt)*) => { $crate::out::write_err_text(format_args!($($arg)*)) };
}

/// `println!` that never panics.
macro_rules! out_line {
    ($($arg:tt)*) => { $crate::out::write_out_line(format_args!($($arg)*)) };
}

/// `print!` that never panics.
macro_rules! out_text {
    ($($arg:tt)*) => { $crate::out::write_out_text(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_format_their_arguments() {
        // Only that they compile and do not panic here; the closed-pipe cases run keel itself
        // (tests/tests/bad_input.rs).
        err_line!("keel: test {} {}", 1, "two");
        err_text!("");
        out_text!("");
    }
}
