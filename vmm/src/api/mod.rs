//! The API socket: HTTP/1.1 with JSON over a Unix socket, with Cloud Hypervisor's endpoints
//! (see [`routes`] for them and their status codes, and `resources/api/keel-api.yaml`).
//!
//! One thread ([`ApiServer::serve`]) owns the VM ([`routes::ApiState`], at most one
//! `VmHandle`) and answers requests one after the other, so requests never race each other;
//! each connection is read and written on a thread of its own ([`connections`]), so a slow
//! or idle client stalls nobody. Between requests the loop blocks on four descriptors, with no
//! tick: the listener, the requests read, the [`StopEvent`] (SIGINT/SIGTERM in `keel`), and
//! the served VM's end eventfd, so that it notices a guest that powered off or reset when it
//! happens (the VM then shows `Shutdown`, and the server keeps serving until `vmm.shutdown`).
//!
//! [`ApiServer::bind`] creates the socket file with mode 0600 before it accepts anything (the
//! socket is bound, `chmod`ed, and only then listens, so no connection can arrive in between;
//! the process umask is left alone). An existing file at the path is refused unless it is a
//! socket nobody listens on, which is removed as stale. Dropping the server removes the socket
//! file, if it is still the one it created.

pub mod connections;
pub mod http;
pub mod routes;

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use self::connections::Connections;
pub use self::connections::{MAX_CONNECTIONS, REQUEST_TIMEOUT};
use self::routes::ApiState;
use crate::event::{wait_readable, StopEvent};

/// How long the server waits before accepting again after `accept` failed (out of
/// descriptors and the like), so that such a failure does not become a busy loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Connections the kernel queues until the serve loop accepts them.
const BACKLOG: libc::c_int = 16;

/// Errors setting up or running the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something other than a socket is at the path.
    #[error("{}: exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// Another process listens on the socket.
    #[error("{}: another process is listening on this socket", .0.display())]
    InUse(PathBuf),
    /// The existing file could not be checked or removed.
    #[error("{}: cannot check or remove the existing socket", path.display())]
    Stale {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The path cannot name a Unix socket.
    #[error("{}: a Unix socket path must be 1 to 107 bytes without NUL", .0.display())]
    BadPath(PathBuf),
    /// Creating, binding, restricting or listening on the socket failed.
    #[error("cannot listen on {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for connections failed.
    #[error("waiting for API connections failed")]
    Poll(#[source] std::io::Error),
    /// The eventfd that announces requests could not be created.
    #[error("cannot create the API's request eventfd")]
    Setup(#[source] std::io::Error),
}

/// Why [`ApiServer::serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A client asked `PUT /api/v1/vmm.shutdown` (and got its answer).
    VmmShutdown,
    /// The stop flag was raised (SIGINT/SIGTERM in `keel`).
    Interrupted,
}

/// A listening API socket.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file created, so that only it is removed.
    file_id: (u64, u64),
    connections: Connections,
}

