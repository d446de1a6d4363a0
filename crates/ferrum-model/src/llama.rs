//! The Llama architecture: weights from GGUF, and the forward pass over a [`Batch`].
//!
//! One call computes every row of the batch through all layers (RMSNorm, RoPE in GGUF's
//! "normal" adjacent-pair layout, grouped-query attention over the paged KV cache, SwiGLU MLP)
//! and returns logits only for the rows asked for. Single-sequence generation is a batch of one.
//! Activations are quantized per weight type exactly as llama.cpp does (see [`crate::quant`]),
//! which is what makes logits agree with it. Every row is computed the same way whatever else
//! is in the batch, so a request's tokens never depend on its batch-mates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod config;
mod matmul;

pub use config::LlamaConfig;

use crate::attention::{attend_run, Arith, AttnScratch, AttnTarget};
use crate::batch::Batch;
use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kv::KvCache;
use crate::quant::{self, Kernels};
use crate::threadpool::{split_range, ThreadPool};
use matmul::project;

/// How the matrix products round. Each choice computes every row the same way in any batch
/// (batch invariance); they differ in rounding, which this model amplifies (see
/// `docs/benchmarks.md`, "Numerics").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Numerics {
    /// llama.cpp's x86 order of operations, bit for bit: the golden tests compare against it.
    #[default]
    LlamaCpp,
    /// Q4_1 products with the interleaved kernels (`quant::Q4_1x8`): each block's integer sum
    /// is exact and scaled once. About 1.5x faster prefill on AVX2; outputs differ from
    /// llama.cpp's by rounding.
    Fast,
}

/// A weight matrix in its quantized form, read in place from the mapped file.
pub struct QMatrix {
    /// Element type.
    pub dtype: GgmlType,
    /// Output features (rows).
    pub rows: usize,
    /// Input features (elements per row).
    pub cols: usize,
    row_bytes: usize,
    ptr: *const u8,
    len: usize,
    /// Q4_1 weights repacked for the interleaved kernels (`quant::Q4_1x8`), with
    /// [`Numerics::Fast`] and rows in whole groups of 8 (any other matrix keeps llama.cpp's
    /// kernels, for every row alike); the mapped bytes still serve row lookups (embeddings).
    packed: Option<quant::Q4_1x8>,
    /// Keeps the mapping that `ptr` points into alive.
    _file: Arc<GgufFile>,
}

// SAFETY: the bytes are immutable for the life of the mapping, which `_file` keeps alive.
unsafe impl Send for QMatrix {}
unsafe impl Sync for QMatrix {}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {}x{})", self.dtype, self.rows, self.cols)
    }
}

impl QMatrix {
    fn load(
        file: &Arc<GgufFile>,
        name: &str,
        cols: usize,
        rows: usize,
        numerics: Numerics,
    ) -> Result<Self> {
        let t = file
            .tensor(name)
            .ok_or_else(|| Error::gguf(format!("missing tensor {name:?}")))?;
        if t.row_len() != cols || t.n_rows() != rows {
            return Err(Error::gguf(format!(
                "tensor {name:?} has shape {:?}, expected [{cols}, {rows}]",
                t.dims
            )));
        }
        if quant::vec_dot_type(t.dtype) == GgmlType::F32 && t.dtype != GgmlType::F32 {
            // F16/BF16 matrices are fine too: the kernels dot them against f32 activations.
        }
        let data = file.tensor_data(t);
        let packed = match t.dtype {
            GgmlType::Q4_1 if numerics == Numerics::Fast => {
                quant::Q4_1x8::from_gguf(data, rows, cols)
            }
            _ => None,
        };
        Ok(QMatrix {
            dtype: t.dtype,
            rows,
            cols,
            row_bytes: t.dtype.row_bytes(cols as u64)? as usize,
            ptr: data.as_ptr(),
            len: data.len(),
            packed,
            _file: Arc::clone(file),
        })
    }

    /// All rows' bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len came from a slice of the mapping that `_file` keeps alive.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Bytes of one row.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
}

/// A loaded Llama model: configuration and weights. Immutable and shareable across threads.
pub struct LlamaModel {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// How the matrix products round.
    pub numerics: Numerics,
    /// The file the weights are read from (tokenizer and template metadata live there too).
    pub file: Arc<GgufFile>,
    tok_embd: QMatrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    /// `None` when the LM head is tied to the embedding.
    output: Option<QMatrix>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("config", &self.config)
            .finish()
    }
}

