//! Unit tests of the parent module (kept apart: the module stays short).

use super::*;
use std::path::PathBuf;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

type Env = Vec<(String, String)>;

fn pairs(v: &[(&str, &str)]) -> Env {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A decoded start request, as the launcher sees it.
#[derive(Debug, PartialEq)]
struct Parsed {
    mode: Mode,
    cwd: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

/// launcher.c's request parser, transcribed: NUL-terminated fields (the last one too),
/// `R` and a mode letter first, argc > 0 and the field count exactly 4 + argc + envc.
/// Stricter than the C only where the C would take what the host never sends (a
/// longer first field, a count that is not plain digits).
fn parse_request(record: &[u8]) -> Option<Parsed> {
    if record.len() > MAX_REQUEST || record.last() != Some(&0) {
        return None;
    }
    let items: Vec<&[u8]> = record[..record.len() - 1].split(|&b| b == 0).collect();
    if items.len() > MAX_FIELDS || items.len() < 4 {
        return None;
    }
    let mode = match items[0] {
        b"Rp" => Mode::Pipes,
        b"Rt" => Mode::RelayedTerminal,
        b"RT" => Mode::OwnTerminal,
        _ => return None,
    };
    let count = |b: &[u8]| -> Option<usize> {
        b.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(b).ok()?.parse().ok())?
    };
    let argc = count(items[2])?;
    if argc == 0 || 3 + argc >= items.len() {
        return None;
    }
    let envc = count(items[3 + argc])?;
    if 4 + argc + envc != items.len() {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let argv = items[3..3 + argc]
        .iter()
        .map(|a| text(a))
        .collect::<Option<Vec<_>>>()?;
    let env = items[4 + argc..]
        .iter()
        .map(|e| {
            let e = text(e)?;
            let (k, v) = e.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Parsed {
        mode,
        cwd: PathBuf::from(std::ffi::OsStr::from_bytes(items[1])),
        argv,
        env,
    })
}

/// launcher.c's order parser, transcribed (`atoi` and `sscanf("%hu %hu")` after the
/// letter; unknown letters are ignored there, `None` here).
fn parse_order(record: &[u8]) -> Option<Order> {
    let text = std::str::from_utf8(record).ok()?;
    let mut words = text.get(1..)?.split_whitespace();
    let order = match record.first()? {
        b'K' => Order::Kill(words.next()?.parse().ok()?),
        b'W' => Order::Resize {
            cols: words.next()?.parse().ok()?,
            rows: words.next()?.parse().ok()?,
        },
        _ => return None,
    };
    words.next().is_none().then_some(order)
}

/// The launcher's replies, as its `snprintf`s print them.
fn print_reply(reply: Reply) -> Vec<u8> {
    match reply {
        Reply::Started { pid } => format!("S {pid}"),
        Reply::StartFailed { errno } => format!("E {errno}"),
        Reply::Exited { status } => {
            let wstatus = match (status.code(), status.signal()) {
                (Some(code), _) => (code & 0xff) << 8,
                (_, Some(signal)) => signal,
                _ => unreachable!("a decoded status is an exit or a signal"),
            };
            let u = status.usage().expect("the launcher always reports a usage");
            format!(
                "X {wstatus} {} {} {}",
                u.user_cpu.as_micros(),
                u.system_cpu.as_micros(),
                u.peak_rss_bytes / 1024
            )
        }
        Reply::Terminal => "P".to_owned(),
        Reply::Detached => "D".to_owned(),
    }
    .into_bytes()
}

#[test]
fn requests_of_every_mode_round_trip() {
    let argv = strings(&["sh", "-c", "echo \"$A\" | tr a b", ""]);
    let env = pairs(&[("PATH", "/usr/bin:/bin"), ("A", "x=y"), ("EMPTY", "")]);
    for mode in [Mode::Pipes, Mode::RelayedTerminal, Mode::OwnTerminal] {
        let request = StartRequest {
            mode,
            cwd: Path::new("/work dir/ü"),
            argv: &argv,
            env: &env,
        };
        let parsed = parse_request(&request.encode().unwrap()).unwrap();
        assert_eq!(
            parsed,
            Parsed {
                mode,
                cwd: PathBuf::from("/work dir/ü"),
                argv: argv.clone(),
                env: env.clone(),
            }
        );
    }
}

#[test]
fn requests_are_the_bytes_the_launcher_parses() {
    let argv = strings(&["ls", "-l"]);
    let env = pairs(&[("A", "1"), ("B", "x=y")]);
    let encode = |mode, argv: &[String], env: &[(String, String)]| {
        StartRequest {
            mode,
            cwd: Path::new("/tmp"),
            argv,
            env,
        }
        .encode()
        .unwrap()
    };
    assert_eq!(
        encode(Mode::Pipes, &argv, &env),
        b"Rp\0/tmp\x002\0ls\0-l\x002\0A=1\0B=x=y\0"
    );
    assert_eq!(
        encode(Mode::RelayedTerminal, &argv[..1], &[]),
        b"Rt\0/tmp\x001\0ls\x000\0"
    );
    assert_eq!(
        encode(Mode::OwnTerminal, &argv[..1], &env[..1]),
        b"RT\0/tmp\x001\0ls\x001\0A=1\0"
    );
}

#[test]
fn modes_name_their_letters_and_fds() {
    let modes = [Mode::Pipes, Mode::RelayedTerminal, Mode::OwnTerminal];
    let letters: Vec<u8> = modes.iter().map(|m| m.letter()).collect();
    let fds: Vec<usize> = modes.iter().map(|m| m.stdio_fds()).collect();
    assert_eq!(letters, b"ptT");
    assert_eq!(fds, [3, 1, 0]);
}

#[test]
fn requests_the_launcher_would_refuse_are_invalid_input() {
    let ok_env = pairs(&[("A", "1")]);
    let cases: Vec<(PathBuf, Vec<String>, Env)> = vec![
        ("/".into(), vec![], ok_env.clone()),
        ("/".into(), strings(&["a\0b"]), ok_env.clone()),
        ("/".into(), strings(&["sh", "x\0"]), ok_env.clone()),
        ("/a\0b".into(), strings(&["sh"]), ok_env.clone()),
        ("/".into(), strings(&["sh"]), pairs(&[("", "1")])),
        ("/".into(), strings(&["sh"]), pairs(&[("A=B", "1")])),
        ("/".into(), strings(&["sh"]), pairs(&[("A\0", "1")])),
        ("/".into(), strings(&["sh"]), pairs(&[("A", "1\0")])),
        // Too long: one argument past the launcher's buffer.
        ("/".into(), vec!["x".repeat(MAX_REQUEST)], vec![]),
        // Too many fields, though short.
        ("/".into(), vec![String::new(); MAX_FIELDS - 3], vec![]),
    ];
    for (cwd, argv, env) in &cases {
        let request = StartRequest {
            mode: Mode::Pipes,
            cwd,
            argv,
            env,
        };
        let err = request.encode().unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidInput,
            "{cwd:?} {argv:?} {env:?}"
        );
    }
}

#[test]
fn requests_up_to_the_limits_are_taken() {
    // Exactly MAX_FIELDS fields.
    let argv = vec![String::new(); MAX_FIELDS - 4];
    let request = StartRequest {
        mode: Mode::Pipes,
        cwd: Path::new("/"),
        argv: &argv,
        env: &[],
    };
    let parsed = parse_request(&request.encode().unwrap()).unwrap();
    assert_eq!(parsed.argv.len(), MAX_FIELDS - 4);
    // Exactly MAX_REQUEST bytes: "Rp\0" "/\0" "1\0" arg "\0" "0\0" is 10 bytes besides.
    let argv = vec!["x".repeat(MAX_REQUEST - 10)];
    let request = StartRequest {
        mode: Mode::Pipes,
        cwd: Path::new("/"),
        argv: &argv,
        env: &[],
    };
    assert_eq!(request.encode().unwrap().len(), MAX_REQUEST);
    let argv = vec!["x".repeat(MAX_REQUEST - 9)];
    let request = StartRequest {
        argv: &argv,
        ..request
    };
    assert_eq!(
        request.encode().unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn orders_round_trip_and_are_the_bytes_the_launcher_parses() {
    let orders = [
        Order::Kill(libc::SIGKILL),
        Order::Kill(libc::SIGINT),
        Order::Kill(0),
        Order::Resize { cols: 80, rows: 24 },
        Order::Resize { cols: 0, rows: 0 },
        Order::Resize {
            cols: u16::MAX,
            rows: u16::MAX,
        },
    ];
    for order in orders {
        let record = order.encode();
        // The launcher reads orders into 64 bytes, the last for a NUL.
        assert!(record.len() < 64, "{order:?}");
        assert_eq!(parse_order(&record), Some(order));
    }
    assert_eq!(Order::Kill(9).encode(), b"K 9");
    assert_eq!(
        Order::Resize {
            cols: 132,
            rows: 43
        }
        .encode(),
        b"W 132 43"
    );
    assert_eq!(
        Order::Resize {
            cols: u16::MAX,
            rows: u16::MAX
        }
        .encode(),
        b"W 65535 65535"
    );
}

/// `status` with a usage as the launcher reports one (whole microseconds and KiB).
fn with_usage(status: ExitStatus) -> ExitStatus {
    status.with_usage(Some(Usage {
        user_cpu: Duration::from_micros(1_234_567),
        system_cpu: Duration::from_micros(u64::from(u32::MAX) * 1000),
        peak_rss_bytes: (1 << 40) * 1024,
        wall: Duration::ZERO,
    }))
}

#[test]
fn replies_round_trip() {
    let replies = [
        Reply::Started { pid: 1 },
        Reply::Started { pid: 0 },
        Reply::Started { pid: i32::MAX },
        Reply::StartFailed {
            errno: libc::ENOENT,
        },
        Reply::StartFailed {
            errno: -libc::ENOENT,
        },
        Reply::StartFailed { errno: i32::MIN },
        Reply::Exited {
            status: with_usage(ExitStatus::exited(0)),
        },
        Reply::Exited {
            status: with_usage(ExitStatus::exited(3)),
        },
        Reply::Exited {
            status: with_usage(ExitStatus::exited(255)),
        },
        Reply::Exited {
            status: with_usage(ExitStatus::signaled(libc::SIGKILL)),
        },
        Reply::Exited {
            status: with_usage(ExitStatus::signaled(libc::SIGTERM)),
        },
        Reply::Terminal,
        Reply::Detached,
    ];
    for reply in replies {
        let record = print_reply(reply);
        assert!(record.len() <= MAX_REPLY);
        assert_eq!(Reply::decode(&record), Ok(reply), "{record:?}");
    }
}

#[test]
fn replies_are_decoded_from_the_launchers_bytes() {
    let decode = |record: &[u8]| Reply::decode(record).unwrap();
    assert_eq!(decode(b"S 42"), Reply::Started { pid: 42 });
    assert_eq!(decode(b"E 2"), Reply::StartFailed { errno: 2 });
    assert_eq!(decode(b"E -2"), Reply::StartFailed { errno: -2 });
    // The launcher's own refusals: a request it could not parse, no room for a command.
    assert_eq!(decode(b"E 22"), Reply::StartFailed { errno: 22 });
    assert_eq!(decode(b"E 24"), Reply::StartFailed { errno: 24 });
    let status = |record: &[u8]| match decode(record) {
        Reply::Exited { status } => status,
        other => panic!("{other:?}"),
    };
    let plain = |s: ExitStatus| s.with_usage(Some(Usage::default()));
    assert_eq!(status(b"X 0 0 0 0"), plain(ExitStatus::exited(0)));
    let used = status(b"X 0 1500 20 2048").usage().unwrap();
    assert_eq!(used.user_cpu, Duration::from_micros(1500));
    assert_eq!(used.system_cpu, Duration::from_micros(20));
    assert_eq!(used.peak_rss_bytes, 2 << 20);
    assert_eq!(status(b"X 768 0 0 0"), plain(ExitStatus::exited(3)));
    assert_eq!(status(b"X 65280 0 0 0"), plain(ExitStatus::exited(255)));
    assert_eq!(status(b"X 9 0 0 0"), plain(ExitStatus::signaled(9)));
    // A core dump's flag (0x80) does not change the signal.
    assert_eq!(status(b"X 139 0 0 0"), plain(ExitStatus::signaled(11)));
    assert_eq!(decode(b"P"), Reply::Terminal);
    assert_eq!(decode(b"D"), Reply::Detached);
}

/// The detach request and the attach record, byte for byte as `detach()` and
/// `await_attach()` in launcher.c read them.
#[test]
fn detach_and_attach_records_are_the_launchers_bytes() {
    let token = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        super::detach_request(token),
        b"D0123456789abcdef0123456789abcdef\0"
    );
    assert_eq!(
        super::attach_record(token),
        b"A0123456789abcdef0123456789abcdef\0"
    );
    assert_eq!(Mode::Background.letter(), b'b');
    assert_eq!(Mode::Background.stdio_fds(), 0);
}

#[test]
fn malformed_replies_are_errors() {
    let long = [b'S'; MAX_REPLY + 1];
    let bad: &[&[u8]] = &[
        b"",
        b" ",
        b"ready",
        b"garbage",
        b"S",
        b"S ",
        b"S  5",
        b"S5",
        b"S 5 ",
        b"S 5\n",
        b"S 5\0",
        b"S 5 6",
        b"S +5",
        b"S -5",
        b"S 0x10",
        b"S 1e3",
        b"S five",
        b"S 2147483648",
        b"S 99999999999999999999",
        b"S -",
        b"s 5",
        b"E",
        b"E 0",
        b"E -0",
        b"E 2x",
        b"E \xff",
        b"X",
        b"X -1",
        b"X 65536",
        b"X 4991",  // stopped by SIGTSTP (0x137f)
        b"X 65535", // continued
        b"X 127",   // 0x7f: a stop, not a signal
        b"X 0",     // no usage
        b"X 0 1 2",
        b"X 0 1 2 3 4",
        b"X 0 -1 2 3",
        b"X 0 1 2 99999999999999999999",
        b"X 0 1 2 18014398509481984", // KiB past u64 bytes
        b"X 0 1  2 3",
        b"X 0 1 2 3 ",
        b"P ",
        b"P 1",
        b"PP",
        b"K 9",
        b"W 80 24",
        b"Z 1",
        b"\xff",
        b"S \xc3\xa9",
        &long,
    ];
    for record in bad {
        let err = Reply::decode(record).expect_err(&record.escape_ascii().to_string());
        // Its message names the record, escaped, and as an io::Error it is bad data.
        assert!(err.to_string().contains("malformed reply"));
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidData);
    }
}

#[test]
fn a_protocol_error_shows_at_most_a_reply_of_the_record() {
    let record = vec![b'\x01'; 10 * MAX_REPLY];
    let err = Reply::decode(&record).unwrap_err();
    assert_eq!(err.record.len(), MAX_REPLY);
    assert!(err.to_string().contains("\\x01"));
}
