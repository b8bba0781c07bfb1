//! The daemon's one io_uring: submissions queued by the receive and send halves, one
//! `io_uring_enter` per loop pass that submits them and sleeps until something completes or
//! the next deadline, and completions told apart by their `user_data`.

use std::collections::VecDeque;
use std::time::Duration;

use io_uring::{cqueue, squeue, types, IoUring};

/// Submission queue entries. A pass queues at most one send per send slot, one buffer
/// re-provision per receive buffer and a few re-arms; a fuller queue is submitted early.
const ENTRIES: u32 = 256;

/// Completions taken off the ring before being handled; the rest stay in the kernel's queue
/// (4 × `ENTRIES` long) until the backlog drains.
const BACKLOG: usize = 512;

/// What a completion belongs to: the top byte of its `user_data`, the rest an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The multishot receive.
    Receive,
    /// A send, with its slot.
    Send(usize),
    /// The wake-up socket became readable.
    Wake,
    /// A receive buffer handed back, with its id (only failures complete: success is
    /// skipped).
    Provide(u16),
}

impl Op {
    const SHIFT: u32 = 56;

    /// The `user_data` that names this operation.
    pub fn user_data(self) -> u64 {
        let (tag, index) = match self {
            Op::Receive => (1, 0),
            Op::Send(slot) => (2, slot as u64),
            Op::Wake => (3, 0),
            Op::Provide(id) => (4, u64::from(id)),
        };
        (tag << Self::SHIFT) | index
    }

    fn from_user_data(data: u64) -> Option<Op> {
        let index = data & ((1 << Self::SHIFT) - 1);
        match data >> Self::SHIFT {
            1 => Some(Op::Receive),
            2 => Some(Op::Send(index as usize)),
            3 => Some(Op::Wake),
            4 => u16::try_from(index).ok().map(Op::Provide),
            _ => None,
        }
    }
}

/// One completion, copied off the ring.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub op: Op,
    /// The operation's result: a count, or a negated errno.
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// Whether a multishot operation stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// The ring and the completions taken off it but not yet handled.
pub struct Ring {
    uring: IoUring,
    backlog: VecDeque<Completion>,
    /// Sends queued since the last submission: the next `io_uring_enter` submits them, and
    /// on loopback they complete within it.
    unsubmitted_sends: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring for one thread.
    pub fn new() -> std::io::Result<Ring> {
        let uring = IoUring::builder()
            .setup_cqsize(ENTRIES * 4)
            // Only the loop's thread submits, and it enters the kernel often (every pass):
            // the kernel can skip the locking and the interrupts it would need to finish
            // receives for a thread that might not come back. Measured against the default
            // and against DEFER_TASKRUN: no difference sleeping; with busy polling
            // DEFER_TASKRUN only finishes receives when the loop waits, which lost the gain
            // (sequential across two CPUs 54 µs against 40 µs); SQPOLL's kernel thread took one
            // of this machine's two CPUs (p99 3.5–5 ms on one CPU, half the calls/s).
            .setup_single_issuer()
            .setup_coop_taskrun()
            // An entry that fails to start must not hold back the ones queued after it.
            .setup_submit_all()
            .build(ENTRIES)?;
        Ok(Ring {
            uring,
            backlog: VecDeque::with_capacity(BACKLOG),
            unsubmitted_sends: 0,
        })
    }

    /// Queues `entry` for the next submission.
    ///
    /// # Safety
    /// Whatever `entry` points at (buffers, `msghdr`s) must stay valid, and unmoved, until its
    /// completion arrives — for a multishot operation, its last one.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller keeps what the entry points at alive (this function's
            // contract).
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel now and make room.
            self.enter(0, None);
        }
    }

    /// Queues a send, like [`Ring::push`], counting it for [`Ring::submit_and_wait`].
    ///
    /// # Safety
    /// As for [`Ring::push`].
    pub unsafe fn push_send(&mut self, entry: &squeue::Entry) {
        // SAFETY: this function's contract is `push`'s.
        unsafe { self.push(entry) };
        self.unsubmitted_sends += 1;
    }

    /// Submits what is queued without waiting (answers sent early in a pass).
    pub fn submit(&mut self) {
        if self.uring.submission().is_empty() {
            return;
        }
        self.enter(0, None);
    }

    /// Submits what is queued and sleeps until a completion other than those of the sends
    /// it submits (they complete within the call on loopback, so a finished send is never a
    /// reason to wake), or until `timeout` has passed: one `io_uring_enter`. Completions
    /// waiting already must have been taken off the ring (they would count towards the wait).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) {
        self.enter(self.unsubmitted_sends + 1, timeout);
    }

    /// Submits and waits for one completion of any kind, or `timeout`.
    pub fn wait_one(&mut self, timeout: Option<Duration>) {
        self.enter(1, timeout);
    }

    fn enter(&mut self, want: usize, timeout: Option<Duration>) {
        self.unsubmitted_sends = 0;
        let result = match timeout {
            Some(timeout) if want > 0 => {
                let ts = types::Timespec::new()
                    .sec(timeout.as_secs())
                    .nsec(timeout.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(want, &args)
            }
            _ => self.uring.submit_and_wait(want),
        };
        if let Err(error) = result {
            match error.raw_os_error() {
                // The deadline passed, a signal arrived, or the completion queue is full: all
                // mean "look at what there is".
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => tracing::error!(%error, "io_uring_enter failed"),
            }
        }
    }

    /// Enters the kernel without waiting: submits what is queued and lets the kernel finish
    /// work that produces completions (a receive's task work).
    pub fn poll(&mut self) {
        self.enter(0, None);
    }

    /// Hands every send completion waiting to `handle`, leaving the others in order: a pass
    /// whose datagram budget is spent still frees its send slots.
    pub fn handle_sends(&mut self, mut handle: impl FnMut(Completion)) {
        self.reap();
        self.backlog.retain(|c| {
            if matches!(c.op, Op::Send(_)) {
                handle(*c);
                false
            } else {
                true
            }
        });
    }

    /// The next completion, oldest first.
    pub fn next_completion(&mut self) -> Option<Completion> {
        if self.backlog.is_empty() {
            self.reap();
        }
        self.backlog.pop_front()
    }

    /// If every completion waiting is one `quiet` accepts, hands them all to `handle` and
    /// returns true: the loop may sleep. Otherwise leaves them all, in order, for the pass.
    pub fn handle_if_all_quiet(
        &mut self,
        quiet: impl Fn(&Completion) -> bool,
        mut handle: impl FnMut(Completion),
    ) -> bool {
        self.reap();
        if !self.backlog.iter().all(quiet) {
            return false;
        }
        for completion in self.backlog.drain(..) {
            handle(completion);
        }
        true
    }

    fn reap(&mut self) {
        let room = BACKLOG.saturating_sub(self.backlog.len());
        for cqe in self.uring.completion().take(room) {
            match Op::from_user_data(cqe.user_data()) {
                Some(op) => self.backlog.push_back(Completion {
                    op,
                    result: cqe.result(),
                    flags: cqe.flags(),
                }),
                None => tracing::error!(
                    user_data = cqe.user_data(),
                    "completion of an unknown operation"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_names_each_operation_and_its_slot() {
        for op in [
            Op::Receive,
            Op::Send(0),
            Op::Send(63),
            Op::Wake,
            Op::Provide(31),
        ] {
            assert_eq!(Op::from_user_data(op.user_data()), Some(op));
        }
        assert_eq!(Op::from_user_data(0), None);
    }
}
