//! Layer 7: the handles a spawn or an exec returns, all on a [`Supervised`](crate::supervisor::Supervised).

pub(crate) mod capture;
pub(crate) mod collect;
pub(crate) mod file;
pub(crate) mod job;
pub(crate) mod process;
pub(crate) mod pty;
pub(crate) mod relay;
