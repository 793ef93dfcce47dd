//! The sockets between the host and the launcher: the sandbox's control socket
//! ([`ControlSocket`]) and each command's own channel ([`Connection`]). What goes over them
//! is [`protocol`](super::protocol)'s; this module moves records and fds, within the bounds
//! the module docs of [`launcher`](super) set out.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use tokio::io::unix::AsyncFd;

use super::file_protocol::{COMMIT, FileReply, FileRequest};
use super::net_protocol::NetRequest;
use super::protocol::{MAX_REPLY, Mode, Order, READY, Reply, StartRequest};

/// How the command's stdio is made, with the fds that go along with the request.
pub(crate) enum Stdio {
    /// These three fds become its stdin, stdout and stderr ([`Mode::Pipes`]).
    Fds([RawFd; 3]),
    /// A PTY's terminal end, or a stream socket standing in for one on gVisor: the command's
    /// controlling terminal and stdio ([`Mode::RelayedTerminal`]).
    Terminal(RawFd),
    /// A PTY the launcher makes in the container's own devpts (so that `tty` names it); its
    /// controller comes back with [`Connection::terminal`] ([`Mode::OwnTerminal`]).
    OwnTerminal,
    /// The container's own `/dev/null`, and no channel after the start
    /// ([`Mode::Background`]).
    Background,
}

impl Stdio {
    /// The request's mode for this stdio.
    fn mode(&self) -> Mode {
        match self {
            Stdio::Fds(_) => Mode::Pipes,
            Stdio::Terminal(_) => Mode::RelayedTerminal,
            Stdio::OwnTerminal => Mode::OwnTerminal,
            Stdio::Background => Mode::Background,
        }
    }

    /// The stdio fds, in the order the launcher expects them after the channel's.
    fn fds(&self) -> &[RawFd] {
        match self {
            Stdio::Fds(fds) => fds,
            Stdio::Terminal(fd) => std::slice::from_ref(fd),
            Stdio::OwnTerminal | Stdio::Background => &[],
        }
    }
}

/// What the launcher answered to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Started {
    /// Running.
    Running,
    /// Could not start: `exec` failed with this errno, or `chdir` with its negation (see
    /// [`Reply::StartFailed`]).
    Failed(i32),
}

/// A `SOCK_SEQPACKET` socket pair, both ends close-on-exec; ours (the first) non-blocking.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((ours, theirs))
}

/// Registers our end with the Tokio reactor, for reads and writes.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` returns the same fd until the AsyncFd drops it.
    unsafe {
        AsyncFd::register_with_interest(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    }
    .map_err(io::Error::from)
}

/// The host's end of a sandbox's control socket: requests go out on it, one per command.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    fd: AsyncFd<OwnedFd>,
}

