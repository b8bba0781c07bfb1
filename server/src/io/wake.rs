//! Waking the event loop from other threads: the provider runtime when work it took from the
//! loop has finished, and the signal thread.
//!
//! The loop sleeps in `io_uring_enter`, so a wake-up has to be something the ring completes: a
//! byte on a socket pair whose reading end the ring polls. A flag keeps it to one byte per
//! sleep however many results arrive meanwhile, so a stream of chat pieces costs the provider
//! threads one `write` per loop pass, not one per piece.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::UnboundedSender;

/// The sending side: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Waker(Arc<Shared>);

struct Shared {
    /// A byte is on its way and the loop has not yet looked: no need for another.
    pending: AtomicBool,
    writer: UnixStream,
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker").finish_non_exhaustive()
    }
}

impl Waker {
    /// Wakes the loop if no wake-up is pending. Call after making the work visible (sending it
    /// on a channel): the loop clears the flag before it looks, so either this call sees the
    /// flag clear and writes, or the loop's look comes after the work.
    pub fn wake(&self) {
        if self.0.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        // A full socket buffer means bytes are waiting already, and they wake the loop. Any
        // other failure sent nothing: the flag must not stay set, or no later wake-up would
        // be written either.
        if let Err(error) = (&self.0.writer).write(&[1]) {
            if error.kind() != ErrorKind::WouldBlock {
                self.0.pending.store(false, Ordering::SeqCst);
                tracing::error!(%error, "cannot wake the event loop");
            }
        }
    }
}

/// The loop's side: the descriptor the ring polls.
#[derive(Debug)]
pub struct WakeReader {
    reader: UnixStream,
    waker: Waker,
}

impl WakeReader {
    /// A new pair: the reader for the loop, and wakers for everyone else (`waker()`).
    pub fn new() -> std::io::Result<WakeReader> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let waker = Waker(Arc::new(Shared {
            pending: AtomicBool::new(false),
            writer,
        }));
        Ok(WakeReader { reader, waker })
    }

    /// A sending side for another thread.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Takes the wake-up: clears the flag, then empties the socket. After this, the caller
    /// looks at everything that may have been sent (see [`Waker::wake`]).
    pub fn clear(&mut self) {
        // A swap, not a store: it synchronises with the senders' swap, so what they sent
        // before setting the flag is visible to the looks that follow.
        self.waker.0.pending.swap(false, Ordering::SeqCst);
        let mut bytes = [0u8; 64];
        // Bounded: at most a few bytes can be waiting, one per wake-up since the last clear.
        for _ in 0..16 {
            match self.reader.read(&mut bytes) {
                Ok(n) if n == bytes.len() => continue,
                _ => break,
            }
        }
    }
}

/// The services' channel to the loop: a message, then a wake-up.
pub struct WakingSender<T> {
    sender: UnboundedSender<T>,
    waker: Waker,
}

impl<T> Clone for WakingSender<T> {
    fn clone(&self) -> Self {
        WakingSender {
            sender: self.sender.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> std::fmt::Debug for WakingSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakingSender").finish_non_exhaustive()
    }
}

impl<T> WakingSender<T> {
    /// Sends on `sender`, waking the loop through `waker` each time.
    pub fn new(sender: UnboundedSender<T>, waker: Waker) -> WakingSender<T> {
        WakingSender { sender, waker }
    }

    /// Sends `value` and wakes the loop; fails only once the loop has gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.sender.send(value)?;
        self.waker.wake();
        Ok(())
    }
}