fn load_f32(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = file
        .tensor(name)
        .ok_or_else(|| Error::gguf(format!("missing tensor {name:?}")))?;
    if t.n_elements() != len as u64 {
        return Err(Error::gguf(format!(
            "tensor {name:?} has {} elements, expected {len}",
            t.n_elements()
        )));
    }
    let mut out = vec![0.0; len];
    quant::dequantize_row(t.dtype, file.tensor_data(t), &mut out);
    Ok(out)
}

impl LlamaModel {
    /// Builds the model over an opened GGUF file, checking every tensor's presence and shape,
    /// with llama.cpp's numerics.
    pub fn load(file: Arc<GgufFile>) -> Result<Self> {
        Self::load_with(file, Numerics::LlamaCpp)
    }

    /// [`LlamaModel::load`] with a choice of [`Numerics`].
    pub fn load_with(file: Arc<GgufFile>, numerics: Numerics) -> Result<Self> {
        let c = LlamaConfig::from_gguf(&file)?;
        let q = |name: &str, cols, rows| QMatrix::load(&file, name, cols, rows, numerics);
        let kv_dim = c.n_kv_heads * c.head_dim;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: load_f32(&file, &n("attn_norm"), c.n_embd)?,
                wq: q(&n("attn_q"), c.n_embd, c.n_embd)?,
                wk: q(&n("attn_k"), c.n_embd, kv_dim)?,
                wv: q(&n("attn_v"), c.n_embd, kv_dim)?,
                wo: q(&n("attn_output"), c.n_embd, c.n_embd)?,
                ffn_norm: load_f32(&file, &n("ffn_norm"), c.n_embd)?,
                w_gate: q(&n("ffn_gate"), c.n_embd, c.n_ff)?,
                w_up: q(&n("ffn_up"), c.n_embd, c.n_ff)?,
                w_down: q(&n("ffn_down"), c.n_ff, c.n_embd)?,
            });
        }
        let tok_embd = q("token_embd.weight", c.n_embd, c.vocab_size)?;
        let output = match file.tensor("output.weight") {
            Some(_) => Some(q("output.weight", c.n_embd, c.vocab_size)?),
            None => None,
        };
        let output_norm = load_f32(&file, "output_norm.weight", c.n_embd)?;
        Ok(LlamaModel {
            config: c,
            numerics,
            file,
            tok_embd,
            layers,
            output_norm,
            output,
        })
    }

    /// Opens and loads a GGUF model file.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::load(Arc::new(GgufFile::open(path)?))
    }

    fn lm_head(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.tok_embd)
    }
}

/// Reusable per-step buffers, grown to the largest batch seen and then reused, so the steady
/// decode loop does not allocate.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: Vec<u8>,
    pos: Vec<u32>,
    seq_of: Vec<u32>,
    /// Attention work: runs of consecutive rows of one sequence, as (first row, rows).
    runs: Vec<(u32, u32)>,
    logits: Vec<f32>,
    head_x: Vec<f32>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// A raw pointer that parallel sections write through at disjoint offsets.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every user writes only indices no other thread writes in the same section.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// Everything needed to run forward steps: the model, its KV pool, a thread pool and scratch.
pub struct LlamaRunner {
    model: Arc<LlamaModel>,
    kv: KvCache,
    pool: ThreadPool,
    kernels: &'static Kernels,
    scratch: Scratch,
}

impl std::fmt::Debug for LlamaRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LlamaRunner({:?}, {:?}, {:?})",
            self.model.config, self.kv, self.pool
        )
    }
}

thread_local! {
    /// Each pool thread's attention buffers (grown to the longest context seen).
    static ATTN: std::cell::RefCell<AttnScratch> = std::cell::RefCell::new(AttnScratch::default());
}

/// Most rows of one sequence whose attention shares one conversion of the context (bounds
/// the work item, so threads stay balanced on a long prompt).
const ATTN_RUN: usize = 32;

