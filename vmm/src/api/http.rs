//! One HTTP/1.1 exchange on an accepted API connection: read one request (head parsed by
//! `httparse`, body framed by `Content-Length` or `Transfer-Encoding: chunked`), write one
//! response with `Connection: close`.
//!
//! Everything is bounded so that a client cannot make Keel allocate or wait without limit: the
//! head (request line and headers) to [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields, the body to
//! [`MAX_BODY`] bytes (a larger `Content-Length` is refused before any of the body is read), and
//! the whole request to the caller's timeout. `Expect: 100-continue` is answered with
//! `100 Continue` once the declared length is known to fit. One request per connection keeps the
//! single-threaded server simple: clients (curl, Cloud Hypervisor's `ch-remote`) open a
//! connection per request anyway.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Largest request head (request line and header fields), in bytes.
pub const MAX_HEAD: usize = 16 << 10;
/// Largest request body, in bytes.
pub const MAX_BODY: usize = 1 << 20;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;
/// Most bytes read for one request, framing included (chunked framing can be bulky).
const MAX_WIRE: usize = MAX_HEAD + 4 * MAX_BODY;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// A request as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (`GET`, `PUT`, ...).
    pub method: String,
    /// The path without query string (`/api/v1/vm.info`).
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

/// Why a request could not be read. [`HttpError::status`] says which answer, if any, it gets.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The client closed the connection before a whole request arrived.
    #[error("the client closed the connection before a whole request arrived")]
    Closed,
    /// Reading from the connection failed.
    #[error("reading the request failed")]
    Io(#[source] std::io::Error),
    /// The request did not arrive in time.
    #[error("the request did not arrive within {0:?}")]
    Timeout(Duration),
    /// Not HTTP: a bad request line, header field or chunk.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The head is too long or has too many fields.
    #[error("request head larger than {MAX_HEAD} bytes or with more than {MAX_HEADERS} fields")]
    HeadTooLarge,
    /// The body is too long.
    #[error("request body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    /// Not HTTP/1.0 or HTTP/1.1.
    #[error("only HTTP/1.0 and HTTP/1.1 are served")]
    Version,
    /// A transfer coding other than `chunked`.
    #[error("transfer coding {0:?} is not supported (only chunked)")]
    TransferCoding(String),
    /// An expectation other than `100-continue`.
    #[error("Expect: {0:?} is not supported (only 100-continue)")]
    Expectation(String),
}

impl HttpError {
    /// The status to answer with, or `None` when nobody is left to answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Closed | HttpError::Io(_) => None,
            HttpError::Timeout(_) => Some(408),
            HttpError::Malformed(_) => Some(400),
            HttpError::HeadTooLarge => Some(431),
            HttpError::BodyTooLarge => Some(413),
            HttpError::Version => Some(505),
            HttpError::TransferCoding(_) => Some(501),
            HttpError::Expectation(_) => Some(417),
        }
    }
}

/// Bytes read from the connection and not yet consumed, with the request's limits.
struct Wire<'a> {
    stream: &'a mut UnixStream,
    buf: Vec<u8>,
    start: usize,
    deadline: Instant,
    timeout: Duration,
    total: usize,
}

impl Wire<'_> {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads what the client sent next (at least one byte).
    fn fill(&mut self) -> Result<(), HttpError> {
        let mut chunk = [0u8; 8192];
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HttpError::Timeout(self.timeout));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(HttpError::Io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(HttpError::Closed),
                Ok(n) => {
                    self.total += n;
                    if self.total > MAX_WIRE {
                        return Err(HttpError::BodyTooLarge);
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(HttpError::Timeout(self.timeout))
                }
                Err(e) => return Err(HttpError::Io(e)),
            }
        }
    }
}

/// What the head says about the body.
struct Head {
    method: String,
    path: String,
    http11: bool,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
}

/// The path of an origin-form (`/a?b`) or absolute-form (`http://host/a?b`) target, without
/// its query.
fn target_path(target: &str) -> String {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map_or(target, |r| r.find('/').map_or("/", |i| &r[i..]));
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    rest[..end].to_string()
}

fn read_head(wire: &mut Wire<'_>) -> Result<Head, HttpError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(wire.pending()) {
            Ok(httparse::Status::Complete(len)) => {
                if len > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                let head = head_from(&req)?;
                wire.consume(len);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) => {
                if wire.pending().len() >= MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
            Err(httparse::Error::Version) => return Err(HttpError::Version),
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
        wire.fill()?;
    }
}