/// Refuses `path` if something other than a stale socket is there; removes a stale one.
fn clear_stale(path: &Path) -> Result<(), ApiError> {
    let stale = |source| ApiError::Stale {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(stale(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(stale)?;
            log::info!("api: removed the stale socket {}", path.display());
            Ok(())
        }
        Err(e) => Err(stale(e)),
    }
}

fn socket_address(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), ApiError> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ApiError::BadPath(path.to_path_buf()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// The socket at `path`, mode 0600, listening. It is made under a staging name beside `path`
/// (where that fits a socket address) and hard-linked to `path` once it listens: a client that
/// waits for the file and then connects is never refused, and a `path` taken meanwhile by
/// another process is reported in use instead of replaced.
fn listen_at(path: &Path) -> Result<UnixListener, ApiError> {
    // Clients connect by `path`: it must fit a socket address itself.
    socket_address(path)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let staging = path.with_file_name(format!(".keel-api-{}-{n}", std::process::id()));
    if socket_address(&staging).is_err() {
        return listen_owner_only(path);
    }
    let _ = std::fs::remove_file(&staging);
    let listener = listen_owner_only(&staging)?;
    let linked = std::fs::hard_link(&staging, path);
    let _ = std::fs::remove_file(&staging);
    match linked {
        Ok(()) => Ok(listener),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(ApiError::InUse(path.to_path_buf())),
        Err(source) => Err(ApiError::Listen {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// socket + bind + chmod 0600 + listen: until `listen`, connections are refused, so nobody
/// connects while the file still has the umask's mode.
fn listen_owner_only(path: &Path) -> Result<UnixListener, ApiError> {
    let (addr, len) = socket_address(path)?;
    let fail = |source| ApiError::Listen {
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is an initialised sockaddr_un and `len` lies within it.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    let restricted = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let listening = restricted.and_then(|()| {
        // SAFETY: listen(2) on the socket owned above.
        if unsafe { libc::listen(socket.as_raw_fd(), BACKLOG) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    if let Err(e) = listening {
        let _ = std::fs::remove_file(path);
        return Err(fail(e));
    }
    Ok(UnixListener::from(socket))
}

impl ApiServer {
    /// Creates the socket at `path` (mode 0600), replacing only a stale socket.
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        clear_stale(path)?;
        let listener = listen_at(path)?;
        let fail = |source| ApiError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::symlink_metadata(path).map_err(fail)?;
        let server = ApiServer {
            listener,
            path: path.to_path_buf(),
            file_id: (meta.dev(), meta.ino()),
            connections: Connections::new().map_err(ApiError::Setup)?,
        };
        server.listener.set_nonblocking(true).map_err(fail)?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until `vmm.shutdown` or until `stop` is triggered. The VM in `state`
    /// is left as it is (the caller stops it).
    pub fn serve(&self, state: &mut ApiState, stop: &StopEvent) -> Result<Served, ApiError> {
        loop {
            state.refresh();
            let mut fds = vec![
                stop.as_raw_fd(),
                self.listener.as_raw_fd(),
                self.connections.ready_fd(),
            ];
            fds.extend(state.end_fd());
            let ready = wait_readable(&fds, None).map_err(ApiError::Poll)?;
            if ready[0] {
                return Ok(Served::Interrupted);
            }
            if ready[1] {
                self.accept_all();
            }
            if ready[2] && self.answer_requests(state) {
                return Ok(Served::VmmShutdown);
            }
        }
    }

    /// Accepts every connection waiting and starts reading each.
    fn accept_all(&self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.connections.start(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors and the like: keep serving the VM, try again later.
                    log::warn!("api: accept failed: {e}");
                    std::thread::sleep(ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Answers the requests read so far, in order; true after `vmm.shutdown`, once its answer
    /// is written (requests behind it are dropped unanswered).
    fn answer_requests(&self, state: &mut ApiState) -> bool {
        for pending in self.connections.take() {
            let reply = match routes::apply(pending.call, state) {
                routes::Outcome::Now(reply) => reply,
                routes::Outcome::Later(work) => {
                    answer_later(work, pending.method, pending.path, pending.responder);
                    continue;
                }
            };
            connections::log_answer(&pending.method, &pending.path, reply.response.status);
            let answered = pending.responder.answer(reply.response);
            if reply.exit {
                answered.wait_written();
                return true;
            }
        }
        false
    }
}

/// Runs `work` on a thread of its own and answers with what it returns, so that the serve
/// loop goes on meanwhile (where no thread can be started, here).
fn answer_later(
    work: Box<dyn FnOnce() -> routes::Reply + Send>,
    method: String,
    path: String,
    responder: connections::Responder,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("keel-api-work".into())
        .spawn(move || {
            let Ok((work, responder)) = rx.recv() else {
                return;
            };
            let work: Box<dyn FnOnce() -> routes::Reply + Send> = work;
            let reply = work();
            connections::log_answer(&method, &path, reply.response.status);
            let _ = connections::Responder::answer(responder, reply.response);
        });
    match spawned {
        Ok(_) => {
            let _ = tx.send((work, responder));
        }
        Err(e) => {
            log::warn!("api: cannot start a work thread ({e}); working on the serve loop");
            let reply = work();
            let _ = responder.answer(reply.response);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file_id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("api: cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests;
