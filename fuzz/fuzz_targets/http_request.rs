//! One API connection's bytes, as a client sends them: `read_request` frames a request (head,
//! `Content-Length` or chunked body) or refuses it, within its bounds, never panicking.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vmm::api::http::{read_request, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let (mut client, mut server) = UnixStream::pair().expect("socketpair");
    // The socket buffer holds far more than the fuzzer's inputs; a write that does not fit
    // is cut, which is just another input.
    client
        .set_nonblocking(true)
        .expect("non-blocking client end");
    let _ = client.write_all(data);
    drop(client);
    if let Ok(request) = read_request(&mut server, Duration::from_secs(1)) {
        assert!(request.body.len() <= MAX_BODY);
    }
});
