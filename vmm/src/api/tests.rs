//! The socket's life (mode, stale files, removal) and the serve loop over a real socket,
//! without a VM.

use super::*;

use std::io::{Read, Write};
use std::sync::Arc;

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("keel-api-unit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn send(path: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_socket_is_owner_only_and_removed_on_drop() {
    let path = temp_path("mode.sock");
    let server = ApiServer::bind(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(server.path(), path);
    // Taken: a second server is refused and the first keeps its file.
    assert!(matches!(ApiServer::bind(&path), Err(ApiError::InUse(_))));
    assert!(path.exists());
    drop(server);
    assert!(!path.exists());
}

#[test]
fn a_stale_socket_is_replaced_and_other_files_are_refused() {
    let path = temp_path("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(
        path.exists(),
        "a dropped std listener leaves its file behind"
    );
    let server = ApiServer::bind(&path).unwrap();
    drop(server);

    std::fs::write(&path, b"data").unwrap();
    assert!(matches!(
        ApiServer::bind(&path),
        Err(ApiError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    std::fs::remove_file(&path).unwrap();

    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
    assert!(matches!(ApiServer::bind(&long), Err(ApiError::BadPath(_))));
}

#[test]
fn the_socket_appears_listening_and_leaves_no_staging_file() {
    let dir = std::env::temp_dir().join(format!("keel-api-unit-{}-stage", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("api.sock");
    let server = ApiServer::bind(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["api.sock"]);
    assert!(UnixStream::connect(&path).is_ok());
    drop(server);
    // A directory so long that no staging name fits beside a short socket name: the socket
    // is made in place.
    let deep = dir.join("d".repeat(100 - dir.as_os_str().len()));
    std::fs::create_dir(&deep).unwrap();
    let short = deep.join("s");
    assert!(socket_address(&short).is_ok());
    let server = ApiServer::bind(&short).unwrap();
    assert!(UnixStream::connect(&short).is_ok());
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn drop_leaves_a_file_that_replaced_the_socket() {
    let path = temp_path("replaced.sock");
    let server = ApiServer::bind(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's").unwrap();
    drop(server);
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn serves_until_vmm_shutdown_or_stop() {
    let path = temp_path("serve.sock");
    let server = ApiServer::bind(&path).unwrap();
    let stop = Arc::new(StopEvent::new().unwrap());
    let serving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut state = ApiState::new();
            let first = server.serve(&mut state, &stop).unwrap();
            let second = server.serve(&mut state, &stop).unwrap();
            (first, second)
        })
    };
    let answer = send(&path, b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
    assert!(answer.contains("\"version\""), "{answer}");

    // A body over the limit: 413 without reading it, and the server goes on.
    let big = format!(
        "PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        http::MAX_BODY + 1
    );
    let answer = send(&path, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n[\"request body larger than 1048576 bytes\"]"),
        "{answer}"
    );

    // A client that connects and leaves gets nothing and harms nothing.
    drop(UnixStream::connect(&path).unwrap());

    let answer = send(&path, b"PUT /api/v1/vmm.shutdown HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 204 \r\n"), "{answer}");
    stop.trigger();
    assert_eq!(
        serving.join().unwrap(),
        (Served::VmmShutdown, Served::Interrupted)
    );
    assert!(!path.exists());
}

/// Serves on `path` in a thread until `stop`; the thread returns why serving ended.
fn serving(
    path: &Path,
) -> (
    Arc<StopEvent>,
    std::thread::JoinHandle<Result<Served, ApiError>>,
) {
    let server = ApiServer::bind(path).unwrap();
    let stop = Arc::new(StopEvent::new().unwrap());
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || server.serve(&mut ApiState::new(), &stop))
    };
    (stop, handle)
}

/// Connects and sends the start of a request, leaving it unfinished.
fn idle(path: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(path).unwrap();
    stream
        .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n")
        .unwrap();
    stream
}

/// Ends the request `idle` started and reads the answer.
fn finish(mut stream: UnixStream) -> String {
    stream.write_all(b"Host: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

const PING: &[u8] = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn idle_connections_do_not_hold_up_other_clients() {
    let path = temp_path("idle.sock");
    let (stop, handle) = serving(&path);
    let waiting: Vec<UnixStream> = (0..5).map(|_| idle(&path)).collect();
    // Read one connection at a time, this answer would wait for the five idle clients to
    // time out first (REQUEST_TIMEOUT each).
    let answer = send(&path, PING);
    assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
    // They were still waiting, not timed out: each is answered once its request is whole.
    for stream in waiting {
        let answer = finish(stream);
        assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
    }
    stop.trigger();
    assert_eq!(handle.join().unwrap().unwrap(), Served::Interrupted);
}

#[test]
fn connections_past_the_limit_get_503_and_places_come_back() {
    let path = temp_path("limit.sock");
    let (stop, handle) = serving(&path);
    let waiting: Vec<UnixStream> = (0..MAX_CONNECTIONS).map(|_| idle(&path)).collect();
    // Accepted in order after the ones above, so it finds every place taken.
    let mut extra = UnixStream::connect(&path).unwrap();
    let mut answer = String::new();
    extra.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 \r\n"), "{answer}");
    assert!(answer.contains("too many API connections"), "{answer}");
    for stream in waiting {
        let answer = finish(stream);
        assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
    }
    // A connection gives its place back before it closes: all are free again.
    let again: Vec<UnixStream> = (0..MAX_CONNECTIONS).map(|_| idle(&path)).collect();
    for stream in again {
        let answer = finish(stream);
        assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
    }
    stop.trigger();
    assert_eq!(handle.join().unwrap().unwrap(), Served::Interrupted);
}
