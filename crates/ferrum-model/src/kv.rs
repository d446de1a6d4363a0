//! Paged KV storage: one pool of fixed-size blocks per layer, K and V in f16.
//!
//! This is only the memory. Which block belongs to which sequence, reference counts and prefix
//! sharing are the engine's business; the runtime reads and writes blocks named in a
//! [`crate::Batch`]'s block tables. f16 halves the memory of f32 and is what llama.cpp stores.
//!
//! Layout: `[layer][block][kv_head][slot][head_dim]`, so one head's keys inside a block are
//! contiguous and attention streams them.

use half::f16;

/// Shape of the KV cache, derived from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer layers.
    pub n_layers: usize,
    /// KV heads per layer.
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes of K and V per token over all layers (for sizing the pool from a memory budget).
    pub fn bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * std::mem::size_of::<f16>()
    }
}

/// The K/V block pool.
pub struct KvCache {
    shape: KvShape,
    block_size: usize,
    num_blocks: usize,
    /// f16 bit patterns.
    k: Vec<u16>,
    v: Vec<u16>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KvCache({} blocks x {} tokens)",
            self.num_blocks, self.block_size
        )
    }
}

impl KvCache {
    /// Allocates `num_blocks` blocks of `block_size` tokens. Memory is zero-filled lazily by the
    /// OS, so an unused pool costs address space, not RSS.
    pub fn new(shape: KvShape, num_blocks: usize, block_size: usize) -> crate::Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(crate::Error::invalid(
                "KV cache needs at least one block of at least one token",
            ));
        }
        let len = shape
            .n_layers
            .checked_mul(num_blocks)
            .and_then(|x| x.checked_mul(shape.n_kv_heads * block_size * shape.head_dim))
            .ok_or_else(|| crate::Error::invalid("KV cache size overflows"))?;
        Ok(KvCache {
            shape,
            block_size,
            num_blocks,
            k: vec![0u16; len],
            v: vec![0u16; len],
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The shape this cache was made for.
    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// Offset of `(layer, block, head, slot 0)`.
    #[inline]
    pub(crate) fn head_offset(&self, layer: usize, block: usize, head: usize) -> usize {
        ((layer * self.num_blocks + block) * self.shape.n_kv_heads + head)
            * self.block_size
            * self.shape.head_dim
    }

    /// One head's keys in one block: `block_size * head_dim` values.
    #[inline]
    pub(crate) fn k_block(&self, layer: usize, block: usize, head: usize) -> &[u16] {
        let o = self.head_offset(layer, block, head);
        &self.k[o..o + self.block_size * self.shape.head_dim]
    }

    /// One head's values in one block.
    #[inline]
    pub(crate) fn v_block(&self, layer: usize, block: usize, head: usize) -> &[u16] {
        let o = self.head_offset(layer, block, head);
        &self.v[o..o + self.block_size * self.shape.head_dim]
    }

    /// Stores one token's K and V rows (all KV heads, `n_kv_heads * head_dim` each) at
    /// sequence position `pos` through `block_table` (tests; the forward pass stores through
    /// [`KvCache::writer`] from every pool thread).
    #[cfg(test)]
    pub(crate) fn store(
        &mut self,
        layer: usize,
        block_table: &[u32],
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let w = self.writer();
        // SAFETY: `self` is borrowed mutably, so nothing else touches the pool.
        unsafe { w.store(layer, block_table, pos, k, v) };
    }

    /// A handle through which pool threads store the rows of different tokens at once.
    pub(crate) fn writer(&mut self) -> KvWriter<'_> {
        KvWriter {
            k: self.k.as_mut_ptr(),
            v: self.v.as_mut_ptr(),
            len: self.k.len(),
            cache: std::marker::PhantomData,
            layout: KvLayout {
                shape: self.shape,
                block_size: self.block_size,
                num_blocks: self.num_blocks,
            },
        }
    }

    /// Copies block `src` into block `dst` in every layer (copy-on-write for shared blocks).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let per = self.shape.n_kv_heads * self.block_size * self.shape.head_dim;
        for layer in 0..self.shape.n_layers {
            let s = self.head_offset(layer, src as usize, 0);
            let d = self.head_offset(layer, dst as usize, 0);
            self.k.copy_within(s..s + per, d);
            self.v.copy_within(s..s + per, d);
        }
    }
}

/// The geometry [`KvWriter`] needs to place a row.
#[derive(Clone, Copy)]
struct KvLayout {
    shape: KvShape,
    block_size: usize,
    num_blocks: usize,
}

/// Writes K/V rows into a pool borrowed mutably, from several threads at once: each token's
/// rows land in their own `(block, slot)`, so rows of different tokens never overlap. Made
/// by [`KvCache::writer`]; holding it keeps the pool borrowed.
pub(crate) struct KvWriter<'a> {
    k: *mut u16,
    v: *mut u16,
    len: usize,
    layout: KvLayout,
    cache: std::marker::PhantomData<&'a mut KvCache>,
}

// SAFETY: the writer only hands out writes to disjoint token slots (see `store`'s contract).
unsafe impl Send for KvWriter<'_> {}
unsafe impl Sync for KvWriter<'_> {}

impl KvWriter<'_> {
    /// Stores one token's K and V rows (all KV heads) at position `pos` through
    /// `block_table`, converting to f16 (round to nearest even).
    ///
    /// # Safety
    /// No other thread may store the same `(block_table[pos / block_size], pos % block_size)`
    /// slot during the call.
    pub(crate) unsafe fn store(
        &self,
        layer: usize,
        block_table: &[u32],
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) {
        use half::slice::HalfFloatSliceExt;
        let l = self.layout;
        let hd = l.shape.head_dim;
        let block = block_table[pos / l.block_size] as usize;
        assert!(
            block < l.num_blocks,
            "programming error: block out of range"
        );
        let slot = pos % l.block_size;
        for h in 0..l.shape.n_kv_heads {
            let o = ((layer * l.num_blocks + block) * l.shape.n_kv_heads + h) * l.block_size * hd
                + slot * hd;
            assert!(
                o + hd <= self.len,
                "programming error: KV offset out of range"
            );
            // SAFETY: in bounds (checked above); this token's slot is written by this call only.
            let (kd, vd) = unsafe {
                (
                    std::slice::from_raw_parts_mut(self.k.add(o).cast::<f16>(), hd),
                    std::slice::from_raw_parts_mut(self.v.add(o).cast::<f16>(), hd),
                )
            };
            kd.convert_from_f32_slice(&k[h * hd..(h + 1) * hd]);
            vd.convert_from_f32_slice(&v[h * hd..(h + 1) * hd]);
        }
    }
}
