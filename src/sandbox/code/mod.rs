//! A code interpreter in a sandbox (issue 33): contexts that keep their state from cell to
//! cell (Python, JavaScript, a shell), each a kernel process of the library's own running as
//! the sandbox's user, and executions with their output, rich results and errors.
//!
//! The kernels (`kernel.py`, stdlib only; `kernel.js`, node's stdlib only; the shell needs
//! none) are passed on the command line (`python3 -c`, `node -e`): nothing is written into
//! the sandbox, no network, no Jupyter. Each speaks a line protocol over the exec's own pipes
//! (`protocol.rs`). An interrupt is `SIGINT` to the kernel, which raises `KeyboardInterrupt`
//! in the running cell only; a kernel that dies is a typed error and is made anew by the next
//! run or by [`CodeContext::restart`].

mod protocol;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};

use super::Sandbox;
use crate::config::ExecConfig;
use crate::error::{InterpreterErrorKind, SandboxError};
use protocol::{Message, parse_owned};

const PYTHON_KERNEL: &str = include_str!("kernel.py");
const JS_KERNEL: &str = include_str!("kernel.js");

/// The longest line a kernel may send (a result's bundle, base64 images included): past it
/// the kernel is taken for broken and ended.
const MAX_LINE: usize = 64 << 20;
/// How long a kernel may take to come up (importing nothing but the stdlib: ~30 ms).
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long an interrupted cell may take to end before its kernel is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// What one execution keeps of its results and errors, besides its streams' limit.
const RESULTS_LIMIT: usize = 128 << 20;
/// A line longer than this is parsed on the blocking pool, not on a worker.
const PARSE_INLINE: usize = 1 << 20;
/// Lines of a kernel's own stderr waiting for its cell (more are dropped).
const STDERR_BACKLOG: usize = 4096;
/// How long a cell's end waits for the kernel's stderr to catch up (its marker).
const STDERR_MARKER_WAIT: Duration = Duration::from_secs(1);
/// How long a settle waits for a dropped run's cell to end by itself before interrupting it.
const SETTLE_QUIET: Duration = Duration::from_millis(50);

tokio::task_local! {
    /// Set while a context starts its kernel: the exec holds a slot but does not make the
    /// sandbox busy (see `sandbox/exec.rs`).
    pub(super) static KERNEL_EXEC: ();
}

/// One running kernel, counted in its sandbox while its exec lives.
#[derive(Debug)]
pub(super) struct KernelMark(Arc<std::sync::atomic::AtomicUsize>);

impl KernelMark {
    pub(super) fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        KernelMark(Arc::clone(count))
    }
}

impl Drop for KernelMark {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A language a [`CodeContext`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Language {
    /// `python3` (3.8 or later) from the sandbox's root: the default.
    Python,
    /// `node` from the sandbox's root.
    JavaScript,
    /// `bash` (or `sh` where there is no bash): the working directory, variables and
    /// functions persist.
    Shell,
}

impl Language {
    /// The language's name.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::Shell => "shell",
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Language {
    type Err = SandboxError;

    /// `python` (`py`, `python3`), `javascript` (`js`, `node`), `shell` (`sh`, `bash`).
    fn from_str(s: &str) -> Result<Self, SandboxError> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Language::Python),
            "javascript" | "js" | "node" => Ok(Language::JavaScript),
            "shell" | "sh" | "bash" => Ok(Language::Shell),
            other => Err(SandboxError::invalid(
                "language",
                format!("{other:?} is none of python, javascript, shell"),
            )),
        }
    }
}

/// A cell of code to run, with its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Code {
    /// The source.
    pub source: String,
    /// Past it the cell is interrupted (`KeyboardInterrupt`; the context keeps its state).
    /// `None`: the sandbox's `timeout` (60 s by default); `Some(Duration::MAX)`: none.
    pub timeout: Option<Duration>,
    /// Most bytes kept of each of stdout and stderr; the rest is counted. `None`: the
    /// sandbox's `output_limit` (64 MiB by default).
    pub output_limit: Option<u64>,
}

impl Code {
    /// `source`, with the sandbox's limits.
    pub fn new(source: impl Into<String>) -> Self {
        Code {
            source: source.into(),
            timeout: None,
            output_limit: None,
        }
    }

    /// Code from bytes, which must be UTF-8.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Interpreter`] with [`InterpreterErrorKind::InvalidCode`].
    pub fn from_utf8(bytes: Vec<u8>) -> Result<Self, SandboxError> {
        String::from_utf8(bytes)
            .map(Code::new)
            .map_err(|e| SandboxError::Interpreter {
                language: "any",
                kind: InterpreterErrorKind::InvalidCode,
                reason: format!("the code is not UTF-8: {e}"),
            })
    }

    /// The same code with a timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The same code with an output limit per stream.
    pub fn output_limit(mut self, bytes: u64) -> Self {
        self.output_limit = Some(bytes);
        self
    }
}