impl LlamaRunner {
    /// A runner with a KV pool of `num_blocks` blocks of `block_size` tokens and `n_threads`
    /// threads (0 = one per core).
    pub fn new(
        model: Arc<LlamaModel>,
        num_blocks: usize,
        block_size: usize,
        n_threads: usize,
    ) -> Result<Self> {
        let kv = KvCache::new(model.config.kv_shape(), num_blocks, block_size)?;
        Ok(LlamaRunner {
            model,
            kv,
            pool: ThreadPool::new(n_threads),
            kernels: quant::kernels(),
            scratch: Scratch::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<LlamaModel> {
        &self.model
    }

    /// The KV pool (read-only; the engine hands out block ids).
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// The KV pool, mutably (for copy-on-write of shared blocks).
    pub fn kv_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }

    /// Threads in the pool.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The SIMD kernel set in use.
    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// Runs the batch through the model, writing K/V for its tokens into their blocks, and
    /// returns logits for `batch.logits_rows` as a row-major `rows x vocab` slice.
    pub fn forward(&mut self, batch: &Batch) -> Result<&[f32]> {
        batch.validate(self.kv.num_blocks(), self.kv.block_size())?;
        let model = Arc::clone(&self.model);
        let c = &model.config;
        let t = batch.tokens.len();
        let vocab = c.vocab_size;
        if let Some(&bad) = batch.tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        for s in &batch.seqs {
            if s.ctx_before + s.len > c.context_length.max(1) * 64 {
                return Err(Error::invalid("sequence is implausibly long"));
            }
        }
        let (e, kvd, ff) = (c.n_embd, c.n_kv_heads * c.head_dim, c.n_ff);
        let sc = &mut self.scratch;
        grow(&mut sc.x, t * e);
        grow(&mut sc.xn, t * e);
        grow(&mut sc.q, t * e);
        grow(&mut sc.k, t * kvd);
        grow(&mut sc.v, t * kvd);
        grow(&mut sc.attn, t * e);
        grow(&mut sc.tmp, t * e);
        grow(&mut sc.gate, t * ff);
        grow(&mut sc.up, t * ff);
        sc.pos.clear();
        sc.seq_of.clear();
        sc.runs.clear();
        for (si, s) in batch.seqs.iter().enumerate() {
            let first = sc.pos.len();
            for i in 0..s.len {
                sc.pos.push((s.ctx_before + i) as u32);
                sc.seq_of.push(si as u32);
            }
            for r in (0..s.len).step_by(ATTN_RUN) {
                sc.runs
                    .push(((first + r) as u32, ATTN_RUN.min(s.len - r) as u32));
            }
        }
        // Embeddings.
        for (i, &tok) in batch.tokens.iter().enumerate() {
            quant::dequantize_row(
                model.tok_embd.dtype,
                model.tok_embd.row(tok as usize),
                &mut sc.x[i * e..(i + 1) * e],
            );
        }
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        for (li, layer) in model.layers.iter().enumerate() {
            // Attention block.
            rms_norm_rows(
                &self.pool,
                &sc.x[..t * e],
                &layer.attn_norm,
                c.rms_eps,
                &mut sc.xn[..t * e],
            );
            let qkv = [
                (&layer.wq, &mut sc.q[..t * e]),
                (&layer.wk, &mut sc.k[..t * kvd]),
                (&layer.wv, &mut sc.v[..t * kvd]),
            ];
            project(
                &self.pool,
                self.kernels,
                qkv,
                &sc.xn[..t * e],
                e,
                &mut sc.acts,
            );
            {
                // RoPE and the K/V store, rows split over the pool (a prompt chunk's rows
                // are independent, and each writes its own KV slot).
                let writer = self.kv.writer();
                let (qp, kp) = (SharedOut(sc.q.as_mut_ptr()), SharedOut(sc.k.as_mut_ptr()));
                let (v, pos, seq_of) = (&sc.v, &sc.pos, &sc.seq_of);
                let body = |tid: usize, nt: usize| {
                    for i in split_range(t, tid, nt, 1) {
                        let p = pos[i] as usize;
                        // SAFETY: row i of q and k is handled by this thread only.
                        let (qi, ki) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(qp.ptr().add(i * e), e),
                                std::slice::from_raw_parts_mut(kp.ptr().add(i * kvd), kvd),
                            )
                        };
                        rope(qi, c.head_dim, c.rope_dim, p, c.rope_base);
                        rope(ki, c.head_dim, c.rope_dim, p, c.rope_base);
                        let s = &batch.seqs[seq_of[i] as usize];
                        // SAFETY: each row is a distinct (sequence, position), so a distinct
                        // KV slot; no other thread stores it.
                        unsafe {
                            writer.store(li, &s.block_table, p, ki, &v[i * kvd..(i + 1) * kvd])
                        };
                    }
                };
                if t >= 8 {
                    self.pool.run(body);
                } else {
                    body(0, 1);
                }
            }
            attention(
                &self.pool,
                self.kernels,
                &self.kv,
                li,
                batch,
                c,
                &sc.pos,
                &sc.seq_of,
                &sc.runs,
                &sc.q[..t * e],
                scale,
                &mut sc.attn[..t * e],
            );
            let wo = [(&layer.wo, &mut sc.tmp[..t * e])];
            project(
                &self.pool,
                self.kernels,
                wo,
                &sc.attn[..t * e],
                e,
                &mut sc.acts,
            );
            add_in_place(&mut sc.x[..t * e], &sc.tmp[..t * e]);
            // MLP block.
            rms_norm_rows(
                &self.pool,
                &sc.x[..t * e],
                &layer.ffn_norm,
                c.rms_eps,
                &mut sc.xn[..t * e],
            );
            let gate_up = [
                (&layer.w_gate, &mut sc.gate[..t * ff]),
                (&layer.w_up, &mut sc.up[..t * ff]),
            ];
            project(
                &self.pool,
                self.kernels,
                gate_up,
                &sc.xn[..t * e],
                e,
                &mut sc.acts,
            );
            swiglu(&mut sc.gate[..t * ff], &sc.up[..t * ff]);
            let down = [(&layer.w_down, &mut sc.tmp[..t * e])];
            project(
                &self.pool,
                self.kernels,
                down,
                &sc.gate[..t * ff],
                ff,
                &mut sc.acts,
            );
            add_in_place(&mut sc.x[..t * e], &sc.tmp[..t * e]);
        }
        // LM head on the requested rows only.
        let r = batch.logits_rows.len();
        grow(&mut sc.head_x, r * e);
        for (j, &row) in batch.logits_rows.iter().enumerate() {
            sc.head_x[j * e..(j + 1) * e].copy_from_slice(&sc.x[row * e..(row + 1) * e]);
        }
        grow(&mut sc.xn, r * e);
        rms_norm_rows(
            &self.pool,
            &sc.head_x[..r * e],
            &model.output_norm,
            c.rms_eps,
            &mut sc.xn[..r * e],
        );
        let head = model.lm_head();
        grow(&mut sc.logits, r * vocab);
        let logits = [(head, &mut sc.logits[..r * vocab])];
        project(
            &self.pool,
            self.kernels,
            logits,
            &sc.xn[..r * e],
            e,
            &mut sc.acts,
        );
        Ok(&sc.logits[..r * vocab])
    }
}

