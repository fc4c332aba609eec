//! Progress bars on standard error (`indicatif`), for `seed`, `bench` and `migrate-store`.
//!
//! A bar is drawn only when standard error is a terminal and the command was not told to be
//! quiet: every function here returns `None` otherwise, and the caller prints its plain progress
//! lines (a log file or a pipe gets no escape codes) or nothing. Bars never touch standard
//! output, which stays for the command's result (`--json`).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress may be drawn: standard error is a terminal and `quiet` is off.
pub fn drawable(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A bar drawn on standard error with `template`, if [`drawable`].
fn bar_with(len: Option<u64>, label: &str, template: &str, quiet: bool) -> Option<ProgressBar> {
    if !drawable(quiet) {
        return None;
    }
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    // `stderr()` hides itself when standard error is no terminal; checked above as well, so
    // that callers know to print plain lines instead.
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr()).with_style(style);
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// A bar counting `len` items (identities written, say), with the time taken and left.
pub fn counter(len: u64, label: &str, quiet: bool) -> Option<ProgressBar> {
    bar_with(
        Some(len),
        label,
        "{prefix:>10} [{bar:40}] {human_pos}/{human_len} {elapsed}, eta {eta} {msg}",
        quiet,
    )
}

/// A bar over a time window of `secs` seconds; its position is in milliseconds and its message
/// is the caller's (operations, rate, errors).
pub fn timer(secs: f64, label: &str, quiet: bool) -> Option<ProgressBar> {
    let len = (secs * 1000.0).max(1.0) as u64;
    bar_with(
        Some(len),
        label,
        "{prefix:>10} [{bar:40}] {elapsed:>4} {msg}",
        quiet,
    )
}

/// A spinner counting items of unknown total (a copy's records), with the time taken.
pub fn spinner(label: &str, quiet: bool) -> Option<ProgressBar> {
    bar_with(
        None,
        label,
        "{spinner} {prefix:>18}: {human_pos} records, {elapsed} {msg}",
        quiet,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_drawn_when_quiet() {
        assert!(!drawable(true));
        assert!(counter(10, "seed", true).is_none());
        assert!(timer(1.0, "measure", true).is_none());
        assert!(spinner("copy", true).is_none());
    }
}
