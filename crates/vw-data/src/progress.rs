//! Progress bars that share the terminal: every bar made here joins one process-wide
//! [`indicatif::MultiProgress`], so bars of work running at the same time (the demo trains two
//! models on two threads) stack instead of overwriting each other, and [`note`] prints a line
//! above them.

use indicatif::{MultiProgress, ProgressBar};
use std::sync::OnceLock;

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// A bar of `len` steps on stderr, stacked with the others; hidden when `show` is false.
pub fn bar(len: u64, show: bool) -> ProgressBar {
    match show {
        true => multi().add(ProgressBar::new(len)),
        false => ProgressBar::hidden(),
    }
}

/// Prints `msg` on stderr above the bars (a plain line when stderr is not a terminal).
pub fn note(msg: &str) {
    let m = multi();
    if m.is_hidden() || m.println(msg).is_err() {
        eprintln!("{msg}");
    }
}
