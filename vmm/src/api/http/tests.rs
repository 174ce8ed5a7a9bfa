use super::*;

use std::io::{Read, Write};
use std::thread::JoinHandle;

/// Sends `bytes` from a client thread (then stops writing and reads the answer, if any) and
/// reads one request on the server side.
fn exchange(bytes: Vec<u8>, timeout: Duration) -> (Result<Request, HttpError>, Vec<u8>) {
    let (mut server, mut client) = UnixStream::pair().unwrap();
    let writer: JoinHandle<Vec<u8>> = std::thread::spawn(move || {
        let _ = client.write_all(&bytes);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = client.read_to_end(&mut answer);
        answer
    });
    let result = read_request(&mut server, timeout);
    drop(server);
    (result, writer.join().unwrap())
}

fn read(bytes: &[u8]) -> Result<Request, HttpError> {
    exchange(bytes.to_vec(), Duration::from_secs(5)).0
}

#[test]
fn reads_a_request_with_content_length() {
    let r = read(
        b"PUT /api/v1/vm.create?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path, "/api/v1/vm.create");
    assert_eq!(r.body, b"hello");
    let r = read(b"GET http://localhost/api/v1/vm.info HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("GET", "/api/v1/vm.info")
    );
    assert!(r.body.is_empty());
}

#[test]
fn reads_a_chunked_body_and_ignores_trailers() {
    let r = read(
        b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.body, b"Wikipedia");
    assert!(matches!(
        read(b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWikiXX0\r\n\r\n"),
        Err(HttpError::Malformed(_))
    ));
}

#[test]
fn answers_expect_100_continue_before_the_body() {
    let (mut server, mut client) = UnixStream::pair().unwrap();
    let client_side = std::thread::spawn(move || {
        client
            .write_all(b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut line = [0u8; 17];
        client.read_exact(&mut line).unwrap();
        client.write_all(b"abc").unwrap();
        line
    });
    let r = read_request(&mut server, Duration::from_secs(5)).unwrap();
    assert_eq!(r.body, b"abc");
    assert_eq!(&client_side.join().unwrap(), b"HTTP/1.1 100 \r\n\r\n");
}

#[test]
fn refuses_what_is_too_large_before_reading_it() {
    let head = format!(
        "PUT /a HTTP/1.1\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        MAX_BODY + 1
    );
    let (result, answer) = exchange(head.into_bytes(), Duration::from_secs(5));
    assert!(matches!(result, Err(HttpError::BodyTooLarge)));
    assert_eq!(result.unwrap_err().status(), Some(413));
    assert!(
        answer.is_empty(),
        "no 100 Continue for a body that is refused"
    );

    let huge = "PUT /a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
    assert!(matches!(
        read(huge.as_bytes()),
        Err(HttpError::Malformed(_))
    ));

    let chunk = format!(
        "PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        MAX_BODY + 1
    );
    assert!(matches!(
        read(chunk.as_bytes()),
        Err(HttpError::BodyTooLarge)
    ));

    let mut long = b"GET /a HTTP/1.1\r\nX-Long: ".to_vec();
    long.resize(MAX_HEAD + 10, b'a');
    assert!(matches!(read(&long), Err(HttpError::HeadTooLarge)));

    let mut many = b"GET /a HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let e = read(&many).unwrap_err();
    assert!(matches!(e, HttpError::HeadTooLarge), "{e}");
    assert_eq!(e.status(), Some(431));
}

#[test]
fn refuses_what_is_not_http_1() {
    let cases: [(&[u8], u16); 7] = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /a HTTP/2.0\r\n\r\n", 505),
        (
            b"PUT /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (b"PUT /a HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
        (
            b"PUT /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
        (b"PUT /a HTTP/1.1\r\nContent-Length: +1\r\n\r\na", 400),
        (
            b"PUT /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
    ];
    for (bytes, status) in cases {
        let e = read(bytes).unwrap_err();
        assert_eq!(
            e.status(),
            Some(status),
            "{e} for {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn a_silent_or_vanishing_client_gets_no_answer_or_a_timeout() {
    assert!(matches!(read(b""), Err(HttpError::Closed)));
    assert!(matches!(
        read(b"PUT /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
        Err(HttpError::Closed)
    ));
    let (mut server, _client) = UnixStream::pair().unwrap();
    let e = read_request(&mut server, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, HttpError::Timeout(_)));
    assert_eq!(e.status(), Some(408));
}

#[test]
fn writes_responses_with_length_and_allow() {
    let (mut server, mut client) = UnixStream::pair().unwrap();
    let response = Response {
        status: 405,
        body: Some("[\"x\"]".into()),
        allow: Some("GET"),
    };
    write_response(&mut server, &response, false).unwrap();
    drop(server);
    let mut text = String::new();
    client.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405 \r\n"), "{text}");
    assert!(text.contains("\r\nAllow: GET\r\n"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Length: 5\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n[\"x\"]"), "{text}");

    let (mut server, mut client) = UnixStream::pair().unwrap();
    let response = Response {
        status: 204,
        body: Some("ignored".into()),
        allow: None,
    };
    write_response(&mut server, &response, false).unwrap();
    drop(server);
    let mut text = String::new();
    client.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 204 \r\n"), "{text}");
    assert!(!text.contains("Content-Length"), "{text}");
    assert!(text.ends_with("close\r\n\r\n"), "{text}");
}
