//! The messages between the host and the launcher as typed values, with pure encoders and
//! decoders (no I/O; the sockets are [`channel`](super::channel)'s).
//!
//! The byte strings are a contract with `launcher/launcher.c`, whose header comment
//! documents the same messages from its side; the unit tests below pin the exact bytes.
//!
//! | direction | socket | record | type |
//! |---|---|---|---|
//! | launcher → host | control | `ready` | [`READY`] |
//! | host → launcher | control | `R<mode>\0<cwd>\0<argc>\0<argv>\0…<envc>\0<K=V>\0…` + fds | [`StartRequest`] |
//! | launcher → host | channel | `S <pid>`, `E <errno>`, `X <wstatus> <usage>`, `P` + one fd | [`Reply`] |
//! | host → launcher | channel | `K <signal>`, `W <cols> <rows>` | [`Order`] |
//!
//! Numbers are decimal ASCII as C's `%d` prints them; no record has a terminator of its own
//! (a `SOCK_SEQPACKET` record is one message), but every field of a request ends with a NUL.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use std::time::Duration;

use crate::status::{ExitStatus, Usage};

/// The most a start request may hold: the launcher's receive buffer (`MAX_REQUEST` in
/// launcher.c). A longer record would arrive truncated, which the launcher refuses.
pub(crate) const MAX_REQUEST: usize = 192 * 1024;

/// The most NUL-terminated fields a start request may hold (`MAX_ITEMS` in launcher.c):
/// the mode, the cwd, argc, the arguments, envc and the environment.
pub(crate) const MAX_FIELDS: usize = 8192;

/// The most a record from the launcher may hold (`X <wstatus> <usage>`: 84 bytes at most); the host reads
/// with a buffer this size, and a longer record is a protocol error.
pub(crate) const MAX_REPLY: usize = 96;

/// The launcher's first record on the control socket, sent once before any command runs.
pub(crate) const READY: &[u8] = b"ready";

/// How a command's stdio is made: the letter after the request's `R`, which also fixes how
/// many stdio fds follow the channel's in the request's `SCM_RIGHTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `p`: three fds, the command's stdin, stdout and stderr.
    Pipes,
    /// `t`: one fd, the terminal end the host made. If it is no terminal in the launcher's
    /// kernel (gVisor, where it is a stream socket), the launcher makes a PTY and relays
    /// between the two; `W` orders resize that PTY.
    RelayedTerminal,
    /// `T`: no fd. The launcher makes a PTY in the container's own devpts and sends its
    /// controller back in a [`Reply::Terminal`] record before the start reply.
    OwnTerminal,
    /// `b`: no fd. The command's stdio is the container's own `/dev/null`; after the start
    /// reply the launcher closes the channel and keeps nothing of the host's for it (a
    /// checkpoint can carry it).
    Background,
}

impl Mode {
    /// The letter that names the mode in a request.
    pub(crate) const fn letter(self) -> u8 {
        match self {
            Mode::Pipes => b'p',
            Mode::RelayedTerminal => b't',
            Mode::OwnTerminal => b'T',
            Mode::Background => b'b',
        }
    }

    /// How many stdio fds a request of this mode carries after the channel's.
    pub(crate) const fn stdio_fds(self) -> usize {
        match self {
            Mode::Pipes => 3,
            Mode::RelayedTerminal => 1,
            Mode::OwnTerminal | Mode::Background => 0,
        }
    }
}

/// The detach request (host → launcher, control socket, with a channel): `"D" token "\0"`.
/// The launcher answers `"D"` on the channel and then holds no fd of the host's until a
/// `launcher attach` hands it a new control socket whose first record is [`attach_record`]
/// with the same token; `"E 16"` while it holds any.
pub(crate) fn detach_request(token: &str) -> Vec<u8> {
    debug_assert!(token.len() >= 16 && token.len() <= 64);
    debug_assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let mut record = Vec::with_capacity(token.len() + 2);
    record.push(b'D');
    record.extend_from_slice(token.as_bytes());
    record.push(0);
    record
}

/// The first record on a new control socket handed to a detached launcher: `"A" token "\0"`.
pub(crate) fn attach_record(token: &str) -> Vec<u8> {
    let mut record = Vec::with_capacity(token.len() + 2);
    record.push(b'A');
    record.extend_from_slice(token.as_bytes());
    record.push(0);
    record
}

/// The argument that makes the launcher binary hand its stdin to a detached launcher.
pub(crate) const ATTACH_ARG: &str = "attach";

