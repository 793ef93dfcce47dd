//! Unit tests of the container supervisor with fake runtimes.
