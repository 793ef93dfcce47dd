//! Layer 5: the runtime CLI (runc, crun, runsc), crun's mount namespace, the gVisor probe,
//! and removal through the CLI (the crash sweep).

pub(crate) mod cli;
pub(crate) mod crun_ns;
pub(crate) mod gvisor;
pub(crate) mod sweep;
