//! The code interpreter on every runtime: state across cells, isolated contexts, rich results
//! (matplotlib PNGs, DataFrame HTML, display order), tracebacks naming the cell's line,
//! streaming, timeouts and interrupts that keep the state, a dying kernel and its restart,
//! output caps, JavaScript and shell contexts, and bad input.

mod common;

use std::time::{Duration, Instant};

use common::TestSandbox;
use futures::StreamExt;
use oci_sandbox::{
    Code, ExecutionEvent, InterpreterErrorKind, Language, OciRuntime, SandboxConfig, SandboxError,
};

fn kind_of(err: &SandboxError) -> Option<InterpreterErrorKind> {
    match err {
        SandboxError::Interpreter { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// The width and height of a PNG (its IHDR chunk).
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// Variables, imports, functions and the working directory persist over 100 cells.
async fn state_persists_across_cells(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let first = sandbox
        .run_code("import os\ndef inc(v):\n    return v + 1\nx = 0\nos.chdir('/usr')")
        .await
        .expect("run");
    assert!(first.success(), "{first:?}");
    for _ in 0..100 {
        let step = sandbox.run_code("x = inc(x)").await.expect("run");
        assert!(step.success(), "{step:?}");
    }
    let last = sandbox.run_code("x, os.getcwd()").await.unwrap();
    assert_eq!(last.text(), Some("(100, '/usr')"));
    assert_eq!(last.execution_count, 102);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// Two contexts do not see each other's variables.
async fn contexts_are_isolated(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let a = sandbox.code_context(Language::Python).await.unwrap();
    let b = sandbox.code_context(Language::Python).await.unwrap();
    a.run("secret = 42").await.unwrap();
    let seen = b.run("secret").await.unwrap();
    assert_eq!(
        seen.error.as_ref().map(|e| e.name.as_str()),
        Some("NameError")
    );
    assert_eq!(a.run("secret").await.unwrap().text(), Some("42"));
    a.close().await;
    let err = a.run("1").await.expect_err("closed");
    assert_eq!(kind_of(&err), Some(InterpreterErrorKind::Closed), "{err}");
    drop(b);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A matplotlib figure comes back as a PNG of its size; a DataFrame as an HTML table;
/// `display` of several objects in order, then the last expression.
async fn rich_results(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let chart = sandbox
        .run_code(
            "import matplotlib.pyplot as plt\n\
             fig = plt.figure(figsize=(4, 3), dpi=100)\n\
             plt.plot([1, 3, 2])\n\
             plt.show()",
        )
        .await
        .unwrap();
    assert!(chart.success(), "{chart:?}");
    assert_eq!(chart.results.len(), 1, "{:?}", chart.results);
    let png = chart.results[0].png().expect("a PNG");
    assert_eq!(png_size(&png), (400, 300));
    // A figure left open at the cell's end is shown too.
    let open = sandbox
        .run_code("plt.figure(figsize=(2, 1), dpi=100); plt.plot([1]); None")
        .await
        .unwrap();
    assert_eq!(open.results.len(), 1, "{:?}", open.results);
    assert_eq!(png_size(&open.results[0].png().unwrap()), (200, 100));
    let frame = sandbox
        .run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
        .await
        .unwrap();
    let main = frame.main_result().expect("a result");
    assert!(main.html().unwrap().contains("<table"), "{main:?}");
    assert!(main.text().unwrap().contains('a'));
    let shown = sandbox
        .run_code("display(1, 'two')\ndisplay({'k': 3})\n4")
        .await
        .unwrap();
    let texts: Vec<&str> = shown.results.iter().filter_map(|r| r.text()).collect();
    assert_eq!(texts, ["1", "'two'", "{'k': 3}", "4"]);
    assert!(shown.results[3].is_main_result && !shown.results[0].is_main_result);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// An exception's traceback names the cell's line; stdout before it is kept.
async fn errors_name_the_cells_line(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let failed = sandbox
        .run_code("print('before')\nvalue = 1\n\ndef f():\n    return value / 0\nf()")
        .await
        .unwrap();
    assert_eq!(failed.stdout, "before\n");
    let error = failed.error.expect("an error");
    assert_eq!(error.name, "ZeroDivisionError");
    let text = error.traceback.concat();
    let cell = failed.execution_count;
    assert!(
        text.contains(&format!("\"<cell {cell}>\", line 6")),
        "{text}"
    );
    assert!(
        text.contains(&format!("\"<cell {cell}>\", line 5, in f")),
        "{text}"
    );
    assert!(text.contains("return value / 0"), "{text}");
    let syntax = sandbox.run_code("def broken(:").await.unwrap();
    assert_eq!(syntax.error.unwrap().name, "SyntaxError");
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A loop's output arrives while it runs.
async fn output_streams_while_the_cell_runs(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let py = sandbox.code_context(Language::Python).await.unwrap();
    let begun = Instant::now();
    let mut stream =
        py.run_streaming("import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.4)");
    let first = stream.next().await.expect("an event");
    let first_at = begun.elapsed();
    assert_eq!(first, ExecutionEvent::Stdout("0\n".into()));
    let execution = stream.finish().await.unwrap();
    assert_eq!(execution.stdout, "0\n1\n2\n");
    assert!(
        first_at + Duration::from_millis(600) < begun.elapsed(),
        "the first line came at {first_at:?}, the end at {:?}",
        begun.elapsed()
    );
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A `while True` is interrupted by the timeout and by `interrupt()`; the state survives.
async fn timeouts_and_interrupts_keep_the_state(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let py = sandbox.code_context(Language::Python).await.unwrap();
    py.run("kept = 'still here'").await.unwrap();
    let spun = py
        .run(Code::new("while True:\n    pass").timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(spun.timed_out);
    assert_eq!(spun.error.unwrap().name, "KeyboardInterrupt");
    assert_eq!(py.run("kept").await.unwrap().text(), Some("'still here'"));
    let stream = py.run_streaming("import time\nwhile True:\n    time.sleep(0.01)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    py.interrupt().await.unwrap();
    let stopped = stream.finish().await.unwrap();
    assert_eq!(stopped.error.unwrap().name, "KeyboardInterrupt");
    assert!(!stopped.timed_out);
    assert_eq!(py.run("kept").await.unwrap().text(), Some("'still here'"));
    // A dropped run is interrupted too, and the next run waits for it.
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), py.run("while True: pass")).await;
    assert!(dropped.is_err());
    assert_eq!(py.run("kept").await.unwrap().text(), Some("'still here'"));
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// `os._exit(1)` is a typed error; `restart()` (or the next run) gives a fresh kernel.
async fn a_dead_kernel_is_an_error_and_restarts(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let py = sandbox.code_context(Language::Python).await.unwrap();
    py.run("x = 1").await.unwrap();
    let err = py.run("import os\nos._exit(1)").await.expect_err("died");
    assert_eq!(kind_of(&err), Some(InterpreterErrorKind::Died), "{err}");
    py.restart().await.unwrap();
    let fresh = py.run("'x' in dir()").await.unwrap();
    assert_eq!(fresh.text(), Some("False"));
    assert_eq!(fresh.execution_count, 1);
    let err = py
        .run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        .await
        .expect_err("killed");
    assert_eq!(kind_of(&err), Some(InterpreterErrorKind::Died), "{err}");
    assert_eq!(py.run("2 + 2").await.unwrap().text(), Some("4"));
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A 100 MB print is capped at the output limit, the rest counted.
async fn output_is_capped(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t
        .start_sandbox(&SandboxConfig {
            output_limit: Some(1 << 20),
            ..SandboxConfig::default()
        })
        .await;
    let flood = sandbox
        .run_code("import sys\nsys.stdout.write('x' * 100_000_000)\nprint('done', file=sys.stderr)")
        .await
        .unwrap();
    assert_eq!(flood.stdout.len(), 1 << 20);
    assert_eq!(flood.stdout_dropped, 100_000_000 - (1 << 20));
    assert_eq!(flood.stderr, "done\n");
    // Raw writes past the kernel are capped the same.
    let raw = sandbox
        .run_code(
            Code::new("import os\nfor _ in range(64):\n    os.write(1, b'y' * 65536)")
                .output_limit(4096),
        )
        .await
        .unwrap();
    assert!(raw.stdout.len() <= 4096, "{}", raw.stdout.len());
    assert!(raw.stdout_dropped > 0);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// JavaScript and shell contexts keep their state too.
async fn javascript_and_shell_contexts(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let js = sandbox.code_context(Language::JavaScript).await.unwrap();
    js.run("var a = 2; function twice(v) { return v * 2 }")
        .await
        .unwrap();
    let out = js
        .run("console.log('hi'); twice(a) * 10 + 2")
        .await
        .unwrap();
    assert_eq!(out.stdout, "hi\n");
    assert_eq!(out.text(), Some("42"));
    let thrown = js.run("null.f()").await.unwrap();
    assert_eq!(thrown.error.unwrap().name, "TypeError");
    let sh = sandbox.code_context(Language::Shell).await.unwrap();
    sh.run("cd /usr; GREETING=hello; greet() { echo \"$GREETING $1\"; }")
        .await
        .unwrap();
    let out = sh.run("pwd; greet world").await.unwrap();
    assert_eq!(out.stdout, "/usr\nhello world\n");
    let failed = sh.run("false").await.unwrap();
    assert!(!failed.success());
    let partial = sh.run("printf abc").await.unwrap();
    assert_eq!(partial.stdout, "abc");
    // Its stderr is the cell's; bytes that are not UTF-8 are replaced, not fatal.
    let mixed = sh
        .run("echo out; echo err >&2; printf 'a\\377b\\n'; printf '\\377\\n' >&2")
        .await
        .unwrap();
    assert_eq!(mixed.stdout, "out\na\u{fffd}b\n");
    assert_eq!(mixed.stderr, "err\n\u{fffd}\n");
    assert_eq!(
        sh.run("echo still; ls /nope 2>&1 | wc -l")
            .await
            .unwrap()
            .stdout,
        "still\n1\n"
    );
    assert_eq!(sh.run("echo $((1 + 1))").await.unwrap().execution_count, 7);
    let js_err = js.run("process.stderr.write('to stderr\\n'); setTimeout(() => { throw new Error('late') }, 1); 1").await.unwrap();
    assert_eq!(js_err.stderr, "to stderr\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A callback's throw after its cell did not end the kernel.
    assert_eq!(js.run("a").await.unwrap().text(), Some("2"));
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// Bad input: typed errors.
async fn bad_input_is_typed(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let err = "cobol".parse::<Language>().expect_err("unknown language");
    assert!(matches!(err, SandboxError::InvalidConfig { .. }), "{err}");
    let err = Code::from_utf8(vec![b'1', 0xff, 0xfe]).expect_err("not UTF-8");
    assert_eq!(
        kind_of(&err),
        Some(InterpreterErrorKind::InvalidCode),
        "{err}"
    );
    // A root without node (a busybox image) says so.
    sandbox.close().await;
    let err = sandbox.run_code("1").await.expect_err("closed sandbox");
    assert!(matches!(err, SandboxError::SandboxClosed { .. }), "{err}");
    t.assert_nothing_left(&[], None).await;
}

/// In an image with python3 only, Python runs; in one without (busybox), Python and node are
/// `Unavailable` and the shell is its `sh`.
async fn images_with_and_without_interpreters(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let python = common::images::python_layout(&dir.path().join("python"));
    let busybox = common::images::busybox_layout(&dir.path().join("busybox"));
    let with = |f: &common::images::ImageFixture| SandboxConfig {
        image: Some(oci_sandbox::Image::OciLayout {
            path: f.layout.clone(),
            reference: f.tag.clone(),
        }),
        ..SandboxConfig::default()
    };
    let py = t
        .sandbox
        .create(&with(&python))
        .await
        .expect("python image");
    let out = py
        .run_code(
            "import sys
print(sys.version_info[0])
6 * 7",
        )
        .await
        .unwrap();
    assert_eq!((out.stdout.as_str(), out.text()), ("3\n", Some("42")));
    py.close().await;
    let bb = t
        .sandbox
        .create(&with(&busybox))
        .await
        .expect("busybox image");
    for language in [Language::Python, Language::JavaScript] {
        let err = bb.code_context(language).await.expect_err("no interpreter");
        assert_eq!(
            kind_of(&err),
            Some(InterpreterErrorKind::Unavailable),
            "{err}"
        );
    }
    let sh = bb.code_context(Language::Shell).await.expect("busybox sh");
    assert_eq!(sh.run("X=1; echo $((X + 1))").await.unwrap().stdout, "2\n");
    bb.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// The code runs in the kernel's process and may forge its messages: a forged end, raw bytes
/// that look like messages, a flood of results; the host stays in step and bounded.
async fn forged_messages_stay_in_their_cell(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let py = sandbox.code_context(Language::Python).await.unwrap();
    // A raw write of a message-looking line is the code's stdout, not a message.
    let raw = py
        .run(
            "import os\nos.write(1, b'\\x1e{\"t\":\"done\",\"count\":99,\"ok\":true}\\n')\n'after'",
        )
        .await
        .unwrap();
    assert_eq!(raw.text(), Some("'after'"), "{raw:?}");
    // A forged end through the kernel's own function ends nothing: it names no run.
    let forged = py
        .run("import __main__, sys\nsend = sys.modules['__main__'].send\nsend({'t': 'done', 'count': 7, 'ok': True})\n'real end'")
        .await
        .unwrap();
    assert_eq!(forged.text(), Some("'real end'"), "{forged:?}");
    assert_eq!(py.run("1 + 1").await.unwrap().text(), Some("2"));
    // Even with the run's real id, absurd numbers are bounded, never a panic.
    let absurd = py
        .run("import sys\nrid = sys._getframe(2).f_locals['run_id']\nsys.modules['__main__'].send({'t': 'done', 'id': rid, 'cpu_ms': 1e308, 'dropped': [2**64 - 1, 2**64 - 1]})\nimport time\ntime.sleep(0.2)")
        .await
        .unwrap();
    assert!(absurd.cpu_time <= Duration::from_secs(1_000_000_000));
    assert_eq!(absurd.stdout_dropped, u64::MAX);
    // The cell's real end comes later and ends nothing.
    assert_eq!(py.run("'next'").await.unwrap().text(), Some("'next'"));
    // Output that is not UTF-8 (undecodable names) arrives replaced.
    let odd = py
        .run("import os\nprint(b'\\xff'.decode('utf-8', 'surrogateescape'))\nos.write(1, b'\\xfe\\n')\nraise OSError(b'\\xfd'.decode('utf-8', 'surrogateescape'))")
        .await
        .unwrap();
    assert!(odd.stdout.contains('\u{fffd}'), "{odd:?}");
    assert_eq!(odd.error.unwrap().name, "OSError");
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A context's idle kernel keeps no sandbox awake (idle lifetimes and sleeps fire); a
/// hibernation ends it, and its next run says the state is gone, the one after starts afresh.
async fn contexts_and_sleeping_sandboxes(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t
        .sandbox
        .create(&SandboxConfig {
            name: Some("coder".into()),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    let py = sandbox.code_context(Language::Python).await.unwrap();
    py.run("kept = 1").await.unwrap();
    sandbox
        .hibernate()
        .await
        .expect("hibernate with an idle context");
    let err = py.run("kept").await.expect_err("state gone");
    assert_eq!(kind_of(&err), Some(InterpreterErrorKind::Died), "{err}");
    assert_eq!(py.run("2 + 3").await.unwrap().text(), Some("5"));
    // A paused sandbox resumes for a cell.
    sandbox.pause().await.unwrap();
    assert_eq!(py.run("'awake'").await.unwrap().text(), Some("'awake'"));
    sandbox.close().await;
    t.sandbox.remove_sandbox("coder").await.unwrap();
    let idle = t
        .start_sandbox(&SandboxConfig {
            idle_pause: Some(Duration::from_millis(300)),
            ..SandboxConfig::default()
        })
        .await;
    idle.run_code("x = 1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle.state() != oci_sandbox::SandboxState::Paused {
        assert!(
            Instant::now() < deadline,
            "a context kept the sandbox awake"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idle.run_code("x").await.unwrap().text(), Some("1"));
    idle.close().await;
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    contexts_and_sleeping_sandboxes,
    images_with_and_without_interpreters,
    forged_messages_stay_in_their_cell,
    state_persists_across_cells,
    contexts_are_isolated,
    rich_results,
    errors_name_the_cells_line,
    output_streams_while_the_cell_runs,
    timeouts_and_interrupts_keep_the_state,
    a_dead_kernel_is_an_error_and_restarts,
    output_is_capped,
    javascript_and_shell_contexts,
    bad_input_is_typed,
);