impl ControlSocket {
    /// A new control socket and the end that becomes the container's stdin.
    pub fn pair() -> io::Result<(Self, OwnedFd)> {
        let (ours, theirs) = seqpacket_pair()?;
        // The kernel attaches the sender's credentials to what we receive, its pid translated
        // into our pid namespace: the "ready" names the launcher's host pid.
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)?;
        Ok((
            ControlSocket {
                fd: register(ours)?,
            },
            theirs,
        ))
    }

    /// Waits for the launcher's "ready" (the caller puts a deadline on it) and returns the
    /// pid of its sender as the kernel gives it in this process's pid namespace: the
    /// container's init on runc and crun, the sandbox process on gVisor (whose kernel sends
    /// for its guests). The launcher sends it before any command runs, so no command can
    /// forge it.
    pub async fn ready(&self) -> io::Result<i32> {
        let (record, pid) = loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive_with_sender_now(fd.get_ref().as_raw_fd())) {
                Ok(r) => break r?,
                Err(_would_block) => continue,
            }
        };
        match (record, pid) {
            (Some(record), Some(pid)) if record == READY => Ok(pid),
            (Some(record), _) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unexpected first message from the launcher: \"{}\"",
                    record.escape_ascii()
                ),
            )),
            (None, _) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the sandbox's launcher ended before it was ready",
            )),
        }
    }

    /// Closes our sending side: the launcher reads its end, kills every process of the
    /// container, reaps them all and exits (see [`closed`](Self::closed)).
    pub fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(
            self.fd.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Write,
        );
    }

    /// Waits until the launcher's end is closed: it has exited (or the socket failed).
    /// Whatever it still sends is read and dropped, undecoded.
    pub async fn closed(&self) {
        while let Ok(Some(_)) = receive(&self.fd).await {}
    }

    /// Sends a start request with the command's own channel and stdio, and returns the
    /// channel (the caller puts a deadline on the wait for the reply). A request the
    /// launcher could not take fails with [`io::ErrorKind::InvalidInput`] before anything is
    /// sent (see [`StartRequest::encode`]).
    pub async fn request(
        &self,
        cwd: &Path,
        argv: &[String],
        env: &[(String, String)],
        stdio: Stdio,
    ) -> io::Result<Connection> {
        let mode = stdio.mode();
        let msg = StartRequest {
            mode,
            cwd,
            argv,
            env,
        }
        .encode()?;
        debug_assert_eq!(stdio.fds().len(), mode.stdio_fds());
        self.send_request(&msg, stdio.fds()).await
    }

    /// Asks the launcher to detach (see [`detach_request`](super::protocol::detach_request))
    /// and waits for its answer: `Ok(Ok(()))` once it has; `Ok(Err(errno))` when it refused:
    /// `EBUSY` while it holds fds of the host's (a command or helper runs), else why it
    /// could not listen for the attach.
    pub async fn detach(&self, token: &str) -> io::Result<Result<(), i32>> {
        let conn = self
            .send_request(&super::protocol::detach_request(token), &[])
            .await?;
        match conn.receive().await? {
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the launcher ended before it detached",
            )),
            Some(Reply::Detached) => Ok(Ok(())),
            Some(Reply::StartFailed { errno }) => Ok(Err(errno)),
            Some(other) => Err(unexpected(other)),
        }
    }

    /// A new control socket for a detached launcher: ours, with the attach record already
    /// queued on it, and the end that `launcher attach` hands over (its stdin).
    pub fn attach_pair(token: &str) -> io::Result<(Self, OwnedFd)> {
        let (control, theirs) = Self::pair()?;
        let record = super::protocol::attach_record(token);
        nix::sys::socket::send(
            control.fd.get_ref().as_raw_fd(),
            &record,
            MsgFlags::MSG_NOSIGNAL,
        )?;
        Ok((control, theirs))
    }

    /// Sends a file request with its own channel and, for the ops that move data, the
    /// container's end of a new stream socket; returns the channel and the host's end.
    pub async fn file_request(
        &self,
        request: FileRequest<'_>,
    ) -> io::Result<(Connection, Option<tokio::net::UnixStream>)> {
        let msg = request.encode()?;
        if !request.op.moves_data() {
            return Ok((self.send_request(&msg, &[]).await?, None));
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let conn = self.send_request(&msg, &[theirs.as_raw_fd()]).await?;
        drop(theirs);
        Ok((conn, Some(tokio::net::UnixStream::from_std(ours)?)))
    }

    /// Sends a network request with its own channel, and returns the channel.
    pub async fn net_request(&self, request: NetRequest) -> io::Result<Connection> {
        let msg = request.encode()?;
        self.send_request(&msg, &[]).await
    }

    /// Sends `msg` with a new channel's launcher end and `extra` fds, and returns the channel.
    async fn send_request(
        &self,
        msg: &[u8],
        extra: &[std::os::fd::RawFd],
    ) -> io::Result<Connection> {
        let (ours, theirs) = seqpacket_pair()?;
        // The channel first, then the fds the request calls for.
        let mut fds = vec![theirs.as_raw_fd()];
        fds.extend_from_slice(extra);
        loop {
            let mut guard = self.fd.writable().await?;
            let iov = [io::IoSlice::new(msg)];
            let rights = [ControlMessage::ScmRights(&fds)];
            match guard.try_io(|fd| {
                sendmsg::<()>(fd.as_raw_fd(), &iov, &rights, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            }) {
                Ok(r) => {
                    r?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        // The launcher's end is in flight now: ours must not keep it open.
        drop(theirs);
        Ok(Connection {
            fd: register(ours)?,
        })
    }
}

/// One command's own channel to the launcher.
#[derive(Debug)]
pub(crate) struct Connection {
    fd: AsyncFd<OwnedFd>,
}

impl Connection {
    /// Receives one reply; `None` when the launcher closed the channel. A record that is no
    /// reply (see [`Reply::decode`]) or longer than [`MAX_REPLY`] is an
    /// [`io::ErrorKind::InvalidData`] error; fds sent along are never installed.
    pub async fn receive(&self) -> io::Result<Option<Reply>> {
        match receive(&self.fd).await? {
            Some(record) => Ok(Some(Reply::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// Receives the controller of the PTY the launcher made (after an [`Stdio::OwnTerminal`]
    /// request): a [`Reply::Terminal`] record with exactly one fd, which must be a terminal.
    /// A [`Reply::StartFailed`] instead is the start failure, returned as such.
    pub async fn terminal(&self) -> io::Result<Result<OwnedFd, Started>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive_terminal_now(fd.get_ref().as_raw_fd())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for the start reply: [`Reply::Started`] or [`Reply::StartFailed`]; any other
    /// reply is an error.
    pub async fn started(&self) -> io::Result<Started> {
        match self.receive().await? {
            Some(Reply::Started { pid }) => {
                tracing::trace!(pid, "the launcher started a command");
                Ok(Started::Running)
            }
            Some(Reply::StartFailed { errno }) => Ok(Started::Failed(errno)),
            Some(other) => Err(unexpected(other)),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the sandbox's launcher closed the connection",
            )),
        }
    }

    /// Receives one record, undecoded; `None` when the other end closed the channel.
    pub async fn receive_record(&self) -> io::Result<Option<Vec<u8>>> {
        receive(&self.fd).await
    }

    /// Sends `record` with one fd by `SCM_RIGHTS` (the fd is ours to close after).
    pub async fn send_with_fd(&self, record: &[u8], fd: RawFd) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let iov = [io::IoSlice::new(record)];
            let fds = [fd];
            let rights = [ControlMessage::ScmRights(&fds)];
            match guard.try_io(|s| {
                sendmsg::<()>(s.as_raw_fd(), &iov, &rights, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            }) {
                Ok(r) => return r.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one reply to a file request; `None` when the helper closed the channel.
    pub async fn receive_file(&self) -> io::Result<Option<FileReply>> {
        match receive(&self.fd).await? {
            Some(record) => Ok(Some(FileReply::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// Commits a file write (the helper renames the new file over the path).
    pub async fn commit(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                nix::sys::socket::send(fd.as_raw_fd(), COMMIT, MsgFlags::MSG_NOSIGNAL)
                    .map_err(io::Error::from)
            }) {
                Ok(r) => return r.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Asks the launcher to signal the command's process group (fire and forget).
    pub fn signal(&self, signal: i32) {
        self.send(Order::Kill(signal));
    }

    /// Asks the launcher to resize the terminal it relays.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.send(Order::Resize { cols, rows });
    }

    /// Sends an order without waiting: one that does not fit the socket's buffer now, or
    /// that the launcher cannot take any more (it closed the channel), is dropped.
    fn send(&self, order: Order) {
        let _ = nix::sys::socket::send(
            self.fd.get_ref().as_raw_fd(),
            &order.encode(),
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        );
    }
}

/// The error for a reply that is well-formed but not the one expected here.
fn unexpected(reply: Reply) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected reply from the launcher: {reply:?}"),
    )
}

/// The error for a record longer than [`MAX_REPLY`] (`MSG_TRUNC`).
fn too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a message from the launcher longer than {MAX_REPLY} bytes"),
    )
}

/// Receives one record of at most [`MAX_REPLY`] bytes; `None` at the end of the channel.
async fn receive(fd: &AsyncFd<OwnedFd>) -> io::Result<Option<Vec<u8>>> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|fd| receive_now(fd.get_ref().as_raw_fd())) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// One record, without a control buffer: fds sent along are never installed in this process
/// (the kernel drops them and flags `MSG_CTRUNC`), so a hostile sender cannot fill our fd table.
fn receive_now(fd: RawFd) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; MAX_REPLY];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, None, MsgFlags::MSG_CMSG_CLOEXEC)?;
    let (len, flags) = (msg.bytes, msg.flags);
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(too_long());
    }
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(buf[..len].to_vec()))
}

/// One record and its sender's pid (from the credentials the kernel attaches). The control
/// buffer has room for the credentials only: fds sent along are dropped (`MSG_CTRUNC`), and
/// any that do arrive are closed.
fn receive_with_sender_now(fd: RawFd) -> io::Result<(Option<Vec<u8>>, Option<i32>)> {
    let mut buf = [0u8; MAX_REPLY];
    let received = receive_with_control(fd, &mut buf, CREDENTIALS_SPACE)?;
    if received.flags & libc::MSG_TRUNC != 0 {
        return Err(too_long());
    }
    if received.len == 0 {
        return Ok((None, received.pid));
    }
    Ok((Some(buf[..received.len].to_vec()), received.pid))
}

/// One [`Reply::Terminal`] record carrying one terminal fd, or the [`Reply::StartFailed`]
/// that stands instead. Every fd that arrives is closed but that terminal: the control buffer
/// has room for one fd (two fit its padding; more are dropped by the kernel and flagged
/// `MSG_CTRUNC`), and a terminal record with any fd but exactly one terminal is refused.
fn receive_terminal_now(fd: RawFd) -> io::Result<Result<OwnedFd, Started>> {
    let mut buf = [0u8; MAX_REPLY];
    // Every fd that arrived is in `passed` before anything can return: all are closed.
    let Received {
        len,
        flags,
        fds: mut passed,
        ..
    } = receive_with_control(fd, &mut buf, ONE_FD_SPACE)?;
    if flags & libc::MSG_TRUNC != 0 {
        return Err(too_long());
    }
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the sandbox's launcher closed the connection",
        ));
    }
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    match Reply::decode(&buf[..len])? {
        Reply::StartFailed { errno } => Ok(Err(Started::Failed(errno))),
        Reply::Terminal => {
            if flags & libc::MSG_CTRUNC != 0 {
                return Err(bad(
                    "the launcher's terminal reply carries more than one fd",
                ));
            }
            match passed.pop() {
                Some(controller)
                    if passed.is_empty() && nix::unistd::isatty(&controller).unwrap_or(false) =>
                {
                    Ok(Ok(controller))
                }
                _ => Err(bad("the launcher's terminal reply carries no terminal")),
            }
        }
        other => Err(unexpected(other)),
    }
}

