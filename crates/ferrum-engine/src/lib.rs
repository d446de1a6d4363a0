//! Ferrum's engine (being written).
#![deny(missing_docs)]