impl From<&str> for Code {
    fn from(source: &str) -> Self {
        Code::new(source)
    }
}

impl From<String> for Code {
    fn from(source: String) -> Self {
        Code::new(source)
    }
}

/// A rich result: the same value in several MIME types (`text/plain` always), as Jupyter's
/// display data. Text types are strings, images base64 strings, `application/json` a JSON
/// value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MimeBundle {
    /// Each representation, by MIME type.
    pub data: BTreeMap<String, serde_json::Value>,
    /// The value of the cell's last expression (not a `display` or a figure).
    pub is_main_result: bool,
}

impl MimeBundle {
    /// The representation of MIME type `mime` as text, if it has one.
    pub fn get_text(&self, mime: &str) -> Option<&str> {
        self.data.get(mime).and_then(|v| v.as_str())
    }

    /// `text/plain`.
    pub fn text(&self) -> Option<&str> {
        self.get_text("text/plain")
    }

    /// `text/html` (a DataFrame's table, for one).
    pub fn html(&self) -> Option<&str> {
        self.get_text("text/html")
    }

    /// `text/markdown`.
    pub fn markdown(&self) -> Option<&str> {
        self.get_text("text/markdown")
    }

    /// `image/svg+xml`.
    pub fn svg(&self) -> Option<&str> {
        self.get_text("image/svg+xml")
    }

    /// `application/json`.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.data.get("application/json")
    }

    /// `image/png`, decoded (a matplotlib figure, for one).
    pub fn png(&self) -> Option<Vec<u8>> {
        self.decoded("image/png")
    }

    /// `image/jpeg`, decoded.
    pub fn jpeg(&self) -> Option<Vec<u8>> {
        self.decoded("image/jpeg")
    }

    fn decoded(&self, mime: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        let text = self.get_text(mime)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
    }
}

/// An exception the cell raised (or its interruption: `KeyboardInterrupt`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutionError {
    /// Its type, `ZeroDivisionError` for one.
    pub name: String,
    /// Its message.
    pub value: String,
    /// The traceback's lines, from the cell's own frames (`File "<cell 3>", line 2`).
    pub traceback: Vec<String>,
}

impl std::fmt::Display for ExecutionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.value)
    }
}

/// Something a running cell produced, as it comes ([`CodeContext::run_streaming`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ExecutionEvent {
    /// Text written to stdout.
    Stdout(String),
    /// Text written to stderr.
    Stderr(String),
    /// A rich result.
    Result(MimeBundle),
    /// The cell raised.
    Error(ExecutionError),
}

/// What a cell did.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Execution {
    /// Its stdout, within the output limit.
    pub stdout: String,
    /// Its stderr, within the output limit.
    pub stderr: String,
    /// Bytes of stdout and stderr past the output limit, not kept.
    pub stdout_dropped: u64,
    /// See [`stdout_dropped`](Self::stdout_dropped).
    pub stderr_dropped: u64,
    /// Its rich results, in order: every `display(...)`, every matplotlib figure shown or
    /// left open, and last the value of its last expression.
    pub results: Vec<MimeBundle>,
    /// The exception it raised, if it did.
    pub error: Option<ExecutionError>,
    /// Its number in the context: 1, 2, ...
    pub execution_count: u64,
    /// It ran past its timeout and was interrupted.
    pub timed_out: bool,
    /// Wall time, from the request to the end.
    pub wall_time: Duration,
    /// CPU time of the kernel's process during the cell (its threads; not its children's).
    pub cpu_time: Duration,
    /// The kernel process's peak resident memory so far, in KiB.
    pub peak_rss_kib: u64,
}

impl Execution {
    /// The value of the cell's last expression, if it had one.
    pub fn main_result(&self) -> Option<&MimeBundle> {
        self.results.iter().find(|r| r.is_main_result)
    }

    /// The `text/plain` of the value of its last expression (`"2"` for `1+1`).
    pub fn text(&self) -> Option<&str> {
        self.main_result().and_then(MimeBundle::text)
    }

    /// Whether the cell ran to its end without an exception.
    pub fn success(&self) -> bool {
        self.error.is_none()
    }
}