/// Control-buffer room for the sender's credentials.
// SAFETY: CMSG_SPACE is arithmetic on its argument.
const CREDENTIALS_SPACE: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) } as usize;

/// Control-buffer room for one fd.
// SAFETY: as above.
const ONE_FD_SPACE: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;

/// The largest control buffer [`receive_with_control`] offers.
const CONTROL_MAX: usize = 64;
const _: () = assert!(CREDENTIALS_SPACE <= CONTROL_MAX && ONE_FD_SPACE <= CONTROL_MAX);

/// A control buffer, aligned as a `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; CONTROL_MAX]);

/// What one `recvmsg` with a control buffer brought.
struct Received {
    /// The record's length; 0 at the end of the channel.
    len: usize,
    /// `MSG_TRUNC` (the record was longer than the buffer), `MSG_CTRUNC` (control messages
    /// were dropped for want of room).
    flags: libc::c_int,
    /// Every fd the kernel installed in this process, ours now (closed when dropped).
    fds: Vec<OwnedFd>,
    /// The sender's pid, from `SCM_CREDENTIALS`.
    pid: Option<i32>,
}

/// Receives one record into `buf`, with a control buffer of `control_len` bytes (at most
/// [`CONTROL_MAX`]). Every fd the kernel installed comes back owned, also when the control
/// messages were truncated (`MSG_CTRUNC`): nix's `cmsgs` refuses to read a truncated buffer,
/// though the kernel has installed the fds that fit, which would leak.
fn receive_with_control(fd: RawFd, buf: &mut [u8], control_len: usize) -> io::Result<Received> {
    let mut control = ControlBuffer([0; CONTROL_MAX]);
    let control_len = control_len.min(CONTROL_MAX);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all zeroes is a valid msghdr (null pointers, zero lengths).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = control_len as _;
    // SAFETY: `hdr` points at `iov` and `control`, which outlive the call, with their lengths.
    let len = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let filled = (hdr.msg_controllen as usize).min(control_len);
    let (fds, pid) = control_messages(&control.0[..filled]);
    Ok(Received {
        len: len as usize,
        flags: hdr.msg_flags,
        fds,
        pid,
    })
}

