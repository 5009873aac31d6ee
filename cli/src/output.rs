//! Human output: aligned tables and short times. (`--json` prints the
//! daemon's answer as it is.)

use std::fmt::Write as _;

/// A table with a header row; columns are left-aligned and padded to the
/// widest cell.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|cell| (*cell).to_owned()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[column]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A time from the daemon in the one format every table and sentence
/// uses, `2026-11-28T02:13:50.123Z`: milliseconds (the index's resolution),
/// so a printed time pasted back as a POINT resolves to the point it was
/// printed for.
pub fn display_time(rfc3339: &str) -> String {
    rewind_api::normalize_time(rfc3339)
}

/// "1 point", "2 points".
pub fn plural(count: u64, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}

/// `3h 12m`, `45s`, `2d 3h`.
pub fn duration(seconds: u64) -> String {
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    let pair = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 { format!("{big}{big_unit}") } else { format!("{big}{big_unit} {small}{small_unit}") }
    };
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => pair(minutes, "m", seconds % 60, "s"),
        (0, _, _) => pair(hours, "h", minutes, "m"),
        _ => pair(days, "d", hours, "h"),
    }
}

pub use rewind_api::shell_word;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "SIZE"]);
        table.row(vec!["default".into(), "1 GiB".into()]);
        table.row(vec!["db".into(), "20 GiB".into()]);
        assert_eq!(table.render(), "NAME     SIZE\ndefault  1 GiB\ndb       20 GiB\n");
    }

    #[test]
    fn undo_commands_survive_the_shell() {
        // `#` starts a comment in sh: a printed command must quote it.
        assert_eq!(shell_word("#812"), "'#812'");
        assert_eq!(shell_word("db"), "db");
        assert_eq!(shell_word("/tmp/a b/control.sock"), "'/tmp/a b/control.sock'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(display_time("2026-11-28T02:13:50.123Z"), "2026-11-28T02:13:50.123Z");
        assert_eq!(display_time("2026-11-28T02:13:50Z"), "2026-11-28T02:13:50.000Z");
        assert_eq!(display_time("2026-11-28T02:13:50.1234567Z"), "2026-11-28T02:13:50.123Z");
        assert_eq!(plural(1, "point"), "1 point");
        assert_eq!(plural(0, "point"), "0 points");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(3 * 3600 + 12 * 60), "3h 12m");
        assert_eq!(duration(2 * 86_400 + 3 * 3600), "2d 3h");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(86_400), "1d");
    }
}