/// `out[i] = x[i] / rms(x[i]) * w` per row, rounding as ggml does.
fn rms_norm_rows(pool: &ThreadPool, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    let rows = x.len() / n;
    let outp = SharedOut(out.as_mut_ptr());
    let body = |tid: usize, nt: usize| {
        for r in split_range(rows, tid, nt, 1) {
            let xr = &x[r * n..(r + 1) * n];
            // Squares in f32, summed in f64, as ggml does.
            let ss: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
            let scale = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
            for j in 0..n {
                // SAFETY: row r is written by this thread only.
                unsafe { *outp.ptr().add(r * n + j) = xr[j] * scale * w[j] };
            }
        }
    };
    if rows >= 8 {
        pool.run(body);
    } else {
        body(0, 1);
    }
}

/// Quantizes each row of `x` (rows of `n`) to the activation type for weights of `w_ty`.
fn quantize_rows<'a>(
    pool: &ThreadPool,
    w_ty: GgmlType,
    x: &[f32],
    n: usize,
    buf: &'a mut Vec<u8>,
) -> &'a [u8] {
    let a_ty = quant::vec_dot_type(w_ty);
    let rb = a_ty
        .row_bytes(n as u64)
        .expect("activation row size: programming error") as usize;
    let rows = x.len() / n;
    grow(buf, rows * rb);
    let base = buf.as_mut_ptr() as usize;
    let body = |tid: usize, nt: usize| {
        for r in split_range(rows, tid, nt, 1) {
            // SAFETY: each row's bytes are written by exactly one thread.
            let dst = unsafe { std::slice::from_raw_parts_mut((base as *mut u8).add(r * rb), rb) };
            quant::quantize_row(a_ty, &x[r * n..(r + 1) * n], dst);
        }
    };
    if rows >= 8 {
        pool.run(body);
    } else {
        body(0, 1);
    }
    &buf[..rows * rb]
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of every head by `pos * base^(-2i/rope_dim)`,
/// stepping the angle by repeated multiplication as ggml does.
fn rope(x: &mut [f32], head_dim: usize, rope_dim: usize, pos: usize, base: f32) {
    let theta_scale = base.powf(-2.0 / rope_dim as f32);
    let mut cs = [(0f32, 0f32); 256];
    let mut theta = pos as f32;
    let pairs = (rope_dim / 2).min(cs.len());
    for c in cs.iter_mut().take(pairs) {
        *c = (theta.cos(), theta.sin());
        theta *= theta_scale;
    }
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in cs.iter().take(pairs).enumerate() {
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            // ggml is built with floating-point contraction, so its rotation is two fused
            // multiply-adds; matching that keeps K and Q bit-identical to llama.cpp's.
            head[2 * i] = a.mul_add(cos, -(b * sin));
            head[2 * i + 1] = a.mul_add(sin, b * cos);
        }
    }
}