/// The fds and the sender's pid in a control buffer as the kernel filled it. Every read is
/// bounded by the buffer: a message cut short yields what lies within it.
fn control_messages(filled: &[u8]) -> (Vec<OwnedFd>, Option<i32>) {
    let header = std::mem::size_of::<libc::cmsghdr>();
    // SAFETY: CMSG_LEN is arithmetic on its argument.
    let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
    let align = |n: usize| {
        n.saturating_add(std::mem::size_of::<usize>() - 1) & !(std::mem::size_of::<usize>() - 1)
    };
    let (mut fds, mut pid, mut at) = (Vec::new(), None, 0usize);
    while at.saturating_add(header) <= filled.len() {
        // SAFETY: `header` bytes from `at` are within the buffer; any alignment is read.
        let cmsg: libc::cmsghdr = unsafe { std::ptr::read_unaligned(filled[at..].as_ptr().cast()) };
        let cmsg_len = cmsg.cmsg_len as usize;
        if cmsg_len < data_offset {
            break;
        }
        let end = at.saturating_add(cmsg_len).min(filled.len());
        let data = filled.get(at + data_offset..end).unwrap_or(&[]);
        match (cmsg.cmsg_level, cmsg.cmsg_type) {
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                for raw in data.chunks_exact(std::mem::size_of::<RawFd>()) {
                    let raw =
                        RawFd::from_ne_bytes(raw.try_into().expect("a chunk of an fd's size"));
                    if raw >= 0 {
                        // SAFETY: the kernel just installed this fd in this process; it is
                        // named once, and ours.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
            }
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                if data.len() >= std::mem::size_of::<libc::ucred>() =>
            {
                // SAFETY: a ucred's bytes are within the buffer; any alignment is read.
                let creds: libc::ucred = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                pid = Some(creds.pid);
            }
            _ => {}
        }
        at = at.saturating_add(align(cmsg_len));
    }
    (fds, pid)
}

#[cfg(test)]
#[path = "channel_tests.rs"]
mod tests;