/// The launcher's one argument under gVisor, whose keepers could adopt nothing: commands are
/// forked directly, without one (a fork of the Sentry's saved per exec).
pub(crate) const NO_KEEPERS_ARG: &str = "no-keepers";

/// A request to start one command (host → launcher, control socket). Its record is
/// `"R" mode "\0" cwd "\0" argc "\0" argv[0] "\0" … envc "\0" "KEY=VALUE" "\0" …`, every
/// field NUL-terminated; the fds travel beside it (see [`Mode`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartRequest<'a> {
    /// How the command's stdio is made.
    pub(crate) mode: Mode,
    /// The command's working directory in the container.
    pub(crate) cwd: &'a Path,
    /// The command and its arguments (`argv[0]` is looked up in the environment's `PATH`).
    pub(crate) argv: &'a [String],
    /// The command's whole environment.
    pub(crate) env: &'a [(String, String)],
}

impl StartRequest<'_> {
    /// The request's record. Fails with [`io::ErrorKind::InvalidInput`] (which callers report
    /// as a configuration error) for what the launcher could not take apart or would refuse:
    /// no command, a NUL in a field, an environment key that is empty or holds `=`, more than
    /// [`MAX_FIELDS`] fields or more than [`MAX_REQUEST`] bytes.
    pub(crate) fn encode(&self) -> io::Result<Vec<u8>> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        if self.argv.is_empty() {
            return Err(invalid("no command to run".to_owned()));
        }
        let cwd = self.cwd.as_os_str().as_bytes();
        if cwd.contains(&0) {
            return Err(invalid(format!("the cwd {:?} contains NUL", self.cwd)));
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(invalid(format!("argv[{i}] contains NUL")));
        }
        for (k, v) in self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(invalid(format!(
                    "environment key {k:?} is empty or contains '=' or NUL"
                )));
            }
            if v.contains('\0') {
                return Err(invalid(format!("the value of {k} contains NUL")));
            }
        }
        let fields = 4 + self.argv.len() + self.env.len();
        if fields > MAX_FIELDS {
            return Err(invalid(format!(
                "{} arguments and {} environment variables; at most {} together",
                self.argv.len(),
                self.env.len(),
                MAX_FIELDS - 4
            )));
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&[b'R', self.mode.letter(), 0]);
        msg.extend_from_slice(cwd);
        msg.push(0);
        msg.extend_from_slice(format!("{}\0", self.argv.len()).as_bytes());
        for a in self.argv {
            msg.extend_from_slice(a.as_bytes());
            msg.push(0);
        }
        msg.extend_from_slice(format!("{}\0", self.env.len()).as_bytes());
        for (k, v) in self.env {
            msg.extend_from_slice(k.as_bytes());
            msg.push(b'=');
            msg.extend_from_slice(v.as_bytes());
            msg.push(0);
        }
        if msg.len() > MAX_REQUEST {
            return Err(invalid(format!(
                "arguments and environment take {} bytes; at most {MAX_REQUEST}",
                msg.len()
            )));
        }
        Ok(msg)
    }
}

/// A record from the launcher on a command's channel (launcher → host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `S <pid>`: the command runs. Its pid as the launcher sees it (in the container's pid
    /// namespace), or 0 when its keeper could not report it.
    Started {
        /// The command's pid in the container, or 0.
        pid: i32,
    },
    /// `E <errno>`: the command did not start; the launcher closes the channel. A positive
    /// errno is the exec's (or 22, `EINVAL`, for a request it could not take apart; 24,
    /// `EMFILE`, when it had no room or no fds for another command); a negative one is `chdir`'s.
    StartFailed {
        /// The errno, negated for a `chdir` failure; never 0.
        errno: i32,
    },
    /// `X <wstatus> <user_us> <system_us> <maxrss_kib>`: the command ended with this
    /// `waitpid` status (an exit or a signal) and `wait4` usage (its wall time is the host's
    /// to add); the launcher closes the channel.
    Exited {
        /// The status, decoded.
        status: ExitStatus,
    },
    /// `P`, with exactly one fd by `SCM_RIGHTS`: the controller of the PTY the launcher made
    /// for a [`Mode::OwnTerminal`] request. The record decodes alone; the fd is for the
    /// receiver to take and check.
    Terminal,
    /// `D`: the answer to a [`detach_request`]: the launcher has detached.
    Detached,
}