/// A stateful interpreter in a sandbox: what one cell defines (variables, imports, functions,
/// the working directory), the next sees; contexts do not see each other's. Cheap to clone
/// (clones share it); it keeps its sandbox alive. Cells of one context run one at a time, in
/// order.
///
/// A context's state is its kernel process's: a hibernation or a snapshot of the sandbox ends
/// it (they cannot carry its pipes), and the next run says so
/// ([`Died`](InterpreterErrorKind::Died)) before a later one starts afresh. Everything a cell
/// runs can change what later cells of the *same* context do (it runs in the kernel's
/// process): the trust boundary is the context, not the cell.
///
/// ```no_run
/// # async fn demo(sandbox: oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
/// use oci_sandbox::Language;
///
/// let py = sandbox.code_context(Language::Python).await?;
/// py.run("import math\nr = 2").await?;
/// let area = py.run("math.pi * r ** 2").await?;
/// assert!(area.text().unwrap().starts_with("12.56"));
/// let chart = py
///     .run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
///     .await?;
/// let png: Vec<u8> = chart.results[0].png().expect("a PNG");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CodeContext {
    inner: Arc<ContextInner>,
    /// A context the caller made keeps its sandbox; the sandbox's default one does not (it
    /// lives in the sandbox).
    _sandbox: Option<Sandbox>,
}

#[derive(Debug)]
pub(super) struct ContextInner {
    sandbox: std::sync::Weak<super::Inner>,
    language: Language,
    /// The running kernel, if any; held by the cell that runs.
    kernel: tokio::sync::Mutex<Option<Kernel>>,
    /// The running kernel's process, for interrupts while a cell holds `kernel`.
    process: std::sync::Mutex<Option<Arc<crate::ContainerProcess>>>,
    closed: AtomicBool,
    /// Why the kernel was ended from outside (a hibernation, a snapshot): the next run says it.
    lost: std::sync::Mutex<Option<String>>,
}

/// One kernel process and its pipes.
#[derive(Debug)]
struct Kernel {
    process: Arc<crate::ContainerProcess>,
    /// Requests go to a writer task of the kernel's: a kernel that does not read its stdin
    /// (it is busy writing output nobody reads) never blocks the run that waits on it.
    requests: tokio::sync::mpsc::UnboundedSender<Bytes>,
    lines: FramedRead<tokio::process::ChildStdout, AnyDelimiterCodec>,
    /// Lines the kernel process wrote to its own stderr (the shell's, node's; Python's code
    /// writes into the kernel's pipes instead).
    stderr: tokio::sync::mpsc::Receiver<String>,
    /// The last of them, for a death's reason.
    stderr_tail: Arc<std::sync::Mutex<String>>,
    /// Set while a cell runs: one dropped mid-cell leaves messages to skip.
    in_cell: bool,
    /// The running cell's id, which its end must name.
    run_id: String,
    /// Cells run (the shell counts its own).
    count: u64,
}

impl Sandbox {
    /// A new code context in this sandbox (a kernel process of its own, started now).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Interpreter`] with [`Unavailable`](InterpreterErrorKind::Unavailable)
    /// when the sandbox's root has no interpreter for `language`; those of
    /// [`exec`](Self::exec).
    pub async fn code_context(&self, language: Language) -> Result<CodeContext, SandboxError> {
        let context = CodeContext::new(self, language, true);
        context.ensure_kernel().await?;
        Ok(context)
    }

    /// Runs Python `code` in the sandbox's default context (made on first use): see
    /// [`CodeContext::run`].
    ///
    /// # Errors
    ///
    /// Those of [`CodeContext::run`].
    pub async fn run_code(&self, code: impl Into<Code>) -> Result<Execution, SandboxError> {
        let context = self
            .inner
            .code
            .get_or_init(|| async { CodeContext::new(self, Language::Python, false) })
            .await
            .clone();
        context.run(code).await
    }

    /// Ends every code context's kernel, for a hibernation or a snapshot; their next run
    /// says `why`. A cell running is [`SnapshotErrorKind::Busy`](crate::SnapshotErrorKind::Busy).
    pub(super) fn end_kernels(&self, why: &str) -> Result<(), SandboxError> {
        let contexts: Vec<Arc<ContextInner>> = {
            let mut registry = self.inner.code_contexts.lock().expect("not poisoned");
            registry.retain(|c| c.strong_count() > 0);
            registry
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect()
        };
        let mut guards = Vec::new();
        for context in &contexts {
            match context.kernel.try_lock() {
                Ok(guard) => guards.push(guard),
                Err(_) => {
                    return Err(SandboxError::snapshot(
                        crate::SnapshotErrorKind::Busy,
                        format!("sandbox {} runs a code cell", self.id()),
                    ));
                }
            }
        }
        for (context, mut guard) in contexts.iter().zip(guards) {
            if guard.take().is_some() {
                *context.process.lock().expect("not poisoned") = None;
                *context.lost.lock().expect("not poisoned") = Some(why.to_owned());
            }
        }
        Ok(())
    }
}

impl CodeContext {
    fn new(sandbox: &Sandbox, language: Language, keep: bool) -> Self {
        let inner = Arc::new(ContextInner {
            sandbox: Arc::downgrade(&sandbox.inner),
            language,
            kernel: Default::default(),
            process: Default::default(),
            closed: AtomicBool::new(false),
            lost: Default::default(),
        });
        sandbox
            .inner
            .code_contexts
            .lock()
            .expect("not poisoned")
            .push(Arc::downgrade(&inner));
        CodeContext {
            inner,
            _sandbox: keep.then(|| sandbox.clone()),
        }
    }

