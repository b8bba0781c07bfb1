//! Signals, heard on a thread of their own and handed to the loop as messages.
//!
//! The loop sleeps in `io_uring_enter`; a `signalfd` it could poll would need the signals
//! blocked in every thread, and the mask is inherited by every process the daemon starts (MCP
//! servers, agent commands), which would then ignore SIGTERM. tokio's handlers work for the
//! whole process without that, so a small runtime waits for them and wakes the loop.

use std::sync::mpsc::{self, Receiver};

use tokio::signal::unix::{signal, SignalKind};

use super::wake::Waker;

/// A signal the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    Quit,
    Hangup,
    User1,
    User2,
}

impl Signal {
    /// The signal's name, as logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Quit => "SIGQUIT",
            Signal::Hangup => "SIGHUP",
            Signal::User1 => "SIGUSR1",
            Signal::User2 => "SIGUSR2",
        }
    }
}

/// Installs the handlers (before this returns: a signal sent once it has returned is heard)
/// and starts the thread that forwards them.
///
/// Signals whose default action would end the daemon at once, with no log line and the
/// endpoint file left behind (issue 13, finding 9), are all caught: SIGQUIT drains like
/// SIGTERM; SIGHUP (a closed terminal, or a habit of asking daemons to reload) and
/// SIGUSR1/SIGUSR2 are logged and otherwise ignored.
pub fn forward(waker: Waker) -> std::io::Result<Receiver<Signal>> {
    let (installed_tx, installed_rx) = mpsc::sync_channel(1);
    let (signals_tx, signals_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = installed_tx.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let kinds = [
                    (SignalKind::interrupt(), Signal::Interrupt),
                    (SignalKind::terminate(), Signal::Terminate),
                    (SignalKind::quit(), Signal::Quit),
                    (SignalKind::hangup(), Signal::Hangup),
                    (SignalKind::user_defined1(), Signal::User1),
                    (SignalKind::user_defined2(), Signal::User2),
                ];
                let mut streams = Vec::new();
                for (kind, name) in kinds {
                    match signal(kind) {
                        Ok(stream) => streams.push((stream, name)),
                        Err(error) => {
                            let _ = installed_tx.send(Err(error));
                            return;
                        }
                    }
                }
                let _ = installed_tx.send(Ok(()));
                loop {
                    let next =
                        futures::future::select_all(streams.iter_mut().map(|(stream, name)| {
                            Box::pin(async move { (stream.recv().await, *name) })
                        }));
                    let ((heard, name), _, _) = next.await;
                    if heard.is_none() || signals_tx.send(name).is_err() {
                        return;
                    }
                    waker.wake();
                }
            });
        })?;
    match installed_rx.recv() {
        Ok(Ok(())) => Ok(signals_rx),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(std::io::Error::other("the signal thread ended at start")),
    }
}
