//! `keel remote --api-socket PATH COMMAND [ARGS]`: a client for a running keel's API socket,
//! in the spirit of Cloud Hypervisor's `ch-remote`. Each command is one HTTP/1.1 request on a
//! connection of its own (keel answers with `Connection: close`): queries print the JSON body
//! as keel sent it on stdout, actions (204) print nothing. An error answer, a JSON array of
//! strings (the error chain, outermost first), becomes one line
//! `keel remote: error: A: B` on stderr and exit 1; so does a socket that cannot be reached.
//! Bad usage is one line and exit 2.
//!
//! While `snapshot` waits for its answer, a second connection polls
//! `GET /api/v1/vm.snapshot-status` once a second and shows how far the file is written on
//! stderr (when stderr is a terminal, or with `--progress`); a keel without that endpoint
//! (404) just shows no progress.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use super::{error_chain, parse_api_socket, parse_command};

/// Largest answer read from keel (counters of many vCPUs and disks stay far below).
const MAX_ANSWER: u64 = 64 << 20;
/// How often a snapshot's progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a progress poll may wait for its answer.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// `keel remote`: drives a keel serving `--api-socket PATH`.
#[derive(Parser, Debug)]
#[command(
    name = "keel remote",
    bin_name = "keel remote",
    about = "Drive a running keel through its API socket (as Cloud Hypervisor's ch-remote)"
)]
struct RemoteCli {
    /// The API socket of the keel to drive (`path=PATH` is accepted too).
    #[arg(long, value_name = "PATH", value_parser = parse_api_socket)]
    api_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// One request each.
#[derive(Subcommand, Debug)]
enum Command {
    /// Whether keel answers: its version, pid and features (GET vmm.ping).
    Ping,
    /// The VM's config and state (GET vm.info).
    Info,
    /// Every counter of the VM (GET vm.counters).
    Counters,
    /// Build a VM from a JSON VmConfig file (PUT vm.create); paths in it are keel's.
    Create {
        /// The VmConfig, in Cloud Hypervisor's shape.
        file: PathBuf,
    },
    /// Start the VM's vCPUs (PUT vm.boot).
    Boot,
    /// Park the VM's vCPUs (PUT vm.pause).
    Pause,
    /// Run a paused VM again (PUT vm.resume).
    Resume,
    /// Stop the VM, keeping its config and counters (PUT vm.shutdown).
    Shutdown,
    /// Stop the VM and forget it (PUT vm.delete).
    Delete,
    /// Stop the VM and make keel exit (PUT vmm.shutdown).
    ShutdownVmm,
    /// Save the VM to a new file and print the report (PUT vm.snapshot).
    Snapshot {
        /// `file:///PATH`, or a path (made absolute here).
        destination_url: String,
        /// live (the guest runs on while RAM is written; keel's default) or paused.
        #[arg(long, value_parser = ["live", "paused"])]
        mode: Option<String>,
        /// Show progress on stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Build the VM saved in a snapshot file; it waits Paused (PUT vm.restore).
    Restore {
        /// `file:///PATH`, or a path (made absolute here).
        source_url: String,
        /// Run the VM at once instead of leaving it Paused.
        #[arg(long)]
        resume: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The socket could not be connected.
    #[error("cannot connect to the API socket {} (is keel serving it?)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error("{what} the API socket {} failed", path.display())]
    Exchange {
        /// "writing to" or "reading from".
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not the HTTP/1.x keel sends.
    #[error("keel's answer is not HTTP/1.x as expected: {0}")]
    Malformed(String),
    /// Keel refused or failed the request: its error chain, joined.
    #[error("{0}")]
    Api(String),
    /// A file named on the command line could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A path could not be made absolute, or is not UTF-8.
    #[error("cannot make {path:?} an absolute file:// URL")]
    Url {
        /// The path as given.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `keel remote ARGS...`; `args` starts with the program name, `remote` removed.
pub fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match parse_command::<RemoteCli>("keel remote", args, 2) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(&cli.api_socket, cli.command) {
        Ok(answer) => {
            print_body(&answer.body);
            ExitCode::SUCCESS
        }
        Err(e) => {
            err_line!("keel remote: error: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// Sends `command`'s request to `socket`: keel's successful answer, or why there is none.
fn run(socket: &Path, command: Command) -> Result<Answer, RemoteError> {
    let (method, endpoint, body) = match command {
        Command::Ping => ("GET", "vmm.ping", None),
        Command::Info => ("GET", "vm.info", None),
        Command::Counters => ("GET", "vm.counters", None),
        Command::Create { file } => {
            let body = std::fs::read_to_string(&file)
                .map_err(|source| RemoteError::ReadFile { path: file, source })?;
            ("PUT", "vm.create", Some(body))
        }
        Command::Boot => ("PUT", "vm.boot", None),
        Command::Pause => ("PUT", "vm.pause", None),
        Command::Resume => ("PUT", "vm.resume", None),
        Command::Shutdown => ("PUT", "vm.shutdown", None),
        Command::Delete => ("PUT", "vm.delete", None),
        Command::ShutdownVmm => ("PUT", "vmm.shutdown", None),
        Command::Snapshot {
            destination_url,
            mode,
            progress,
        } => {
            let mut body = serde_json::json!({ "destination_url": file_url(&destination_url)? });
            if let Some(mode) = mode {
                body["mode"] = Value::String(mode);
            }
            let progress = progress || std::io::stderr().is_terminal();
            let show = |line: &str| err_line!("{line}");
            return snapshot(socket, &body.to_string(), progress.then_some(show));
        }
        Command::Restore { source_url, resume } => {
            let body =
                serde_json::json!({ "source_url": file_url(&source_url)?, "resume": resume });
            ("PUT", "vm.restore", Some(body.to_string()))
        }
    };
    exchange(socket, method, endpoint, body.as_deref(), None)?.success()
}

/// Prints an answer's body on stdout as keel sent it, with a final newline.
fn print_body(body: &[u8]) {
    if body.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(body);
    if text.ends_with('\n') {
        out_text!("{text}");
    } else {
        out_line!("{text}");
    }
}

/// `url` if it has a scheme (`file:///...`), else the path made absolute as a `file://` URL:
/// keel reads paths from its own working directory, not this one's.
fn file_url(url: &str) -> Result<String, RemoteError> {
    if url.contains("://") {
        return Ok(url.to_string());
    }
    let url_error = |source| RemoteError::Url {
        path: url.to_string(),
        source,
    };
    let path = std::path::absolute(url).map_err(url_error)?;
    let path = path.to_str().ok_or_else(|| {
        url_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the working directory is not UTF-8",
        ))
    })?;
    Ok(format!("file://{path}"))
}

/// An answer from keel.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    /// The answer if it is a 2xx; otherwise keel's error as [`RemoteError::Api`].
    fn success(self) -> Result<Answer, RemoteError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let message = match serde_json::from_slice::<Vec<String>>(&self.body) {
            Ok(chain) if !chain.is_empty() => chain.join(": "),
            _ => {
                let text = String::from_utf8_lossy(&self.body);
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                match text.is_empty() {
                    true => format!("keel answered {}", self.status),
                    false => format!("keel answered {}: {text}", self.status),
                }
            }
        };
        Err(RemoteError::Api(message))
    }
}

/// One request on a connection of its own: `METHOD /api/v1/ENDPOINT` with `body` (JSON), the
/// answer read until keel closes the connection (or `timeout` passes without data).
fn exchange(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
    timeout: Option<Duration>,
) -> Result<Answer, RemoteError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| RemoteError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let failed = |what| {
        let path = socket.to_path_buf();
        move |source| RemoteError::Exchange { what, path, source }
    };
    stream
        .set_read_timeout(timeout)
        .map_err(failed("reading from"))?;
    let mut request = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
    );
    match (method, body) {
        (_, Some(body)) => request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        ("GET", None) => request.push_str("\r\n"),
        (_, None) => request.push_str("Content-Length: 0\r\n\r\n"),
    }
    stream
        .write_all(request.as_bytes())
        .map_err(failed("writing to"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(failed("reading from"))?;
    parse_answer(&raw)
}

/// Parses a whole HTTP/1.x answer: status line `HTTP/1.x NNN[ reason]`, header fields, and
/// the body that `Content-Length` announces (everything after the head without it).
fn parse_answer(raw: &[u8]) -> Result<Answer, RemoteError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| RemoteError::Malformed(format!("no end of head in {} bytes", raw.len())))?;
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| RemoteError::Malformed("the head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)
        .ok_or_else(|| RemoteError::Malformed(format!("status line {status_line:?}")))?;
    let mut length = None;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if name.trim().eq_ignore_ascii_case("content-length") {
            let value = value.trim();
            let n = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| RemoteError::Malformed(format!("Content-Length {value:?}")))?;
            length = Some(n);
        }
    }
    let rest = &raw[end + 4..];
    let body = match length {
        None => rest,
        Some(n) => rest.get(..n).ok_or_else(|| {
            RemoteError::Malformed(format!("body of {} bytes, {n} announced", rest.len()))
        })?,
    };
    Ok(Answer {
        status,
        body: body.to_vec(),
    })
}

/// The status of `HTTP/1.x NNN`, `HTTP/1.x NNN ` or `HTTP/1.x NNN reason`.
fn parse_status_line(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let (minor, rest) = rest.split_once(' ')?;
    if minor.len() != 1 || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code = rest.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit())
        || !matches!(rest.as_bytes().get(3), None | Some(b' '))
    {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// `PUT vm.snapshot` with `body`; with `show`, the snapshot's progress goes to it once a second
/// while the answer is awaited.
fn snapshot(
    socket: &Path,
    body: &str,
    show: Option<impl FnMut(&str) + Send + 'static>,
) -> Result<Answer, RemoteError> {
    let send = || exchange(socket, "PUT", "vm.snapshot", Some(body), None)?.success();
    let Some(show) = show else {
        return send();
    };
    let (done, done_rx) = channel::<()>();
    let poll_socket = socket.to_path_buf();
    let poller = std::thread::Builder::new()
        .name("keel-progress".into())
        .spawn(move || watch_progress(&poll_socket, &done_rx, show));
    let answer = send();
    drop(done);
    if let Ok(poller) = poller {
        let _ = poller.join();
    }
    answer
}

/// Until `done` is dropped: once a second, the snapshot's progress from
/// `vm.snapshot-status`, if it is writing, to `show`. Stops for good on anything but a 200
/// (a keel without the endpoint answers 404).
fn watch_progress(socket: &Path, done: &Receiver<()>, mut show: impl FnMut(&str)) {
    while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(PROGRESS_EVERY) {
        let status = exchange(
            socket,
            "GET",
            "vm.snapshot-status",
            None,
            Some(POLL_TIMEOUT),
        );
        let Ok(Answer { status: 200, body }) = status else {
            return;
        };
        let Ok(status) = serde_json::from_slice::<Value>(&body) else {
            return;
        };
        if let Some(line) = progress_line(&status) {
            show(&line);
        }
    }
}

/// The line for a `vm.snapshot-status` answer, if a snapshot is being written.
fn progress_line(status: &Value) -> Option<String> {
    if status["state"] != "writing" {
        return None;
    }
    let written = status["written_bytes"].as_u64()?;
    let total = status["total_bytes"].as_u64()?;
    let secs = status["elapsed_ms"].as_f64()? / 1000.0;
    let mode = status["mode"].as_str().unwrap_or("?");
    let percent = match total {
        0 => 100.0,
        total => written as f64 * 100.0 / total as f64,
    };
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    Some(format!(
        "keel remote: snapshot ({mode}): {:.1} MiB of {:.1} MiB written ({percent:.0}%) in {secs:.1} s",
        mib(written),
        mib(total)
    ))
}

#[cfg(test)]
mod tests;