    /// The context's language.
    pub fn language(&self) -> Language {
        self.inner.language
    }

    fn error(&self, kind: InterpreterErrorKind, reason: impl Into<String>) -> SandboxError {
        SandboxError::Interpreter {
            language: self.inner.language.name(),
            kind,
            reason: reason.into(),
        }
    }

    fn sandbox(&self) -> Result<Sandbox, SandboxError> {
        match self.inner.sandbox.upgrade() {
            Some(inner) => Ok(Sandbox { inner }),
            None => Err(self.error(InterpreterErrorKind::Closed, "its sandbox is gone")),
        }
    }

    fn check_open(&self) -> Result<(), SandboxError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(self.error(InterpreterErrorKind::Closed, "the context was closed"));
        }
        Ok(())
    }

    /// Runs `code` to its end and returns what it did. An exception in the code is the
    /// execution's [`error`](Execution::error), not an `Err`; a timeout interrupts it (the
    /// context keeps its state) and sets [`timed_out`](Execution::timed_out). A paused or
    /// hibernated sandbox resumes first.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Interpreter`]: [`Died`](InterpreterErrorKind::Died) when the kernel
    /// died during the cell, or was ended by a hibernation or a snapshot since the last run
    /// (its state is gone; the next run starts a new one), [`Closed`](InterpreterErrorKind::Closed),
    /// [`Unavailable`](InterpreterErrorKind::Unavailable); the sandbox's errors.
    ///
    /// # Cancel safety
    ///
    /// A dropped run interrupts its cell; the next run first waits for that cell's end (or
    /// starts a new kernel, saying so, if it does not end within 3 s).
    pub async fn run(&self, code: impl Into<Code>) -> Result<Execution, SandboxError> {
        self.run_with(code.into(), None).await
    }

    /// Runs `code`, giving its output and results as they come: a stream of
    /// [`ExecutionEvent`]s, then [`ExecutionStream::finish`] for the whole [`Execution`].
    pub fn run_streaming(&self, code: impl Into<Code>) -> ExecutionStream {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (this, code) = (self.clone(), code.into());
        let task = tokio::spawn(async move { this.run_with(code, Some(tx)).await });
        ExecutionStream {
            events: rx,
            task: Some(task),
        }
    }

    /// Interrupts the running cell (`KeyboardInterrupt` in Python and JavaScript; the shell's
    /// foreground command gets `SIGINT`): the context and its state stay. Between cells an
    /// interrupt is ignored, though one sent as a cell ends may reach the next.
    pub async fn interrupt(&self) -> Result<(), SandboxError> {
        let process = self.inner.process.lock().expect("not poisoned").clone();
        match process {
            Some(process) => process.signal(nix::sys::signal::Signal::SIGINT).await,
            None => Ok(()),
        }
    }

    /// Ends the kernel (its state is lost; a running cell is interrupted first) and starts a
    /// new one.
    ///
    /// # Errors
    ///
    /// Those of [`Sandbox::code_context`].
    pub async fn restart(&self) -> Result<(), SandboxError> {
        let _ = self.interrupt().await;
        let mut kernel = self.inner.kernel.lock().await;
        self.stop(&mut kernel);
        self.check_open()?;
        *self.inner.lost.lock().expect("not poisoned") = None;
        *kernel = Some(self.start_kernel().await?);
        Ok(())
    }

    /// Ends the kernel (a running cell's is killed); later runs fail with
    /// [`Closed`](InterpreterErrorKind::Closed).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // Dropping the process kills the kernel, which ends a running cell's wait.
        let process = self.inner.process.lock().expect("not poisoned").take();
        drop(process);
        let _ = self.interrupt().await;
        let mut kernel = self.inner.kernel.lock().await;
        self.stop(&mut kernel);
    }

    fn stop(&self, kernel: &mut Option<Kernel>) {
        *kernel = None;
        *self.inner.process.lock().expect("not poisoned") = None;
    }

    async fn ensure_kernel(&self) -> Result<(), SandboxError> {
        let mut kernel = self.inner.kernel.lock().await;
        if kernel.is_none() {
            *kernel = Some(self.start_kernel().await?);
        }
        Ok(())
    }

    /// Starts the context's kernel and waits for its "ready".
    async fn start_kernel(&self) -> Result<Kernel, SandboxError> {
        let sandbox = self.sandbox()?;
        let language = self.inner.language;
        let (command, args): (&str, Vec<String>) = match language {
            Language::Python => (
                "python3",
                vec!["-u".into(), "-I".into(), "-c".into(), PYTHON_KERNEL.into()],
            ),
            Language::JavaScript => ("node", vec!["-e".into(), JS_KERNEL.into()]),
            Language::Shell => (
                "sh",
                vec![
                    "-c".into(),
                    "command -v bash >/dev/null 2>&1 && exec bash --noprofile --norc -s || exec sh -s"
                        .into(),
                ],
            ),
        };
        let exec = ExecConfig {
            // The kernel lives until closed; each cell has its own timeout.
            timeout: Some(Duration::MAX),
            ..ExecConfig::new(command, args)
        };
        let started = KERNEL_EXEC.scope((), sandbox.exec(&exec)).await;
        let mut process = match started {
            Ok(p) => p,
            Err(SandboxError::CommandNotFound { message, .. }) => {
                return Err(self.error(
                    InterpreterErrorKind::Unavailable,
                    format!(
                        "the sandbox's root has no {command}: {}",
                        message.unwrap_or_default()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let mut stdin = process.stdin.take().expect("piped stdin");
        let stdout = process.stdout.take().expect("piped stdout");
        let stderr = process.stderr.take().expect("piped stderr");
        let stderr_tail = Arc::new(std::sync::Mutex::new(String::new()));
        let (stderr_tx, stderr_rx) = tokio::sync::mpsc::channel(STDERR_BACKLOG);
        tokio::spawn(read_stderr(stderr, Arc::clone(&stderr_tail), stderr_tx));
        let (requests, mut pending) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            while let Some(request) = pending.recv().await {
                if stdin.write_all(&request).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        });
        let process = Arc::new(process);
        let mut kernel = Kernel {
            process: Arc::clone(&process),
            requests,
            lines: FramedRead::new(
                stdout,
                AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_LINE),
            ),
            stderr: stderr_rx,
            stderr_tail,
            in_cell: false,
            run_id: String::new(),
            count: 0,
        };
        if language == Language::Shell {
            // An interrupt ends the foreground command, not the shell.
            kernel.send(Bytes::from_static(b"trap ':' INT\n"));
        } else {
            let ready = tokio::time::timeout(READY_DEADLINE, async {
                loop {
                    match kernel.lines.next().await {
                        Some(Ok(line)) => {
                            let (_, message) = parse_owned(&String::from_utf8_lossy(&line));
                            if let Some(Message::Ready { .. }) = message {
                                return true;
                            }
                        }
                        Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {}
                        _ => return false,
                    }
                }
            })
            .await;
            if !matches!(ready, Ok(true)) {
                return Err(self.error(
                    InterpreterErrorKind::Died,
                    format!("the kernel did not start: {}", kernel.tail().await),
                ));
            }
        }
        *self.inner.process.lock().expect("not poisoned") = Some(process);
        Ok(kernel)
    }

    async fn run_with(
        &self,
        code: Code,
        events: Option<tokio::sync::mpsc::UnboundedSender<ExecutionEvent>>,
    ) -> Result<Execution, SandboxError> {
        self.check_open()?;
        let sandbox = self.sandbox()?;
        // A paused or hibernated sandbox resumes first.
        drop(sandbox.enter().await?);
        let config = sandbox.config();
        let timeout = code.timeout.or(config.timeout).unwrap_or(Duration::MAX);
        let limit = code
            .output_limit
            .or(config.output_limit)
            .unwrap_or(u64::MAX);
        let mut guard = self.inner.kernel.lock().await;
        self.check_open()?;
        // The cell keeps the sandbox busy (idle lifetimes and sleeps wait for it).
        let _busy = sandbox.inner.activity.busy();
        drop(sandbox);
        if let Some(why) = self.inner.lost.lock().expect("not poisoned").take() {
            self.stop(&mut guard);
            return Err(self.error(InterpreterErrorKind::Died, why));
        }
        // A cell a dropped run left: its end is waited for first.
        if guard.as_ref().is_some_and(|k| k.in_cell) {
            let settled = match guard.as_mut() {
                Some(kernel) => self.settle(kernel).await,
                None => false,
            };
            if !settled {
                self.stop(&mut guard);
                return Err(self.error(
                    InterpreterErrorKind::Died,
                    "a dropped run's cell did not stop at an interrupt: its kernel was ended \
                     and its state is gone; run again for a fresh one",
                ));
            }
        }
        if guard.is_none() {
            *guard = Some(self.start_kernel().await?);
        }
        let kernel = guard.as_mut().expect("just started");
        let begun = Instant::now();
        kernel.in_cell = true;
        // Each run's end names it: an end the code forged (it runs in the kernel's process)
        // for an earlier run never ends a later one.
        kernel.run_id = crate::host::state::random_token();
        kernel.count += 1;
        let request = match self.inner.language {
            Language::Shell => shell_cell(&code.source, &kernel.run_id),
            _ => {
                let mut line = serde_json::to_string(&serde_json::json!({
                    "t": "run",
                    "id": kernel.run_id,
                    "code": code.source,
                    "limit": limit,
                }))
                .expect("a request serialises");
                line.push('\n');
                line
            }
        };
        kernel.send(Bytes::from(request));
        // A run dropped from here on interrupts its cell.
        let mut interrupt_on_drop = InterruptOnDrop(Some(Arc::clone(&kernel.process)));
        let mut cell = Cell::new(limit, events);
        cell.execution.execution_count = kernel.count;
        let deadline = begun
            .checked_add(timeout)
            .map(tokio::time::Instant::from_std);
        let mut interrupted_at: Option<tokio::time::Instant> = None;
        // The kernel's stderr marker for this run has come (shell, node).
        let mut stderr_done = false;
        loop {
            let wait_until = match interrupted_at {
                Some(at) => Some(at + INTERRUPT_GRACE),
                None => deadline,
            };
            let next = async {
                tokio::select! {
                    line = kernel.lines.next() => Incoming::Line(line),
                    Some(text) = kernel.stderr.recv() => Incoming::Stderr(text),
                }
            };
            let incoming = match wait_until {
                Some(t) => tokio::time::timeout_at(t, next).await.ok(),
                None => Some(next.await),
            };
            match incoming {
                Some(Incoming::Stderr(text)) => {
                    if text == format!("\x1e{}\n", kernel.run_id) {
                        stderr_done = true;
                    } else {
                        cell.stream(1, &text);
                    }
                }
                Some(Incoming::Line(Some(Ok(line)))) => {
                    let parsed = parse_line_bytes(line).await;
                    if cell.take(parsed, self.inner.language, &kernel.run_id) {
                        // The shell's and node's own stderr is a pipe of its own: what the
                        // cell wrote there comes up to the marker the kernel writes after it.
                        if self.inner.language != Language::Python && !stderr_done {
                            let marker = format!("\x1e{}\n", kernel.run_id);
                            let until = tokio::time::Instant::now() + STDERR_MARKER_WAIT;
                            while let Ok(Some(text)) =
                                tokio::time::timeout_at(until, kernel.stderr.recv()).await
                            {
                                if text == marker {
                                    break;
                                }
                                cell.stream(1, &text);
                            }
                        }
                        break;
                    }
                }
                Some(Incoming::Line(Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)))) => {
                    // Skipped whole: a line past the bound is no message, and no text kept.
                    cell.execution.stdout_dropped += MAX_LINE as u64;
                }
                Some(Incoming::Line(_)) => {
                    let reason = format!(
                        "the kernel died during cell {} (its state is gone): {}",
                        cell.execution.execution_count,
                        kernel.tail().await
                    );
                    interrupt_on_drop.0 = None;
                    self.stop(&mut guard);
                    return Err(self.error(InterpreterErrorKind::Died, reason));
                }
                None if interrupted_at.is_none() => {
                    cell.execution.timed_out = true;
                    interrupted_at = Some(tokio::time::Instant::now());
                    let _ = kernel
                        .process
                        .signal(nix::sys::signal::Signal::SIGINT)
                        .await;
                }
                None => {
                    interrupt_on_drop.0 = None;
                    self.stop(&mut guard);
                    return Err(self.error(
                        InterpreterErrorKind::Died,
                        format!(
                            "the cell ran past its timeout ({timeout:?}) and did not stop at an \
                             interrupt within {INTERRUPT_GRACE:?}: the kernel was ended"
                        ),
                    ));
                }
            }
        }
        interrupt_on_drop.0 = None;
        kernel.in_cell = false;
        let mut execution = cell.execution;
        execution.wall_time = begun.elapsed();
        Ok(execution)
    }

    /// Waits for the end of a cell a dropped run left (interrupted when it was dropped; once
    /// more if it has not ended within a moment). Whether the kernel is usable.
    async fn settle(&self, kernel: &mut Kernel) -> bool {
        let (language, id) = (self.inner.language, kernel.run_id.clone());
        let mut cell = Cell::new(0, None);
        let mut interrupted = false;
        let give_up = tokio::time::Instant::now() + INTERRUPT_GRACE;
        loop {
            let wait = if interrupted {
                give_up
            } else {
                tokio::time::Instant::now() + SETTLE_QUIET
            };
            match tokio::time::timeout_at(wait, kernel.lines.next()).await {
                Ok(Some(Ok(line))) => {
                    let parsed = parse_line_bytes(line).await;
                    if cell.take(parsed, language, &id) {
                        kernel.in_cell = false;
                        // Its stderr, up to its marker, is not the next cell's.
                        while let Ok(text) = kernel.stderr.try_recv() {
                            if text == format!("\x1e{id}\n") {
                                break;
                            }
                        }
                        return true;
                    }
                }
                Ok(Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded))) => {}
                Ok(_) => return false,
                Err(_) if !interrupted => {
                    interrupted = true;
                    let _ = kernel
                        .process
                        .signal(nix::sys::signal::Signal::SIGINT)
                        .await;
                }
                Err(_) => return false,
            }
        }
    }
}

