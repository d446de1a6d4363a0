//! The `ferrum` command line.
fn main() {}
