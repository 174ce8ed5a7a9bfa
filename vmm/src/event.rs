//! Events a waiter blocks on instead of waking on a tick: [`StopEvent`] ("someone asked the
//! VM to stop": a signal, the API, an embedder) and [`wait_readable`], which blocks until one
//! of a few descriptors (an eventfd, a listening socket) is readable.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A request to stop, as an eventfd that stays readable once triggered (nobody resets it), so
/// every waiter sees it. [`StopEvent::trigger`] is one write(2): safe from a signal handler
/// through [`StopEvent::as_raw_fd`].
#[derive(Debug)]
pub struct StopEvent(EventFd);

impl StopEvent {
    /// A new, untriggered stop event.
    pub fn new() -> io::Result<Self> {
        EventFd::new(EFD_NONBLOCK).map(StopEvent)
    }

    /// Asks every waiter on this event to stop.
    pub fn trigger(&self) {
        // A full counter (2^64 - 2 triggers) is still readable; nothing is lost.
        let _ = self.0.write(1);
    }

    /// Whether [`StopEvent::trigger`] was called (without blocking).
    pub fn is_triggered(&self) -> bool {
        wait_readable(&[self.as_raw_fd()], Some(Duration::ZERO)).is_ok_and(|r| r[0])
    }
}

impl AsRawFd for StopEvent {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Blocks until one of `fds` is readable or `timeout` passes (`None`: no timeout); returns
/// which are readable (all false on timeout or when a signal interrupts the wait).
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        // Round up, so that a short timeout does not become a busy loop.
        Some(t) => t.as_micros().div_ceil(1000).min(libc::c_int::MAX as u128) as libc::c_int,
    };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs that lives across the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(pfds
        .iter()
        .map(|p| rc > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_event_stays_triggered() {
        let stop = StopEvent::new().unwrap();
        assert!(!stop.is_triggered());
        stop.trigger();
        assert!(stop.is_triggered());
        assert!(stop.is_triggered());
    }

    #[test]
    fn waiting_times_out_with_nothing_readable() {
        let stop = StopEvent::new().unwrap();
        let ready = wait_readable(&[stop.as_raw_fd()], Some(Duration::from_millis(1))).unwrap();
        assert_eq!(ready, vec![false]);
    }
}