/// What the run loop waits on.
enum Incoming {
    Line(Option<Result<Bytes, AnyDelimiterCodecError>>),
    Stderr(String),
}

/// Interrupts a cell whose run was dropped.
struct InterruptOnDrop(Option<Arc<crate::ContainerProcess>>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(process) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = process.signal(nix::sys::signal::Signal::SIGINT).await;
            });
        }
    }
}

/// A kernel's line, decoded (invalid UTF-8 replaced) and parsed; a long one on the blocking
/// pool.
async fn parse_line_bytes(line: Bytes) -> (Option<String>, Option<Message>) {
    if line.len() <= PARSE_INLINE {
        return parse_owned(&String::from_utf8_lossy(&line));
    }
    tokio::task::spawn_blocking(move || parse_owned(&String::from_utf8_lossy(&line)))
        .await
        .unwrap_or((None, None))
}

impl Kernel {
    fn send(&self, request: Bytes) {
        // A writer that has gone (the kernel died) shows as the end of its stdout.
        let _ = self.requests.send(request);
    }

    /// What the kernel last wrote to its own stderr (after a moment for its reader to catch
    /// up with a death).
    async fn tail(&self) -> String {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tail = self.stderr_tail.lock().expect("not poisoned");
        if tail.trim().is_empty() {
            "it said nothing".to_owned()
        } else {
            tail.trim().to_owned()
        }
    }
}

