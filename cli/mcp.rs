//! `oci-sandbox mcp`: the sandbox as MCP tools (rmcp, the official Rust SDK), over stdio or
//! streamable HTTP. Each MCP session gets a sandbox of its own, made at its first tool call
//! and removed when the session ends (its handler is dropped: the sandbox with it); an idle
//! sandbox is closed after the idle timeout and made anew at the next call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use oci_sandbox::{
    Code, CodeContext, ExecConfig, Language, NamespaceContainer, Sandbox, SandboxConfig,
};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

/// What every session shares: the runtime and the policy.
#[derive(Debug)]
pub struct Shared {
    pub runtime: NamespaceContainer,
    pub config: SandboxConfig,
}

/// One MCP session's handler.
#[derive(Clone)]
pub struct SandboxServer {
    shared: Arc<Shared>,
    session: Arc<tokio::sync::Mutex<Option<Session>>>,
    tool_router: ToolRouter<SandboxServer>,
}

/// A session's sandbox and its code contexts.
struct Session {
    sandbox: Sandbox,
    contexts: HashMap<Language, CodeContext>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct RunCode {
    /// The code to run.
    pub code: String,
    /// python (default), javascript or shell. State persists per language within the
    /// session: variables, imports, functions, the working directory.
    pub language: Option<String>,
    /// Seconds before the cell is interrupted (its state stays); default the server's.
    pub timeout_seconds: Option<f64>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct RunCommand {
    /// A shell command line (run by `sh -c`), in /workspace or /tmp.
    pub command: String,
    /// Seconds before the command is killed; default the server's.
    pub timeout_seconds: Option<f64>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct ReadFile {
    /// An absolute path in the sandbox.
    pub path: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct WriteFile {
    /// An absolute path in the sandbox (its directory must exist).
    pub path: String,
    /// The file's new content (UTF-8 text).
    pub content: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct ListFiles {
    /// An absolute directory in the sandbox.
    pub path: String,
}

fn text(t: impl Into<String>) -> ContentBlock {
    ContentBlock::text(t)
}

fn timeout_of(seconds: Option<f64>) -> Result<Option<Duration>, ErrorData> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(s) => Err(ErrorData::invalid_params(
            format!("timeout_seconds {s}: between 0 and 86400"),
            None,
        )),
    }
}

/// A failure of the sandbox itself (not of the code or command): a tool error result, so
/// that the agent sees it and the session goes on.
fn failed(e: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![text(e.to_string())])
}

#[tool_router]
impl SandboxServer {
    pub fn new(shared: Arc<Shared>) -> Self {
        SandboxServer {
            shared,
            session: Default::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// The session's sandbox, made on first use (or again after an idle close or a reset).
    async fn sandbox(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, Session>, oci_sandbox::SandboxError> {
        let mut session = self.session.lock().await;
        let usable = session
            .as_ref()
            .is_some_and(|s| s.sandbox.ended().is_none() && !s.sandbox.is_closed());
        if !usable {
            if let Some(old) = session.take() {
                old.sandbox.close().await;
            }
            let sandbox = self.shared.runtime.create(&self.shared.config).await?;
            *session = Some(Session {
                sandbox,
                contexts: HashMap::new(),
            });
        }
        Ok(tokio::sync::MutexGuard::map(session, |s| {
            s.as_mut().expect("just made")
        }))
    }

    #[tool(
        description = "Run code in a persistent interpreter (python by default, javascript, shell): variables, imports and the working directory stay between calls of this session. Returns stdout, stderr, the value of the last expression, and plots (matplotlib) as images."
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunCode>,
    ) -> Result<CallToolResult, ErrorData> {
        let language: Language = args
            .language
            .as_deref()
            .unwrap_or("python")
            .parse()
            .map_err(|e: oci_sandbox::SandboxError| {
                ErrorData::invalid_params(e.to_string(), None)
            })?;
        let mut code = Code::new(args.code);
        if let Some(t) = timeout_of(args.timeout_seconds)? {
            code = code.timeout(t);
        }
        let mut session = match self.sandbox().await {
            Ok(s) => s,
            Err(e) => return Ok(failed(e)),
        };
        let context = match session.contexts.get(&language) {
            Some(c) => c.clone(),
            None => match session.sandbox.code_context(language).await {
                Ok(c) => {
                    session.contexts.insert(language, c.clone());
                    c
                }
                Err(e) => return Ok(failed(e)),
            },
        };
        drop(session);
        let done = match context.run(code).await {
            Ok(done) => done,
            Err(e) => return Ok(failed(e)),
        };
        let mut content = Vec::new();
        if !done.stdout.is_empty() {
            content.push(text(format!("stdout:\n{}", done.stdout)));
        }
        if !done.stderr.is_empty() {
            content.push(text(format!("stderr:\n{}", done.stderr)));
        }
        for result in &done.results {
            match result.get_text("image/png") {
                Some(png) => content.push(ContentBlock::image(png.trim(), "image/png")),
                None => {
                    let shown = result.text().unwrap_or_default();
                    let label = if result.is_main_result {
                        "result"
                    } else {
                        "display"
                    };
                    content.push(text(format!("{label}:\n{shown}")));
                }
            }
        }
        if done.timed_out {
            content.push(text(
                "timed out: the cell was interrupted (the state stays)",
            ));
        }
        Ok(match &done.error {
            Some(error) => {
                let trace = error.traceback.concat();
                let shown = if trace.trim().is_empty() {
                    error.to_string()
                } else {
                    trace.trim_end().to_owned()
                };
                content.push(text(format!("error:\n{shown}")));
                CallToolResult::error(content)
            }
            None => {
                if content.is_empty() {
                    content.push(text("(no output)"));
                }
                CallToolResult::success(content)
            }
        })
    }

    #[tool(
        description = "Run a shell command line in the session's sandbox (sh -c). Returns its exit code, stdout and stderr; a command past its timeout is killed and the result says so."
    )]
    async fn run_command(
        &self,
        Parameters(args): Parameters<RunCommand>,
    ) -> Result<CallToolResult, ErrorData> {
        let timeout = timeout_of(args.timeout_seconds)?;
        let session = match self.sandbox().await {
            Ok(s) => s,
            Err(e) => return Ok(failed(e)),
        };
        let sandbox = session.sandbox.clone();
        drop(session);
        let exec = ExecConfig {
            timeout: timeout.or(self.shared.config.timeout),
            ..ExecConfig::shell(args.command)
        };
        let out = match sandbox.exec(&exec).await {
            Ok(p) => p.wait_with_output().await,
            Err(e) => Err(e),
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => return Ok(failed(e)),
        };
        let status = &out.status;
        let head = if status.timed_out() {
            format!(
                "timed out after {:?}: killed",
                exec.timeout.unwrap_or_default()
            )
        } else {
            format!("exit code: {}", crate::run::exit_code(status))
        };
        let body = format!(
            "{head}\nstdout:\n{}\nstderr:\n{}",
            out.stdout_str(),
            out.stderr_str()
        );
        Ok(if status.success() {
            CallToolResult::success(vec![text(body)])
        } else {
            CallToolResult::error(vec![text(body)])
        })
    }

    #[tool(description = "Read a text file of the session's sandbox.")]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadFile>,
    ) -> Result<CallToolResult, ErrorData> {
        let sandbox = match self.sandbox().await {
            Ok(s) => s.sandbox.clone(),
            Err(e) => return Ok(failed(e)),
        };
        Ok(match sandbox.read_file(&args.path).await {
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Ok(t) => CallToolResult::success(vec![text(t)]),
                Err(_) => {
                    CallToolResult::success(vec![text(format!("(binary, {} bytes)", bytes.len()))])
                }
            },
            Err(e) => failed(e),
        })
    }

