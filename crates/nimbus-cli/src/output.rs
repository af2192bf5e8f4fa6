//! Printing: stdout writes that report errors (so a closed pipe ends the command quietly instead of
//! panicking like `println!`), tables, and human formats for times, sizes and durations.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use nimbus_model::UnixMillis;

/// `writeln!` to stdout, returning the I/O error with `?` (a broken pipe is handled in `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        writeln!(::std::io::stdout().lock(), $($arg)*)?;
    }};
}
pub(crate) use outln;

/// Whether stderr gets colour: a terminal, and `NO_COLOR` unset (https://no-color.org).
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && io::stderr().is_terminal()
}

/// Ask before something that cannot be undone. `--yes` skips the question; without a terminal to
/// ask on, the answer is no, and the error says to add `--yes`.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _};
    if yes {
        return Ok(());
    }
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!("{question} Not confirmed: add --yes to run it without a terminal");
    }
    eprint!("{question} [y/N] ");
    io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("cancelled")
    }
}

/// Print a JSON value, pretty, as the API sent it.
pub fn print_json(value: &serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// A plain text table: columns padded to their widest cell, the last column unpadded.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let last = row.len() - 1;
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i == last {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> io::Result<()> {
        io::stdout().lock().write_all(self.render().as_bytes())
    }
}

/// RFC 3339 in UTC with milliseconds: `2025-01-31T12:00:00.123Z`.
pub fn format_time(ms: UnixMillis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Sizes for people, in decimal units as file managers show them: `512 B`, `83 KB`, `1.4 MB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    if value < 10.0 { format!("{value:.1} {unit}") } else { format!("{value:.0} {unit}") }
}

/// Binary sizes as limits are usually written: `64 MiB`, `10 MiB`, `1500 B`.
pub fn format_limit_bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} B")
}

/// An invocation's wall time: `850 µs`, `12.3 ms`, `2.41 s`.
pub fn format_duration_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}

/// A millisecond limit the way it was probably written: `5s`, `1m 30s`, `250ms`.
pub fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// The first characters of a hex digest, for display.
pub fn short_sha(sha: &str) -> String {
    let short: String = sha.chars().take(8).collect();
    if sha.len() > 8 { format!("{short}…") } else { short }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(83_123), "83 KB");
        assert_eq!(format_bytes(1_400_000), "1.4 MB");
        assert_eq!(format_limit_bytes(64 << 20), "64 MiB");
        assert_eq!(format_limit_bytes(1500), "1500 B");
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_duration_us(850), "850 µs");
        assert_eq!(format_duration_us(12_340), "12.3 ms");
        assert_eq!(format_ms(5000), "5s");
    }

    #[test]
    fn table_pads_columns() {
        let mut t = Table::new(&["NAME", "VERSION"]);
        t.row(vec!["hello-world".into(), "v1".into()]);
        t.row(vec!["a".into(), "v12".into()]);
        assert_eq!(t.render(), "NAME         VERSION\nhello-world  v1\na            v12\n");
    }
}
