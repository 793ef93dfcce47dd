//! Unit tests of the parent module (kept apart: the module stays short).

use super::*;
use nix::sys::socket::ControlMessageOwned;

/// A connection and the launcher's end of it.
fn connection() -> (Connection, OwnedFd) {
    let (ours, theirs) = seqpacket_pair().unwrap();
    (
        Connection {
            fd: register(ours).unwrap(),
        },
        theirs,
    )
}

fn send_with_fds(fd: &OwnedFd, record: &[u8], fds: &[RawFd]) {
    let iov = [io::IoSlice::new(record)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
}

/// A pipe: its read end (non-blocking) and its write end, to send along with a record.
fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (r, w)
}

/// Whether no write end of the pipe is open any more in this process (the read end sees
/// the end of file): the copies of it that were sent along were closed, or never
/// installed. Thread-safe, unlike counting this process's fds.
fn no_writer_left(r: &OwnedFd) -> bool {
    let mut buf = [0u8; 1];
    nix::unistd::read(r, &mut buf) == Ok(0)
}

#[tokio::test]
async fn replies_arrive_typed_and_the_end_is_none() {
    let (conn, launcher) = connection();
    send_with_fds(&launcher, b"S 7", &[]);
    send_with_fds(&launcher, b"X 256 0 0 0", &[]);
    assert_eq!(conn.started().await.unwrap(), Started::Running);
    assert_eq!(
        conn.receive().await.unwrap(),
        Some(Reply::Exited {
            status: crate::status::ExitStatus::exited(1)
                .with_usage(Some(crate::status::Usage::default()))
        })
    );
    drop(launcher);
    assert_eq!(conn.receive().await.unwrap(), None);
}

#[tokio::test]
async fn malformed_and_overlong_replies_are_invalid_data() {
    let (conn, launcher) = connection();
    send_with_fds(&launcher, b"S seven", &[]);
    send_with_fds(&launcher, &[b'X'; MAX_REPLY + 1], &[]);
    send_with_fds(&launcher, b"X 9 0 0 0", &[]);
    for _ in 0..2 {
        let err = conn.receive().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
    // The channel goes on: each record stands alone.
    assert!(matches!(
        conn.receive().await.unwrap(),
        Some(Reply::Exited { .. })
    ));
}

#[tokio::test]
async fn the_start_reply_must_be_a_start_reply() {
    let (conn, launcher) = connection();
    send_with_fds(&launcher, b"E -2", &[]);
    send_with_fds(&launcher, b"X 0 0 0 0", &[]);
    assert_eq!(conn.started().await.unwrap(), Started::Failed(-2));
    let err = conn.started().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    drop(launcher);
    let err = conn.started().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
}

#[tokio::test]
async fn fds_sent_with_a_reply_are_never_installed() {
    let (conn, launcher) = connection();
    let (r, w) = pipe();
    send_with_fds(&launcher, b"S 1", &[w.as_raw_fd(); 8]);
    drop(w);
    assert!(!no_writer_left(&r), "the copies in flight are open");
    assert_eq!(conn.started().await.unwrap(), Started::Running);
    assert!(no_writer_left(&r));
}

#[tokio::test]
async fn a_terminal_reply_hands_over_one_terminal() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let (conn, launcher) = connection();
    send_with_fds(&launcher, b"P", &[pty.master.as_raw_fd()]);
    let controller = conn.terminal().await.unwrap().unwrap();
    assert!(nix::unistd::isatty(&controller).unwrap());
    // A start failure stands instead of the terminal.
    send_with_fds(&launcher, b"E 24", &[]);
    assert_eq!(
        conn.terminal().await.unwrap().unwrap_err(),
        Started::Failed(24)
    );
}

#[tokio::test]
async fn a_terminal_reply_without_exactly_one_terminal_is_refused() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let terminal = pty.master.as_raw_fd();
    let (r, w) = pipe();
    let (conn, launcher) = connection();
    let pipe = w.as_raw_fd();
    // No fd; an fd that is no terminal; one too many (as many as the control buffer holds,
    // then more than it holds); a start reply; garbage.
    send_with_fds(&launcher, b"P", &[]);
    send_with_fds(&launcher, b"P", &[pipe]);
    send_with_fds(&launcher, b"P", &[terminal, pipe]);
    send_with_fds(&launcher, b"P", &[terminal, pipe, pipe, pipe]);
    send_with_fds(&launcher, b"S 5", &[pipe]);
    send_with_fds(&launcher, b"P?", &[pipe]);
    drop(w);
    for _ in 0..6 {
        let err = conn.terminal().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
    // None of what arrived stayed open.
    assert!(no_writer_left(&r));
    drop(launcher);
    let err = conn.terminal().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
}

#[tokio::test]
async fn orders_go_out_as_records() {
    let (conn, launcher) = connection();
    conn.signal(libc::SIGTERM);
    conn.resize(100, 30);
    let mut buf = [0u8; 64];
    let n = nix::sys::socket::recv(launcher.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
    assert_eq!(&buf[..n], format!("K {}", libc::SIGTERM).as_bytes());
    let n = nix::sys::socket::recv(launcher.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
    assert_eq!(&buf[..n], b"W 100 30");
}

#[tokio::test]
async fn the_control_socket_takes_only_ready_with_a_sender() {
    let (control, launcher) = ControlSocket::pair().unwrap();
    send_with_fds(&launcher, b"ready", &[]);
    assert_eq!(control.ready().await.unwrap(), std::process::id() as i32);
    // Fds sent along are closed, and the pid still comes.
    let (control, launcher) = ControlSocket::pair().unwrap();
    let (r, w) = pipe();
    send_with_fds(&launcher, b"ready", &[w.as_raw_fd(); 3]);
    drop(w);
    assert_eq!(control.ready().await.unwrap(), std::process::id() as i32);
    assert!(no_writer_left(&r));
    let (control, launcher) = ControlSocket::pair().unwrap();
    send_with_fds(&launcher, b"S 1", &[]);
    assert_eq!(
        control.ready().await.unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    let (control, launcher) = ControlSocket::pair().unwrap();
    drop(launcher);
    assert_eq!(
        control.ready().await.unwrap_err().kind(),
        io::ErrorKind::ConnectionAborted
    );
}

#[tokio::test]
async fn a_request_carries_its_record_and_fds() {
    let (control, launcher) = ControlSocket::pair().unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let raw = devnull.as_raw_fd();
    let argv = vec!["true".to_owned()];
    let conn = control
        .request(Path::new("/"), &argv, &[], Stdio::Fds([raw; 3]))
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        launcher.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(got) = c {
            fds.extend(
                got.into_iter()
                    .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }),
            );
        }
    }
    let len = msg.bytes;
    assert_eq!(&buf[..len], b"Rp\0/\x001\0true\x000\0");
    // The channel, then the three stdio fds.
    assert_eq!(fds.len(), 4);
    send_with_fds(&fds[0], b"S 3", &[]);
    assert_eq!(conn.started().await.unwrap(), Started::Running);
    // A request the launcher would refuse is not sent.
    let err = control
        .request(Path::new("/"), &[], &[], Stdio::OwnTerminal)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
