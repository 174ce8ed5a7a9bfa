//! Following a guest's serial console file while the guest runs: new complete lines are
//! checked for the START and JSON-BEGIN markers, so the caller can snapshot counters exactly
//! around fio's run; optionally every byte is echoed (`--console`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::report::{JSON_BEGIN, START};

/// Most console bytes kept in memory (a guest printing without end cannot exhaust the host).
pub const MAX_CONSOLE_BYTES: usize = 64 << 20;

/// A marker line just seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// `KEEL-FIO-START`.
    Start,
    /// `KEEL-FIO-JSON-BEGIN`.
    JsonBegin,
}

/// Reading a console file as it grows.
pub struct ConsoleTail {
    path: PathBuf,
    file: Option<File>,
    text: Vec<u8>,
    scanned: usize,
    echo: bool,
    truncated: bool,
}

impl ConsoleTail {
    /// Follows `path` (which may not exist yet); `echo` copies new output to stderr.
    pub fn new(path: &Path, echo: bool) -> Self {
        ConsoleTail {
            path: path.to_path_buf(),
            file: None,
            text: Vec::new(),
            scanned: 0,
            echo,
            truncated: false,
        }
    }

    /// Reads what was added since the last call; returns the markers in the new complete
    /// lines, in order.
    pub fn poll(&mut self) -> Vec<Marker> {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return Vec::new();
        };
        let mut chunk = Vec::new();
        let room = MAX_CONSOLE_BYTES.saturating_sub(self.text.len()) as u64;
        if Read::by_ref(file)
            .take(room)
            .read_to_end(&mut chunk)
            .is_err()
        {
            return Vec::new();
        }
        if chunk.is_empty() && room == 0 && !self.truncated {
            self.truncated = true;
            log::warn!("guest console passed {MAX_CONSOLE_BYTES} bytes; the rest is ignored");
        }
        if room == 0 {
            // Skip what the guest keeps printing.
            let _ = file.seek(SeekFrom::End(0));
        }
        if self.echo && !chunk.is_empty() {
            let _ = std::io::stderr().write_all(&chunk);
        }
        self.text.extend_from_slice(&chunk);
        let mut markers = Vec::new();
        while let Some(nl) = self.text[self.scanned..].iter().position(|&b| b == b'\n') {
            let line = &self.text[self.scanned..self.scanned + nl];
            let line = String::from_utf8_lossy(line);
            let line = line.trim();
            if line == JSON_BEGIN {
                markers.push(Marker::JsonBegin);
            } else if line.starts_with(START) {
                markers.push(Marker::Start);
            }
            self.scanned += nl + 1;
        }
        markers
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything read so far (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }

    /// The last `lines` lines, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers_only_in_complete_lines() {
        let path = std::env::temp_dir().join(format!("keel-tail-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut tail = ConsoleTail::new(&path, false);
        assert!(tail.poll().is_empty(), "missing file is not an error");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"boot\r\nKEEL-FIO-START job=x\r\nKEEL-FIO-JSON-BEG")
            .unwrap();
        assert_eq!(tail.poll(), vec![Marker::Start]);
        f.write_all(b"IN\r\n{}\r\n").unwrap();
        assert_eq!(tail.poll(), vec![Marker::JsonBegin]);
        assert!(tail.poll().is_empty());
        assert!(tail.text().starts_with("boot"));
        assert_eq!(tail.tail(1).trim(), "{}");
        std::fs::remove_file(&path).unwrap();
    }
}