/// The shell's cell: the code, in a single-quoted variable (its quotes escaped), run by
/// `eval` in the shell itself (its directory and variables stay) with stdin from `/dev/null`
/// (the shell's own stdin is the cells'), then the run's marker on stderr and its end on
/// stdout, with the status. `command` keeps functions named `eval` or `printf` out of the
/// wrapper.
fn shell_cell(source: &str, id: &str) -> String {
    let quoted = source.replace('\'', r"'\''");
    format!(
        "__osb_src='{quoted}'\n\
         command eval \"$__osb_src\" </dev/null\n\
         __osb_rc=$?; if [ $__osb_rc = 0 ]; then __osb_ok=true; else __osb_ok=false; fi\n\
         command printf '\\036%s\\n' '{id}' >&2\n\
         command printf '\\n\\036{{\"t\":\"done\",\"ok\":%s,\"status\":%d,\"id\":\"{id}\"}}\\n' \"$__osb_ok\" \"$__osb_rc\"\n"
    )
}

/// One cell's collection: its execution so far, the caps, and where its events go.
struct Cell {
    execution: Execution,
    limit: u64,
    /// Bytes of results and errors kept.
    results_size: usize,
    events: Option<tokio::sync::mpsc::UnboundedSender<ExecutionEvent>>,
    /// The shell's stdout held back one line: the line before the end marker ends with the
    /// marker's own newline.
    pending_shell: Option<String>,
}