/// Attention for every row: one work item per (run of rows of one sequence, KV head), dealt
/// to threads round-robin, since a prompt's later rows cost more than its earlier ones.
#[allow(clippy::too_many_arguments)]
fn attention(
    pool: &ThreadPool,
    kernels: &Kernels,
    kv: &KvCache,
    layer: usize,
    batch: &Batch,
    c: &LlamaConfig,
    pos: &[u32],
    seq_of: &[u32],
    runs: &[(u32, u32)],
    q: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let n_rep = c.n_heads / c.n_kv_heads;
    let hd = c.head_dim;
    let items = runs.len() * c.n_kv_heads;
    let outp = SharedOut(out.as_mut_ptr());
    let row_len = c.n_heads * hd;
    // One item per claim, last first: a prompt's later runs see the longest contexts, so the
    // costliest items go out first and the cheap ones even out the end.
    let next = AtomicUsize::new(0);
    pool.run(|_, _| {
        ATTN.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= items {
                    break;
                }
                let item = items - 1 - k;
                let (run, g) = (item / c.n_kv_heads, item % c.n_kv_heads);
                let (first, rows) = (runs[run].0 as usize, runs[run].1 as usize);
                let last = first + rows - 1;
                let s = &batch.seqs[seq_of[first] as usize];
                let target = AttnTarget {
                    kv,
                    layer,
                    kv_head: g,
                    block_table: &s.block_table,
                    n_ctx: pos[last] as usize + 1,
                };
                let arith = if s.decode {
                    Arith::Decode
                } else {
                    Arith::Prompt
                };
                let head_off = g * n_rep * hd;
                let q_row = |i: usize| {
                    let o = (first + i) * row_len + head_off;
                    &q[o..o + n_rep * hd]
                };
                let out_row = |i: usize| {
                    let o = (first + i) * row_len + head_off;
                    // SAFETY: this (row, kv head) group's output heads are written by this
                    // thread only, and each row is handed out once.
                    unsafe { std::slice::from_raw_parts_mut(outp.ptr().add(o), n_rep * hd) }
                };
                attend_run(
                    kernels,
                    &target,
                    rows,
                    q_row,
                    out_row,
                    n_rep,
                    scale,
                    arith,
                    &mut scratch,
                );
            }
        });
    });
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`, with SiLU as ggml's vectorized kernel computes it
/// (`x / (1 + expf(-x))` with its own `expf`), so the activations that get re-quantized match
/// llama.cpp's bit for bit.
fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[inline(always)]
    fn body(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + crate::attention::ggml_expf(0.0 - *g)) * u;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { crate::attention::swiglu_avx2(gate, up) };
        return;
    }
    body(gate, up)
}
