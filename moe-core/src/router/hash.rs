//! Hash routing (Roller et al. 2021): a token's experts depend on its id alone.
//!
//! With a table from the checkpoint ([`HashTable`]: I32 `[k, n_vocab]`, or `[n_vocab]` for
//! k = 1), token `v` takes the experts of row `v` in stored order. Without one, the
//! documented seeded hash [`seeded_experts`] stands in.

use super::mask::ExpertMask;
use super::{MAX_K, splitmix64};
use crate::error::{Error, Result, name_of};
use crate::quant::TensorType;
use crate::tensor::TensorView;

/// A validated token → experts table: every entry is an active expert, no row repeats an
/// expert, so routing through it can never produce an out-of-range id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashTable<'a> {
    view: TensorView<'a>,
    data: &'a [u8],
    k: usize,
    n_vocab: u64,
}

impl<'a> HashTable<'a> {
    /// Checks `view` (I32, `[k, n_vocab]` or `[n_vocab]` with k = 1) against a layer of
    /// `n_expert` experts under `mask`.
    pub fn new(view: TensorView<'a>, k: usize, n_expert: usize, mask: &ExpertMask) -> Result<Self> {
        if view.ty() != TensorType::I32 {
            return Err(Error::UnsupportedType { ty: view.ty() });
        }
        let dims = view.dims();
        let shape = |dim: u8, expected: u64, actual: u64| Error::BadTensorShape {
            tensor: name_of("hash table"),
            dim,
            expected,
            actual,
        };
        let (row_len, n_vocab) = match dims {
            [n] => (1, *n),
            [r, n] => (*r, *n),
            _ => return Err(shape(2, 1, view.ne(2))),
        };
        if row_len != k as u64 {
            return Err(shape(0, k as u64, row_len));
        }
        let table = HashTable {
            view,
            data: view.data(),
            k,
            n_vocab,
        };
        for v in 0..n_vocab {
            let mut row = [0u32; MAX_K];
            for (j, slot) in row.iter_mut().enumerate().take(k) {
                let id = table.raw(v, j);
                let ok = id >= 0 && (id as u64) < n_expert as u64 && mask.is_active(id as usize);
                if !ok {
                    return Err(Error::ExpertOutOfRange {
                        expert: id as i64,
                        n_expert: n_expert as u64,
                    });
                }
                *slot = id as u32;
            }
            if has_repeat(&row[..k]) {
                return Err(Error::InvalidRouterConfig {
                    reason: "hash table row repeats an expert",
                });
            }
        }
        Ok(table)
    }

    /// The table as stored.
    pub fn view(&self) -> TensorView<'a> {
        self.view
    }

    /// Experts per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Token ids covered.
    pub fn n_vocab(&self) -> u64 {
        self.n_vocab
    }

    fn raw(&self, token: u64, j: usize) -> i32 {
        let at = (token as usize * self.k + j) * 4;
        match self.data.get(at..at + 4) {
            Some(b) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => -1,
        }
    }

    /// Writes token `token`'s experts into `out[..k]` (validated at construction).
    pub fn experts(&self, token: u32, out: &mut [u32]) -> Result<()> {
        if u64::from(token) >= self.n_vocab {
            return Err(Error::TokenOutOfRange {
                token,
                n_vocab: self.n_vocab,
            });
        }
        for (j, slot) in out.iter_mut().enumerate().take(self.k) {
            *slot = self.raw(u64::from(token), j) as u32;
        }
        Ok(())
    }
}

/// Whether some id occurs twice.
fn has_repeat(ids: &[u32]) -> bool {
    ids.iter()
        .enumerate()
        .any(|(i, a)| ids[i + 1..].contains(a))
}

/// The seeded hash used when a checkpoint has no table. For slot `j` of token `v`, with
/// `n` active experts: start at rank `splitmix64(splitmix64(seed ^ v) + j) mod n` and take
/// the first rank at or after it (cyclically) not already taken by slots `0..j`; the rank
/// names the active expert of that rank in ascending id order. Needs `k <= n`.
pub fn seeded_experts(
    seed: u64,
    token: u32,
    k: usize,
    n_expert: usize,
    mask: &ExpertMask,
    out: &mut [u32],
) {
    let n_active = mask.active(n_expert).count();
    if n_active == 0 {
        return;
    }
    let base = splitmix64(seed ^ u64::from(token));
    let mut ranks = [0usize; MAX_K];
    let k = k.min(n_active).min(out.len()).min(MAX_K);
    for j in 0..k {
        let mut r = (splitmix64(base.wrapping_add(j as u64)) % n_active as u64) as usize;
        while ranks[..j].contains(&r) {
            r = (r + 1) % n_active;
        }
        ranks[j] = r;
        out[j] = mask.nth_active(n_expert, r).unwrap_or(0) as u32;
    }
}
