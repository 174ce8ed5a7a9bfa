//! The API socket's connections, each read and answered on a thread of its own, so that a slow
//! or idle client delays nobody else, while the VM keeps one writer: the serve loop.
//!
//! A connection's thread reads one request (within [`REQUEST_TIMEOUT`]), resolves its endpoint
//! and parses its body ([`routes::parse`]), hands it to the serve loop ([`Pending`], through a
//! channel and an eventfd the loop waits on), waits for the response and writes it (within
//! [`WRITE_TIMEOUT`]). The loop handles requests one after the
//! other with the VM state it alone owns, and never touches a socket, so no client can make it
//! wait. Malformed requests, unknown endpoints and wrong methods are answered by their thread
//! without reaching the loop.
//!
//! A connection's thread runs under the `ApiConnection` seccomp filter (socket calls only).
//!
//! At most [`MAX_CONNECTIONS`] are open at once: past that, a connection is answered `503` at
//! once and closed (as is one whose thread cannot be started), so that idle clients cannot
//! exhaust threads or descriptors. A thread gives up its place when it ends.
//!
//! Races: the loop may go away (`vmm.shutdown`, a stop) while threads still read; their
//! hand-over then fails and they close their connection. The loop drops a request's reply
//! channel only after sending the response, or without sending when it returns early; either way
//! the thread's wait ends.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::http::{self, Response};
use super::routes::{self, error_chain, Call};

/// How long a client has to send a whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing a response may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections read and answered at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// A request read and parsed off a connection, for the serve loop to carry out.
pub struct Pending {
    /// The endpoint with its parsed body.
    pub call: Call,
    /// The request's method and path (for the log).
    pub method: String,
    /// See `method`.
    pub path: String,
    /// Where the answer goes.
    pub responder: Responder,
}

/// The way back to a request's connection.
pub struct Responder {
    reply: SyncSender<Response>,
    written: Receiver<()>,
}

impl Responder {
    /// Hands `response` to the connection's thread, which writes it.
    pub fn answer(self, response: Response) -> Answered {
        // A thread that is gone (its client left) drops the response.
        let _ = self.reply.send(response);
        Answered {
            written: self.written,
        }
    }
}

/// A response handed to its connection's thread.
pub struct Answered {
    written: Receiver<()>,
}

impl Answered {
    /// Waits until the response is written, the connection failed, or the write timeout passed
    /// (the thread's own bound, plus a second).
    pub fn wait_written(self) {
        match self
            .written
            .recv_timeout(WRITE_TIMEOUT + Duration::from_secs(1))
        {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => log::warn!("api: a response was not written in time"),
        }
    }
}

/// Open connections and the requests they read.
pub struct Connections {
    to_loop: Sender<Pending>,
    from_threads: Receiver<Pending>,
    ready: Arc<EventFd>,
    open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

/// Counts one open connection until dropped.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// No connection yet.
    pub fn new() -> std::io::Result<Self> {
        let (to_loop, from_threads) = mpsc::channel();
        Ok(Connections {
            to_loop,
            from_threads,
            ready: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Readable when requests wait in [`take`](Self::take).
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Connections being read or answered now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Reads `stream` on a thread of its own, or answers 503 when too many are open.
    pub fn start(&self, mut stream: UnixStream) {
        let count = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let place = Place(self.open.clone());
        if count > MAX_CONNECTIONS {
            drop(place);
            let message = format!("too many API connections (at most {MAX_CONNECTIONS} at once)");
            refuse(&mut stream, &message);
            return;
        }
        let to_loop = self.to_loop.clone();
        let ready = self.ready.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-api-conn".into())
            .spawn(move || {
                let mut stream = stream;
                // What a client sends is parsed here: only socket calls are allowed.
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::ApiConnection) {
                    log::warn!("api: {}", super::routes::error_chain(&e));
                    return;
                }
                serve_connection(&mut stream, &to_loop, &ready);
                // The place first: a client that saw its connection close may connect again
                // at once and must find the place free.
                drop(place);
                drop(stream);
            });
        if let Err(e) = spawned {
            // The closure (with the stream and the place) is dropped; the client sees the
            // connection close without an answer.
            log::warn!("api: cannot start a connection thread: {e}");
        }
    }

    /// The requests read since the last call, in arrival order.
    pub fn take(&self) -> Vec<Pending> {
        let _ = self.ready.read();
        self.from_threads.try_iter().collect()
    }
}

/// Answers 503 on a connection the server will not read (a fresh socket: the short answer
/// fits its buffer, the write timeout bounds the rest).
fn refuse(stream: &mut UnixStream, message: &str) {
    log::debug!("api: {message}");
    match stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        Ok(()) => write_or_log(
            stream,
            &Response::error(503, vec![message.to_string()]),
            false,
        ),
        Err(e) => log::debug!("api: writing the response: {e}"),
    }
    // Drop what the client already sent, without waiting for more: closing a Unix socket
    // with unread data makes the client's next read fail with ECONNRESET.
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// A connection's thread: reads one request, has the loop answer it, writes the answer.
fn serve_connection(stream: &mut UnixStream, to_loop: &Sender<Pending>, ready: &EventFd) {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure of it anyway.
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
    {
        log::warn!("api: cannot set up a connection: {e}");
        return;
    }
    let request = match http::read_request(stream, REQUEST_TIMEOUT) {
        Ok(request) => request,
        Err(e) => return answer_bad_request(stream, &e),
    };
    let head_only = request.method == "HEAD";
    let call = match routes::parse(&request.method, &request.path, &request.body) {
        Ok(call) => call,
        Err(e) => {
            let response = routes::refused(e).response;
            log_answer(&request.method, &request.path, response.status);
            return write_or_log(stream, &response, head_only);
        }
    };
    let (reply, response) = mpsc::sync_channel(1);
    let (written_tx, written) = mpsc::sync_channel(1);
    let pending = Pending {
        call,
        method: request.method,
        path: request.path,
        responder: Responder { reply, written },
    };
    if to_loop.send(pending).is_err() {
        return;
    }
    let _ = ready.write(1);
    let Ok(response) = response.recv() else {
        return;
    };
    write_or_log(stream, &response, head_only);
    let _ = written_tx.send(());
}

/// Writes `response`, logging (at debug level: the client may simply have left) if it cannot.
fn write_or_log(stream: &mut UnixStream, response: &Response, head_only: bool) {
    if let Err(e) = http::write_response(stream, response, head_only) {
        log::debug!("api: writing the response: {e}");
    }
}

/// The debug line for a request answered with `status`.
pub(super) fn log_answer(method: &str, path: &str, status: u16) {
    log::debug!("api: {method} {path} -> {status}");
}

/// Answers a request that could not be read, when its error has a status.
fn answer_bad_request(stream: &mut UnixStream, e: &http::HttpError) {
    let message = error_chain(e);
    let Some(status) = e.status() else {
        log::debug!("api: {message}");
        return;
    };
    log::debug!("api: bad request ({status}): {message}");
    let response = Response::error(status, routes::error_messages(e));
    write_or_log(stream, &response, false);
    http::linger(stream);
}
