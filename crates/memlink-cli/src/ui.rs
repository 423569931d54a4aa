//! How the CLI shows what it measured and how far it got: tables (comfy-table) on stdout and
//! progress bars (indicatif) on stderr.
//!
//! Tables are drawn with box characters on a terminal and in plain ASCII (Markdown) anywhere else
//! (a pipe, a file, CI), so that they stay readable and can be pasted as they are. Progress bars
//! are shown only when stderr is a terminal, and are redrawn only when the caller moves them (no
//! ticking thread: it would disturb what a benchmark measures).

use std::io::IsTerminal;

use comfy_table::{CellAlignment, Table, presets};
use indicatif::{ProgressBar, ProgressStyle};

/// A table with `header`, columns from `first_right` on aligned right (numbers).
pub(crate) fn table(header: &[&str], first_right: usize) -> Table {
    let mut table = Table::new();
    table.load_preset(if std::io::stdout().is_terminal() {
        presets::UTF8_FULL_CONDENSED
    } else {
        presets::ASCII_MARKDOWN
    });
    table.set_header(header.iter().copied());
    for index in first_right..header.len() {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// A progress bar of `len` steps on stderr showing `{msg}`, hidden unless stderr is a terminal.
pub(crate) fn progress(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos:>3}/{len:3} {wide_msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
