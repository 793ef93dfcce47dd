//! What the library's kernels say, one line each (`kernel.py`, `kernel.js`, and the shell's
//! end marker): a record separator (`\x1e`) then a JSON object. What comes before the
//! separator on a line, and lines without one, are the code's own output written past the
//! kernel (a raw write to fd 1): stdout text, never a message. The code runs in the kernel's
//! process, so a message may be forged by it: the host checks each run's end by its id and
//! bounds every field, so that nothing a kernel sends hangs, panics or grows the host (the
//! trust boundary is the context: docs/CODE.md).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Starts a message on a line.
pub(super) const SEPARATOR: char = '\x1e';

/// One message of a kernel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Message {
    /// The kernel is up.
    Ready {
        #[serde(default)]
        version: String,
    },
    /// Output of the running cell.
    Stream {
        /// "stdout" or "stderr".
        n: String,
        s: String,
    },
    /// A rich result: `display(...)`, a figure, or (`main`) the value of the last expression.
    Display {
        data: BTreeMap<String, serde_json::Value>,
        #[serde(default)]
        main: bool,
    },
    /// The cell raised.
    Error {
        ename: String,
        evalue: String,
        #[serde(default)]
        traceback: Vec<String>,
    },
    /// The cell is over.
    Done {
        /// The run's id, as its request gave it (the shell's: its marker token).
        #[serde(default)]
        id: String,
        #[serde(default)]
        count: u64,
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        cpu_ms: f64,
        #[serde(default)]
        rss_kib: u64,
        #[serde(default)]
        dropped: [u64; 2],
        /// The shell's: its last command's status.
        #[serde(default)]
        status: i64,
    },
}

/// A line, split into the code's raw output (if any) and a message (if any), at the *last*
/// separator (JSON never holds a raw `\x1e`, so a stray one the code wrote before a message
/// stays text). What follows a separator and does not parse is dropped (`None`).
pub(super) fn parse_line(line: &str) -> (Option<&str>, Option<Message>) {
    match line.rfind(SEPARATOR) {
        None => (Some(line), None),
        Some(at) => {
            let raw = (at > 0).then(|| &line[..at]);
            let message = serde_json::from_str(&line[at + SEPARATOR.len_utf8()..]).ok();
            (raw, message)
        }
    }
}

/// [`parse_line`], owned.
pub(super) fn parse_owned(line: &str) -> (Option<String>, Option<Message>) {
    let (raw, message) = parse_line(line);
    (raw.map(str::to_owned), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_raw_output_and_messages() {
        assert_eq!(parse_line("plain"), (Some("plain"), None));
        let (raw, msg) = parse_line("half\x1e{\"t\":\"stream\",\"n\":\"stdout\",\"s\":\"x\"}");
        assert_eq!(raw, Some("half"));
        assert_eq!(
            msg,
            Some(Message::Stream {
                n: "stdout".into(),
                s: "x".into()
            })
        );
        assert_eq!(parse_line("\x1e{not json"), (None, None));
        // A stray separator before a message stays text.
        let (raw, msg) = parse_line("a\x1eb\x1e{\"t\":\"ready\"}");
        assert_eq!(raw, Some("a\x1eb"));
        assert!(matches!(msg, Some(Message::Ready { .. })));
        assert_eq!(parse_line("\x1e{\"t\":\"unknown\"}"), (None, None));
        let (_, done) = parse_line("\x1e{\"t\":\"done\",\"count\":3,\"ok\":true}");
        assert!(matches!(
            done,
            Some(Message::Done {
                count: 3,
                ok: true,
                ..
            })
        ));
    }
}
