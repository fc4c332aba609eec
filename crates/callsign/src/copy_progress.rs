//! `migrate-store`'s progress: a spinner per stage of the copy on standard error when it is a
//! terminal ([`callsign_bench::progress`]), nothing otherwise.

use std::sync::Mutex;

use callsign_store::{CopyProgress, CopyStage};
use indicatif::ProgressBar;

/// Draws the copy's current stage and how many records it has read.
#[derive(Default)]
pub struct CopyBar {
    bar: Mutex<Option<ProgressBar>>,
}

impl CopyBar {
    /// Clears the spinner (before the report is printed).
    pub fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

impl CopyProgress for CopyBar {
    fn stage(&self, stage: CopyStage) {
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = bar.take() {
            done.finish_and_clear();
        }
        *bar = callsign_bench::progress::spinner(stage.describe(), false);
    }

    fn advance(&self, records: usize) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.inc(records as u64);
        }
    }
}

impl Drop for CopyBar {
    fn drop(&mut self) {
        self.finish();
    }
}
