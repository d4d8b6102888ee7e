//! The crate's one in-place sort: a heapsort and the heap selection built on the same
//! sift, for the few places that order things (the router's top-k for large k, the
//! batch-prioritised drop order of dispatch).
//!
//! `core`'s `sort_unstable*` and `select_nth_unstable*` are faster on large inputs but
//! each use monomorphises several KiB of pattern-defeating quicksort, small-sort networks
//! and median-of-medians, which on a microcontroller is more code than a whole MoE layer
//! forward. A heap needs one short loop, no recursion and no extra memory, and stays
//! O(n log n) in the worst case. Every comparison the callers use is a total order (ties
//! broken by an index), so an unstable sort gives exactly the order any other sort would.

/// Restores the max-heap property of `heap` below `root`: no element is `less` than
/// either of its children (`heap[0]` is the greatest).
fn sift_down<T: Copy>(heap: &mut [T], mut root: usize, less: &mut impl FnMut(&T, &T) -> bool) {
    loop {
        let mut child = 2 * root + 1;
        if child >= heap.len() {
            return;
        }
        if child + 1 < heap.len() && less(&heap[child], &heap[child + 1]) {
            child += 1;
        }
        if !less(&heap[root], &heap[child]) {
            return;
        }
        heap.swap(root, child);
        root = child;
    }
}

/// Arranges `v` as a max-heap under `less`.
fn heapify<T: Copy>(v: &mut [T], less: &mut impl FnMut(&T, &T) -> bool) {
    for root in (0..v.len() / 2).rev() {
        sift_down(v, root, less);
    }
}

/// Sorts `v` ascending by `less` (a strict weak order; with a total order the result is
/// the one unique sorted order). Heapsort: O(n log n) comparisons in every case.
pub(crate) fn sort_by<T: Copy>(v: &mut [T], mut less: impl FnMut(&T, &T) -> bool) {
    heapify(v, &mut less);
    sort_heap(v, &mut less);
}

/// Sorts a max-heap (as [`select_least_by`] leaves its prefix) ascending.
fn sort_heap<T: Copy>(heap: &mut [T], less: &mut impl FnMut(&T, &T) -> bool) {
    for end in (1..heap.len()).rev() {
        heap.swap(0, end);
        sift_down(&mut heap[..end], 0, less);
    }
}

/// Moves the `k` least elements of `v` under `less` to `v[..k]`, arranged as a max-heap
/// (`v[0]` is the greatest of them, the k-th least overall); the rest of `v` holds the
/// others in no particular order. O(n log k). `k` is clamped to `v.len()`.
pub(crate) fn select_least_by<T: Copy>(
    v: &mut [T],
    k: usize,
    mut less: impl FnMut(&T, &T) -> bool,
) {
    let k = k.min(v.len());
    if k == 0 {
        return;
    }
    let (heap, rest) = v.split_at_mut(k);
    heapify(heap, &mut less);
    for x in rest.iter_mut() {
        if less(x, &heap[0]) {
            core::mem::swap(x, &mut heap[0]);
            sift_down(heap, 0, &mut less);
        }
    }
}

/// [`select_least_by`], then the selected prefix sorted ascending: the `k` least
/// elements of `v` in order.
pub(crate) fn sort_least_by<T: Copy>(v: &mut [T], k: usize, mut less: impl FnMut(&T, &T) -> bool) {
    select_least_by(v, k, &mut less);
    let k = k.min(v.len());
    sort_heap(&mut v[..k], &mut less);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random values with many ties, paired with their index: a total order.
    fn data(seed: &mut u64, n: usize, distinct: u64) -> [(u64, usize); 300] {
        let mut v = [(0, 0); 300];
        for (i, x) in v.iter_mut().enumerate().take(n) {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *x = ((*seed >> 33) % distinct, i);
        }
        v
    }

    #[test]
    fn sorts_and_selects_like_core() {
        let mut seed = 7u64;
        for n in 0..300 {
            for distinct in [1, 3, 1000] {
                let v = data(&mut seed, n, distinct);
                let mut want = v;
                want[..n].sort_unstable();
                let mut got = v;
                sort_by(&mut got[..n], |a, b| a < b);
                assert_eq!(got[..n], want[..n], "sort n={n}");
                for k in [0, 1, 2, n / 3, n / 2, n, n + 5] {
                    let mut sel = v;
                    select_least_by(&mut sel[..n], k, |a, b| a < b);
                    let kk = k.min(n);
                    let mut kept = sel;
                    kept[..kk].sort_unstable();
                    assert_eq!(kept[..kk], want[..kk], "select n={n} k={k}");
                    if kk > 0 {
                        assert_eq!(sel[0], want[kk - 1], "heap top n={n} k={k}");
                    }
                    let mut rest = sel;
                    rest[..n].sort_unstable();
                    assert_eq!(rest[..n], want[..n], "a permutation n={n} k={k}");
                    let mut sorted = v;
                    sort_least_by(&mut sorted[..n], k, |a, b| a < b);
                    assert_eq!(sorted[..kk], want[..kk], "sort_least n={n} k={k}");
                }
            }
        }
    }
}
