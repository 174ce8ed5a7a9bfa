//! The HTTP answer parsing, keel's errors as one line, URLs from paths, and a snapshot's
//! progress against a fake keel on a real Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

#[test]
fn status_lines_with_and_without_a_reason_phrase() {
    assert_eq!(parse_status_line("HTTP/1.1 200 "), Some(200));
    assert_eq!(parse_status_line("HTTP/1.1 204"), Some(204));
    assert_eq!(parse_status_line("HTTP/1.0 404 Not Found"), Some(404));
    for bad in [
        "HTTP/2 200 ",
        "HTTP/1.1 20",
        "HTTP/1.1 2000",
        "HTTP/1.1 +20 ",
        "HTTP/1.1  200",
        "HTTP/1.x 200",
        "http/1.1 200",
        "HTTP/1.1 099",
        "",
    ] {
        assert_eq!(parse_status_line(bad), None, "{bad:?}");
    }
}

#[test]
fn answers_are_framed_by_content_length() {
    let answer =
        parse_answer(b"HTTP/1.1 200 \r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}trailing")
            .unwrap();
    assert_eq!(
        answer,
        Answer {
            status: 200,
            body: b"{}".to_vec()
        }
    );
    let empty = parse_answer(b"HTTP/1.1 204 \r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(empty.status, 204);
    assert!(empty.body.is_empty());
    for bad in [
        &b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\n{}"[..],
        b"HTTP/1.1 200 \r\nContent-Length: x\r\n\r\n{}",
        b"HTTP/1.1 200 \r\nContent-Length: 2\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"",
    ] {
        assert!(
            matches!(parse_answer(bad), Err(RemoteError::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn api_error(status: u16, body: &str) -> String {
    let answer = Answer {
        status,
        body: body.as_bytes().to_vec(),
    };
    match answer.success() {
        Err(RemoteError::Api(message)) => message,
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_are_the_chain_on_one_line() {
    assert_eq!(
        api_error(400, r#"["the VM config is refused","net: not supported"]"#),
        "the VM config is refused: net: not supported"
    );
    assert_eq!(api_error(503, ""), "keel answered 503");
    assert_eq!(api_error(500, "oops\nmore"), "keel answered 500: oops more");
    let ok = Answer {
        status: 204,
        body: Vec::new(),
    };
    assert!(ok.success().is_ok());
}

#[test]
fn paths_become_absolute_file_urls() {
    assert_eq!(file_url("file:///a/b").unwrap(), "file:///a/b");
    assert_eq!(file_url("/a/b").unwrap(), "file:///a/b");
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        file_url("snap/x").unwrap(),
        format!("file://{}/snap/x", cwd.display())
    );
}

#[test]
fn progress_lines_only_while_writing() {
    let writing = serde_json::json!({"state": "writing", "mode": "live", "destination": "/x",
        "written_bytes": 512u64 << 20, "total_bytes": 2048u64 << 20, "elapsed_ms": 1500});
    assert_eq!(
        progress_line(&writing).as_deref(),
        Some("keel remote: snapshot (live): 512.0 MiB of 2048.0 MiB written (25%) in 1.5 s")
    );
    assert_eq!(progress_line(&serde_json::json!({"state": "idle"})), None);
}

/// A fake keel on a socket in a fresh directory: answers `vm.snapshot` after `delay` with a
/// report, and `vm.snapshot-status` with `status_answer`. Returns the socket.
fn fake_keel(name: &str, delay: Duration, status_answer: String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-remote-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream: UnixStream = stream.unwrap();
            let status_answer = status_answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = if request.starts_with("GET /api/v1/vm.snapshot-status ") {
                    status_answer
                } else {
                    assert!(request.starts_with("PUT /api/v1/vm.snapshot "), "{request}");
                    std::thread::sleep(delay);
                    http(200, r#"{"mode":"live","file_bytes":1}"#)
                };
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    socket
}

/// An answer as keel writes it.
fn http(status: u16, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} \r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `snapshot` against a fake keel; the progress lines shown.
fn snapshot_progress(socket: &Path) -> (Answer, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let show = move |line: &str| sink.lock().unwrap().push(line.to_string());
    let answer = snapshot(socket, r#"{"destination_url":"file:///x"}"#, Some(show)).unwrap();
    let lines = lines.lock().unwrap().clone();
    (answer, lines)
}

#[test]
fn a_snapshot_shows_its_progress_once_a_second() {
    let status = http(
        200,
        r#"{"state":"writing","mode":"live","destination":"/x","written_bytes":1048576,"total_bytes":2097152,"elapsed_ms":10}"#,
    );
    let socket = fake_keel("progress", Duration::from_millis(2500), status);
    let (answer, lines) = snapshot_progress(&socket);
    assert_eq!(answer.body, br#"{"mode":"live","file_bytes":1}"#);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("1.0 MiB of 2.0 MiB written (50%)"),
        "{lines:?}"
    );
}

#[test]
fn a_keel_without_snapshot_status_shows_no_progress() {
    let status = http(404, r#"["no such path"]"#);
    let socket = fake_keel("no-status", Duration::from_millis(1500), status);
    let (answer, lines) = snapshot_progress(&socket);
    assert_eq!(answer.status, 200);
    assert!(lines.is_empty(), "{lines:?}");
}
