//! Which experts live on the GPU when not all of them fit: a pure function of usage
//! counts, byte sizes and a budget, so it is tested on any machine.
//!
//! Policy: experts are taken most-used first (ties: lower expert id first) and each is
//! placed when it still fits in what is left of the budget; one that does not fit is
//! skipped and smaller, less-used experts may still be placed after it. The result is
//! deterministic for the same input.

use moe_core::moe::{ExpertStack, MoeLayer};
use moe_core::router::RouterStats;

use crate::error::{GpuError, Result};

/// Where each expert of a layer runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// `resident[e]`: expert `e` is uploaded to the device.
    pub resident: Vec<bool>,
    /// The resident experts in the order they were chosen (most used first).
    pub order: Vec<usize>,
    /// Bytes of the resident experts.
    pub bytes: u64,
}

impl Placement {
    /// Every expert resident.
    pub fn all(expert_bytes: &[u64]) -> Self {
        Placement {
            resident: vec![true; expert_bytes.len()],
            order: (0..expert_bytes.len()).collect(),
            bytes: expert_bytes.iter().sum(),
        }
    }

    /// Number of resident experts.
    pub fn n_resident(&self) -> usize {
        self.order.len()
    }
}

/// Chooses the resident experts: `counts[e]` tokens routed to expert `e` so far,
/// `expert_bytes[e]` its size on the device, at most `budget` bytes in all.
pub fn place(counts: &[u64], expert_bytes: &[u64], budget: u64) -> Result<Placement> {
    if counts.len() != expert_bytes.len() {
        return Err(GpuError::LengthMismatch {
            expected: expert_bytes.len(),
            actual: counts.len(),
        });
    }
    let mut by_use: Vec<usize> = (0..counts.len()).collect();
    // Stable sort by descending count keeps lower ids first among equals.
    by_use.sort_by(|&a, &b| counts[b].cmp(&counts[a]));
    let mut resident = vec![false; counts.len()];
    let mut order = Vec::new();
    let mut used = 0u64;
    for e in by_use {
        let Some(next) = used.checked_add(expert_bytes[e]) else {
            continue;
        };
        if next <= budget {
            used = next;
            resident[e] = true;
            order.push(e);
        }
    }
    Ok(Placement {
        resident,
        order,
        bytes: used,
    })
}

/// [`place`] with the counts of router statistics (`tokens_per_expert`).
pub fn place_by_stats(
    stats: &RouterStats<'_>,
    expert_bytes: &[u64],
    budget: u64,
) -> Result<Placement> {
    let counts: Vec<u64> = stats
        .tokens_per_expert()
        .iter()
        .map(|&c| u64::from(c))
        .collect();
    place(&counts, expert_bytes, budget)
}

/// Bytes of each expert of a stack on the device (gate, up and down matrices).
pub fn expert_bytes(stack: &ExpertStack<'_>) -> Result<Vec<u64>> {
    (0..stack.n_expert())
        .map(|e| {
            let ffn = stack.expert(e)?;
            let gate = ffn.gate().map_or(0, |g| g.data().len());
            Ok((gate + ffn.up().data().len() + ffn.down().data().len()) as u64)
        })
        .collect()
}

/// Bytes of a layer's shared expert on the device (its matrices and, for Qwen2-MoE, its
/// gate vector; 0 without one). The shared expert is always uploaded, since every token
/// runs it: subtract this from a device budget before [`place`]ing the routed experts.
pub fn shared_bytes(layer: &MoeLayer<'_>) -> u64 {
    let shared = layer.shared();
    let ffn = shared.ffn().map_or(0, |f| {
        f.gate().map_or(0, |g| g.data().len()) + f.up().data().len() + f.down().data().len()
    });
    (ffn + shared.gate().map_or(0, |g| g.data().len())) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_used_first_within_budget() {
        let p = place(&[5, 9, 1, 7], &[10, 10, 10, 10], 25).unwrap();
        assert_eq!(p.order, vec![1, 3]);
        assert_eq!(p.resident, vec![false, true, false, true]);
        assert_eq!(p.bytes, 20);
    }

    #[test]
    fn ties_go_to_the_lower_id() {
        let p = place(&[3, 3, 3, 3], &[1; 4], 2).unwrap();
        assert_eq!(p.order, vec![0, 1]);
    }

    #[test]
    fn a_large_expert_is_skipped_for_smaller_ones() {
        let p = place(&[9, 8, 7], &[30, 10, 10], 25).unwrap();
        assert_eq!(p.order, vec![1, 2]);
        assert_eq!(p.bytes, 20);
    }

    #[test]
    fn zero_budget_places_nothing_and_all_fits_places_everything() {
        assert_eq!(place(&[1, 2], &[1, 1], 0).unwrap().n_resident(), 0);
        let p = place(&[0, 0, 0], &[4, 5, 6], 15).unwrap();
        assert_eq!(p.resident, vec![true; 3]);
        assert_eq!(p, Placement::all(&[4, 5, 6]));
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        assert!(matches!(
            place(&[1], &[1, 2], 10),
            Err(GpuError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn sizes_that_overflow_are_skipped() {
        let p = place(&[2, 1], &[u64::MAX, 1], u64::MAX).unwrap();
        assert_eq!(p.order, vec![0]);
        let p = place(&[2, 1, 0], &[u64::MAX - 1, 5, 1], u64::MAX).unwrap();
        assert_eq!(p.order, vec![0, 2]);
    }

    #[test]
    fn deterministic() {
        let counts: Vec<u64> = (0..64).map(|i| (i * 37 % 11) as u64).collect();
        let bytes: Vec<u64> = (0..64).map(|i| 100 + (i * 13 % 7) as u64).collect();
        let a = place(&counts, &bytes, 2500).unwrap();
        let b = place(&counts, &bytes, 2500).unwrap();
        assert_eq!(a, b);
        assert!(a.bytes <= 2500);
        // Every skipped expert did not fit in what was left.
        for (&resident, &size) in a.resident.iter().zip(&bytes) {
            if !resident {
                assert!(a.bytes + size > 2500);
            }
        }
    }
}
