//! Layer 1: system calls, fds and processes (pidfds, fd-safe tree walks, user namespaces).

pub(crate) mod fs_tree;
pub(crate) mod pidfd;
pub(crate) mod userns;
