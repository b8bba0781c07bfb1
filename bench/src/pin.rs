//! Thread placement: where the server and the client of a measurement run.
//!
//! On these 2-core VMs a wake-up across CPUs costs about 20 µs each way, more than most of
//! what is being measured, so every stack is measured under the same placement and figures
//! taken under different placements are never compared.

use std::fmt;

/// Where the two sides of a measurement run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pin {
    /// Server and client on CPU 0.
    Same,
    /// Server on CPU 1, client on CPU 0.
    Split,
    /// Wherever the scheduler puts them.
    None,
}

impl Pin {
    /// CPU for the server side, if pinned.
    pub fn server_cpu(self) -> Option<usize> {
        match self {
            Pin::Same => Some(0),
            Pin::Split => Some(1),
            Pin::None => None,
        }
    }

    /// CPU for the client side, if pinned.
    pub fn client_cpu(self) -> Option<usize> {
        match self {
            Pin::Same | Pin::Split => Some(0),
            Pin::None => None,
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Pin::Same => "same",
            Pin::Split => "split",
            Pin::None => "none",
        }
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Pins the calling thread (and what it spawns or forks afterwards) to `cpu`; with `None`,
/// lets it run on every CPU again.
///
/// Affinity is per thread and inherited by threads and processes started afterwards, so each
/// placement is measured on fresh threads started from the never-pinned main thread.
pub fn pin_current(cpu: Option<usize>) {
    if let Some(id) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            eprintln!("cannot pin to CPU {id}: measuring unpinned");
        }
    }
}