    #[tool(description = "Write a text file in the session's sandbox (replacing it whole).")]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFile>,
    ) -> Result<CallToolResult, ErrorData> {
        let sandbox = match self.sandbox().await {
            Ok(s) => s.sandbox.clone(),
            Err(e) => return Ok(failed(e)),
        };
        let size = args.content.len();
        Ok(match sandbox.write_file(&args.path, args.content).await {
            Ok(()) => {
                CallToolResult::success(vec![text(format!("wrote {size} bytes to {}", args.path))])
            }
            Err(e) => failed(e),
        })
    }

    #[tool(
        description = "List a directory of the session's sandbox: one entry per line, with its kind and size."
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFiles>,
    ) -> Result<CallToolResult, ErrorData> {
        let sandbox = match self.sandbox().await {
            Ok(s) => s.sandbox.clone(),
            Err(e) => return Ok(failed(e)),
        };
        Ok(match sandbox.list_dir(&args.path).await {
            Ok(entries) => {
                let lines: Vec<String> = entries
                    .iter()
                    .map(|e| format!("{}\t{:?}\t{}", e.name, e.metadata.kind, e.metadata.size))
                    .collect();
                CallToolResult::success(vec![text(lines.join("\n"))])
            }
            Err(e) => failed(e),
        })
    }

    #[tool(
        description = "Throw the session's sandbox away: the next call gets a fresh one (no files, no interpreter state)."
    )]
    async fn reset(&self) -> Result<CallToolResult, ErrorData> {
        let old = self.session.lock().await.take();
        if let Some(old) = old {
            old.sandbox.close().await;
        }
        Ok(CallToolResult::success(vec![text("the sandbox was reset")]))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "oci-sandbox",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Each session has a Linux sandbox of its own (no network unless the server \
                 allows domains): run_code keeps interpreter state between calls, \
                 run_command runs shell commands, and the file tools read and write inside it.",
            )
    }
}

/// Serves MCP on stdin and stdout until the client closes them.
pub async fn serve_stdio(shared: Arc<Shared>) -> Result<(), String> {
    let service = SandboxServer::new(shared)
        .serve(crate::jsonrpc::filtered_stdio())
        .await
        .map_err(|e| e.to_string())?;
    service.waiting().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Serves MCP over streamable HTTP on `addr` (at `/mcp`) until SIGINT or SIGTERM; each
/// session (`Mcp-Session-Id`) gets a handler, and so a sandbox, of its own.
pub async fn serve_http(shared: Arc<Shared>, addr: &str) -> Result<(), String> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let service = StreamableHttpService::new(
        move || Ok(SandboxServer::new(Arc::clone(&shared))),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
    );
    let router = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(crate::jsonrpc::parse_errors));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("oci-sandbox mcp: listening on http://{bound}/mcp");
    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            _ => return,
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}