fn head_from(req: &httparse::Request<'_, '_>) -> Result<Head, HttpError> {
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line".into()));
    };
    let mut head = Head {
        method: method.to_string(),
        path: target_path(target),
        http11: version >= 1,
        content_length: None,
        chunked: false,
        expect_continue: false,
    };
    for field in req.headers.iter() {
        let value = String::from_utf8_lossy(field.value);
        let value = value.trim();
        if field.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| HttpError::Malformed(format!("Content-Length {value:?}")))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(HttpError::Malformed(
                    "conflicting Content-Length fields".into(),
                ));
            }
            head.content_length = Some(n);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") || head.chunked {
                return Err(HttpError::TransferCoding(value.to_string()));
            }
            head.chunked = true;
        } else if field.name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(HttpError::Expectation(value.to_string()));
            }
            head.expect_continue = true;
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Err(HttpError::Malformed(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    if head.content_length.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(head)
}

fn read_sized(wire: &mut Wire<'_>, len: usize) -> Result<Vec<u8>, HttpError> {
    while wire.pending().len() < len {
        wire.fill()?;
    }
    let body = wire.pending()[..len].to_vec();
    wire.consume(len);
    Ok(body)
}

fn read_chunked(wire: &mut Wire<'_>) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(wire.pending()) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if wire.pending().len() < MAX_CHUNK_LINE => {
                    wire.fill()?
                }
                _ => return Err(HttpError::Malformed("bad chunk size line".into())),
            }
        };
        wire.consume(line);
        if size == 0 {
            break;
        }
        let room = (MAX_BODY - body.len()) as u64;
        if size > room {
            return Err(HttpError::BodyTooLarge);
        }
        let data = read_sized(wire, size as usize + 2)?;
        if !data.ends_with(b"\r\n") {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&data[..data.len() - 2]);
    }
    // Trailer fields, ignored, up to the empty line.
    loop {
        match wire.pending().windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                wire.consume(2);
                return Ok(body);
            }
            Some(at) => wire.consume(at + 2),
            None if wire.pending().len() >= MAX_HEAD => return Err(HttpError::HeadTooLarge),
            None => wire.fill()?,
        }
    }
}

/// Reads one request from `stream`, giving up after `timeout`.
pub fn read_request(stream: &mut UnixStream, timeout: Duration) -> Result<Request, HttpError> {
    let mut wire = Wire {
        stream,
        buf: Vec::new(),
        start: 0,
        deadline: Instant::now() + timeout,
        timeout,
        total: 0,
    };
    let head = read_head(&mut wire)?;
    let has_body = head.chunked || head.content_length.is_some_and(|n| n > 0);
    // HTTP/1.0 clients do not know 100 Continue; one that already sent body bytes needs none.
    if head.expect_continue && head.http11 && has_body && wire.pending().is_empty() {
        let line = format!("{}\r\n", status_line(100));
        wire.stream
            .write_all(line.as_bytes())
            .map_err(HttpError::Io)?;
    }
    let body = if head.chunked {
        read_chunked(&mut wire)?
    } else {
        // Bounded by MAX_BODY in `head_from`.
        read_sized(&mut wire, head.content_length.unwrap_or(0) as usize)?
    };
    Ok(Request {
        method: head.method,
        path: head.path,
        body,
    })
}

/// One response: a status, an optional JSON body and an optional `Allow` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// A JSON document, if any (never sent with 204).
    pub body: Option<String>,
    /// The methods an endpoint allows (for 405).
    pub allow: Option<&'static str>,
}

impl Response {
    /// An error answer: `status` with the body `messages` as a JSON array of strings, the
    /// error chain outermost first, as Cloud Hypervisor's clients read it.
    pub fn error(status: u16, messages: Vec<String>) -> Self {
        Response {
            status,
            body: Some(serde_json::Value::from(messages).to_string()),
            allow: None,
        }
    }
}

/// The status line, with an empty reason phrase (`HTTP/1.1 200 \r\n`, as Cloud Hypervisor
/// sends it): its client `ch-remote` reads everything after `HTTP/1.1 ` up to the CR as the
/// status number, so a reason phrase would make it fail to parse any answer.
pub fn status_line(status: u16) -> String {
    format!("HTTP/1.1 {status} \r\n")
}

/// Writes `response` with `Connection: close`; `head_only` leaves the body out (a HEAD request).
pub fn write_response(
    stream: &mut UnixStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let status = response.status;
    let mut text = format!(
        "{}Server: keel/{}\r\nConnection: close\r\n",
        status_line(status),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(allow) = response.allow {
        text.push_str(&format!("Allow: {allow}\r\n"));
    }
    let body = response.body.as_deref().filter(|_| status != 204);
    match body {
        Some(body) => text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )),
        None if status == 204 => text.push_str("\r\n"),
        None => text.push_str("Content-Length: 0\r\n\r\n"),
    }
    if let (Some(body), false) = (body, head_only) {
        text.push_str(body);
    }
    stream.write_all(text.as_bytes())?;
    stream.flush()
}

/// After answering a request whose body was not read: stop writing and read (and drop) what the
/// client still sends, for up to a second, so that closing does not reset the connection
/// before the client has read the answer.
pub fn linger(stream: &mut UnixStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 8192];
    let mut total = 0usize;
    while total < MAX_WIRE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;