impl Cell {
    fn new(limit: u64, events: Option<tokio::sync::mpsc::UnboundedSender<ExecutionEvent>>) -> Self {
        Cell {
            execution: Execution::default(),
            limit,
            results_size: 0,
            events,
            pending_shell: None,
        }
    }

    fn event(&self, event: ExecutionEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Adds `text` to stdout (`index` 0) or stderr within the limit.
    fn stream(&mut self, index: usize, text: &str) {
        let (kept, dropped) = match index {
            0 => (
                &mut self.execution.stdout,
                &mut self.execution.stdout_dropped,
            ),
            _ => (
                &mut self.execution.stderr,
                &mut self.execution.stderr_dropped,
            ),
        };
        let room = self.limit.saturating_sub(kept.len() as u64);
        let mut take = text.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        kept.push_str(&text[..take]);
        *dropped = dropped.saturating_add((text.len() - take) as u64);
        if take > 0 {
            let part = text[..take].to_owned();
            self.event(match index {
                0 => ExecutionEvent::Stdout(part),
                _ => ExecutionEvent::Stderr(part),
            });
        }
    }

    /// Whether `size` more bytes of results fit; counts them if so.
    fn room_for(&mut self, size: usize) -> bool {
        if self.results_size.saturating_add(size) > RESULTS_LIMIT {
            return false;
        }
        self.results_size += size;
        true
    }

    /// Takes one parsed line of the kernel's; whether the cell is over.
    fn take(
        &mut self,
        (raw, message): (Option<String>, Option<Message>),
        language: Language,
        run_id: &str,
    ) -> bool {
        if language == Language::Shell {
            return self.take_shell(raw, message, run_id);
        }
        if let Some(raw) = raw {
            self.stream(0, &format!("{raw}\n"));
        }
        match message {
            Some(Message::Stream { n, s }) => self.stream(usize::from(n != "stdout"), &s),
            Some(Message::Display { data, main }) => {
                let size: usize = data.values().map(|v| v.to_string().len()).sum();
                if !self.room_for(size) {
                    return false;
                }
                let bundle = MimeBundle {
                    data,
                    is_main_result: main,
                };
                self.event(ExecutionEvent::Result(bundle.clone()));
                self.execution.results.push(bundle);
            }
            Some(Message::Error {
                ename,
                evalue,
                traceback,
            }) => {
                let size =
                    ename.len() + evalue.len() + traceback.iter().map(String::len).sum::<usize>();
                if !self.room_for(size) {
                    return false;
                }
                let error = ExecutionError {
                    name: ename,
                    value: evalue,
                    traceback,
                };
                self.event(ExecutionEvent::Error(error.clone()));
                self.execution.error = Some(error);
            }
            Some(Message::Done {
                id,
                cpu_ms,
                rss_kib,
                dropped,
                ..
            }) if id == run_id => {
                // The code may forge any number here: bounded, never a panic.
                let cpu = if cpu_ms.is_finite() {
                    cpu_ms.clamp(0.0, 1e12)
                } else {
                    0.0
                };
                self.execution.cpu_time = Duration::from_secs_f64(cpu / 1e3);
                self.execution.peak_rss_kib = rss_kib;
                self.execution.stdout_dropped =
                    self.execution.stdout_dropped.saturating_add(dropped[0]);
                self.execution.stderr_dropped =
                    self.execution.stderr_dropped.saturating_add(dropped[1]);
                return true;
            }
            Some(Message::Ready { .. } | Message::Done { .. }) | None => {}
        }
        false
    }

    fn take_shell(&mut self, raw: Option<String>, message: Option<Message>, token: &str) -> bool {
        if let Some(Message::Done { ok, id, status, .. }) = &message
            && id == token
        {
            // What came right before the marker, less the newline the marker put after it.
            if let Some(held) = self.pending_shell.take() {
                self.stream(0, &held);
            }
            if let Some(raw) = raw {
                self.stream(0, &raw);
            }
            if !ok {
                let error = ExecutionError {
                    name: "ExitStatus".into(),
                    value: format!("the cell's last command exited with {status}"),
                    traceback: Vec::new(),
                };
                self.event(ExecutionEvent::Error(error.clone()));
                self.execution.error = Some(error);
            }
            return true;
        }
        // Anything else is the shell's output, a forged marker included.
        let line = match (raw, message) {
            (Some(raw), _) => raw,
            (None, _) => String::new(),
        };
        if let Some(held) = self.pending_shell.take() {
            self.stream(0, &format!("{held}\n"));
        }
        self.pending_shell = Some(line);
        false
    }
}

/// Reads a kernel's own stderr to its end: each line (invalid UTF-8 replaced, over-long
/// ones cut) goes to the running cell when there is room, and the last 4 KiB are kept for a
/// death's reason. Never stops early, so the kernel never writes into a closed pipe.
async fn read_stderr(
    stderr: tokio::process::ChildStderr,
    tail: Arc<std::sync::Mutex<String>>,
    cells: tokio::sync::mpsc::Sender<String>,
) {
    let codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), 64 << 10);
    let mut lines = FramedRead::new(stderr, codec);
    while let Some(read) = lines.next().await {
        let line = match read {
            Ok(line) => format!("{}\n", String::from_utf8_lossy(&line)),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => "[a line over 64 KiB]\n".into(),
            Err(_) => break,
        };
        let _ = cells.try_send(line.clone());
        let mut tail = tail.lock().expect("not poisoned");
        tail.push_str(&line);
        if tail.len() > 4096 {
            let cut = tail.len() - 4096;
            let cut = (cut..tail.len())
                .find(|&i| tail.is_char_boundary(i))
                .unwrap_or(tail.len());
            tail.drain(..cut);
        }
    }
}

/// A running cell's events ([`CodeContext::run_streaming`]): stdout, stderr, results and its
/// error as they come; then [`finish`](Self::finish) for the whole execution. Dropping it
/// interrupts the cell.
#[derive(Debug)]
pub struct ExecutionStream {
    events: tokio::sync::mpsc::UnboundedReceiver<ExecutionEvent>,
    task: Option<tokio::task::JoinHandle<Result<Execution, SandboxError>>>,
}

impl ExecutionStream {
    /// Waits for the cell's end (the events not read yet are in the execution too).
    ///
    /// # Errors
    ///
    /// Those of [`CodeContext::run`].
    pub async fn finish(mut self) -> Result<Execution, SandboxError> {
        let task = self.task.take().expect("finished once");
        task.await.unwrap_or_else(|e| {
            Err(SandboxError::Process {
                context: "running a cell",
                source: std::io::Error::other(e.to_string()),
            })
        })
    }
}

impl futures::Stream for ExecutionStream {
    type Item = ExecutionEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ExecutionEvent>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for ExecutionStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