impl Reply {
    /// Decodes one record. Anything but the exact forms the launcher sends is an error:
    /// unknown letters, a missing or extra space, a number that is not decimal or does not
    /// fit, trailing bytes, a negative pid, errno 0, a wait status that is neither an exit
    /// nor a signal, bytes that are not ASCII.
    pub(crate) fn decode(record: &[u8]) -> Result<Reply, ProtocolError> {
        let bad = |reason| ProtocolError::new(reason, record);
        if record.len() > MAX_REPLY {
            return Err(bad("longer than a reply may be"));
        }
        let (kind, number) = match record {
            b"P" => return Ok(Reply::Terminal),
            b"D" => return Ok(Reply::Detached),
            [kind @ (b'S' | b'E' | b'X'), b' ', number @ ..] => (*kind, number),
            [b'S' | b'E' | b'X', ..] => return Err(bad("no space after the letter")),
            [] => return Err(bad("empty")),
            _ => return Err(bad("not a reply the launcher sends")),
        };
        if kind == b'X' {
            return exited(number).ok_or_else(|| {
                bad("not a wait status that is an exit or a signal, with its usage")
            });
        }
        let n = decimal(number).ok_or_else(|| bad("not a decimal number that fits an int"))?;
        match kind {
            b'S' if n >= 0 => Ok(Reply::Started { pid: n }),
            b'S' => Err(bad("a negative pid")),
            b'E' if n != 0 => Ok(Reply::StartFailed { errno: n }),
            _ => Err(bad("errno 0")),
        }
    }
}

/// `<wstatus> <user_us> <system_us> <maxrss_kib>` of an `X` record.
fn exited(fields: &[u8]) -> Option<Reply> {
    let mut parts = fields.split(|b| *b == b' ');
    let status = wait_status(decimal(parts.next()?)?)?;
    let mut count = || -> Option<u64> {
        let digits = parts.next()?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let (user_us, system_us, maxrss_kib) = (count()?, count()?, count()?);
    if parts.next().is_some() {
        return None;
    }
    let usage = Usage {
        user_cpu: Duration::from_micros(user_us),
        system_cpu: Duration::from_micros(system_us),
        peak_rss_bytes: maxrss_kib.checked_mul(1024)?,
        wall: Duration::ZERO,
    };
    Some(Reply::Exited {
        status: status.with_usage(Some(usage)),
    })
}

/// An order about a started command (host → launcher, its channel). Orders are fire and
/// forget: the launcher ignores those that arrive before the start or that do not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// `K <signal>`: send the signal to the command's process group (to the command alone if
    /// the group is gone).
    Kill(i32),
    /// `W <cols> <rows>`: resize the terminal the launcher relays ([`Mode::RelayedTerminal`]
    /// only; the host resizes its own controllers itself).
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

impl Order {
    /// The order's record (at most 13 bytes; the launcher reads up to 63).
    pub(crate) fn encode(self) -> Vec<u8> {
        match self {
            Order::Kill(signal) => format!("K {signal}"),
            Order::Resize { cols, rows } => format!("W {cols} {rows}"),
        }
        .into_bytes()
    }
}

/// A record from the launcher that is not one of the protocol's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError {
    reason: &'static str,
    /// The record's first [`MAX_REPLY`] bytes, for the message.
    record: Vec<u8>,
}

impl ProtocolError {
    fn new(reason: &'static str, record: &[u8]) -> Self {
        ProtocolError {
            reason,
            record: record[..record.len().min(MAX_REPLY)].to_vec(),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a malformed reply from the sandbox's launcher ({}): \"{}\"",
            self.reason,
            self.record.escape_ascii()
        )
    }
}

impl std::error::Error for ProtocolError {}

impl From<ProtocolError> for io::Error {
    fn from(e: ProtocolError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A decimal int as `%d` prints it: an optional `-`, then digits only.
fn decimal(bytes: &[u8]) -> Option<i32> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // ASCII only, so UTF-8; out of range fails.
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A `waitpid` status: an exit or a death by a signal (`WUNTRACED` and `WCONTINUED` are never
/// asked for, so nothing else can come).
fn wait_status(raw: i32) -> Option<ExitStatus> {
    if !(0..=0xffff).contains(&raw) {
        None
    } else if libc::WIFEXITED(raw) {
        Some(ExitStatus::exited(libc::WEXITSTATUS(raw)))
    } else if libc::WIFSIGNALED(raw) {
        Some(ExitStatus::signaled(libc::WTERMSIG(raw)))
    } else {
        None
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
