//! Ferrum's engine: continuous batching over a paged KV cache with radix-tree prefix caching.
#![deny(missing_docs)]

pub mod block_pool;
pub mod radix;
pub mod policy;
pub mod request;
mod stream;
