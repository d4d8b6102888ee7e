//! Token sampling: logits in, one token id out, in caller-provided memory.
//!
//! [`Sampler`] runs the chain llama.cpp's common sampler runs by default (`common/common.h`
//! `common_params_sampling::samplers`, built into a chain by `common/sampling.cpp`, each
//! stage as `src/llama-sampling.cpp` computes it), restricted to the stages this engine
//! offers, in this order:
//!
//! **penalties → top-k → top-p → min-p → temperature → softmax → draw**
//!
//! Every stage works on a list of [`Candidate`]s (token id, logit, probability) in the
//! caller's workspace: one per vocabulary entry at the start, fewer after each filter.
//! Writing `l` for a candidate's logit and `n` for the number of candidates:
//!
//! 1. **Penalties** (`llama_sampler_penalties_apply`). Over the last `penalty_last_n`
//!    tokens of the history (all of it when shorter; none when `penalty_last_n` is 0), let
//!    `c` be how often a token occurs. Each token with `c > 0`, once (not once per
//!    occurrence), gets `l = l <= 0 ? l * repeat_penalty : l / repeat_penalty` and then
//!    `l -= c * frequency_penalty + presence_penalty`. History ids outside the vocabulary
//!    are ignored (llama.cpp counts them but never finds them among the candidates).
//! 2. **Top-k** (`llama_sampler_top_k_impl`, skipped when `top_k` is 0 or at least `n`):
//!    the `top_k` highest logits survive, sorted by descending logit. llama.cpp's sort does
//!    not say which of equal logits wins at the boundary; here the lower token id ranks
//!    first, so the result is one fixed order.
//! 3. **Top-p** (`llama_sampler_top_p_apply`, skipped when `top_p` is 1): softmax at
//!    temperature 1 over the candidates that survived top-k, `p_i = exp(l_i - max) / Σ`;
//!    in descending order, the smallest prefix whose probability sum is `>= top_p`
//!    survives, at least one candidate (llama.cpp's `min_keep`, which the common sampler
//!    leaves at 0, so its loop keeps at least one). When rounding keeps the sum just below
//!    `top_p`, all survive, as in llama.cpp. The sums are `f64` (llama.cpp's are `f32`), so
//!    a cut within rounding of `top_p` may fall one token apart from llama.cpp's.
//! 4. **Min-p** (`llama_sampler_min_p_apply`, skipped when `min_p` is 0): in logit space, as
//!    llama.cpp does: a candidate survives when `l >= max_l + ln(min_p)` (that is,
//!    `p_i >= min_p * p_max`), computed in `f32`; the maximum always survives.
//! 5. **Temperature** (`llama_sampler_temp_impl`): logits divided by `temperature`. Note
//!    that it comes *after* the filters, so top-p and min-p see the untempered
//!    distribution, exactly like llama.cpp's default order.
//! 6. **Softmax and draw** (`llama_sampler_dist_apply`): `p_i = exp((l_i - max) / T) / Σ`
//!    (the same as `softmax(l / T)`, written so that a tiny `T` cannot overflow to
//!    infinity), sums in `f64`; with `u` uniform in `[0, 1)` from [`Rng::next_f64`], the
//!    drawn candidate is the first whose running sum exceeds `u · Σ`. A candidate of
//!    probability 0 can therefore never be drawn.
//!
//! **Greedy.** With `temperature <= 0` llama.cpp's temperature stage keeps only the
//! maximum, and every filter before it keeps the maximum too, so the whole chain is the
//! argmax of the penalised logits; [`Sampler::sample`] computes exactly that (first index
//! among equal maxima) and never touches the RNG.
//!
//! **The RNG** is not llama.cpp's (`std::mt19937` through `std::uniform_real_distribution`,
//! whose output the C++ standard leaves to the library), so the same seed gives
//! different tokens in llama.cpp; the distribution is the same. [`Rng`] is
//! xoshiro256** seeded by splitmix64, small and well studied.
//!
//! **Odd logits.** A NaN logit is treated as `-inf`: that token has probability 0 and is
//! never drawn (a NaN that penalty arithmetic produces, say `inf - inf`, is too). `+inf`
//! logits take all the probability, shared equally among them. When no logit is above
//! `-inf` (all NaN, say) there is nothing to draw from and `sample` returns
//! [`Error::CannotSample`], even for greedy: a model that produces no number is broken,
//! and token 0 would hide it.
//!
//! **Cost.** Filling the workspace, the penalties and min-p are O(V) (V the vocabulary),
//! top-k a heap selection, O(V log k). Top-p without top-k needs the set of most probable
//! candidates, not their order: a quickselect on probability mass finds it in O(V)
//! expected (partition around a pivot, keep the side where the running sum crosses
//! `top_p`), falling back to a heapsort of what is left after 2·log₂(V) + 8 rounds, so
//! never worse than O(V log V). The sorts are the crate's heap sort (`sort.rs`): no
//! recursion, no extra memory.

use core::fmt;

use crate::sort::{sort_by, sort_least_by};
use crate::{Error, Result};

/// The sampling settings: which stages run and how hard they cut.
///
/// A value that disables a stage (`top_k` 0, `top_p` 1, `min_p` 0, penalties 1 / 0 / 0)
/// skips it at no cost. [`SamplerConfig::validate`] says which values are accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature: below 1 sharpens, above 1 flattens. `<= 0.0` means greedy
    /// (argmax of the penalised logits, the first index among equal maxima; the RNG is
    /// not used). Must be finite.
    pub temperature: f32,
    /// Keep only the `top_k` highest logits; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most probable tokens whose probability sum is at least
    /// `top_p` (nucleus sampling); in `(0, 1]`, 1.0 = off.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times the largest; in `[0, 1]`,
    /// 0.0 = off.
    pub min_p: f32,
    /// Repetition penalty, llama.cpp's semantics: each distinct token of the window gets
    /// `logit > 0 ? logit / p : logit * p` once. Finite and positive; 1.0 = off.
    pub repeat_penalty: f32,
    /// `logit -= count * frequency_penalty` for a token seen `count` times in the window.
    /// Finite (negative values favour repeats, as in llama.cpp); 0.0 = off.
    pub frequency_penalty: f32,
    /// `logit -= presence_penalty` for a token seen at least once in the window. Finite;
    /// 0.0 = off.
    pub presence_penalty: f32,
    /// How many of the most recent history tokens the penalties look at; 0 = penalties
    /// off (llama.cpp's `-1`, the whole context, is `usize::MAX` here).
    pub penalty_last_n: usize,
    /// Seed of the [`Rng`]; the same seed, logits and history give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults (`common_params_sampling`): temperature 0.8, top-k 40, top-p
    /// 0.95, min-p 0.05, penalties off (repeat 1.0, frequency 0.0, presence 0.0) over the
    /// last 64 tokens. The seed is 0: llama.cpp's default seed means "pick one at random",
    /// which a no_std core cannot do; a caller that wants that passes its own.
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding: temperature 0, every filter and penalty off (the argmax of the raw
    /// logits).
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Self::default()
        }
    }

    /// Checks every field: a finite temperature, `top_p` in `(0, 1]`, `min_p` in `[0, 1]`,
    /// a finite positive repeat penalty, finite frequency and presence penalties. NaN is
    /// refused everywhere. Anything else is [`Error::CannotSample`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let reason = if !self.temperature.is_finite() {
            "temperature is not a finite number"
        } else if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            "top_p is not in (0, 1]"
        } else if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            "min_p is not in [0, 1]"
        } else if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            "repeat_penalty is not a finite positive number"
        } else if !self.frequency_penalty.is_finite() {
            "frequency_penalty is not a finite number"
        } else if !self.presence_penalty.is_finite() {
            "presence_penalty is not a finite number"
        } else {
            return Ok(());
        };
        Err(Error::CannotSample { reason })
    }

    /// Whether any penalty changes a logit.
    fn penalises(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// One token under consideration: its id, its (penalised) logit, and its probability once
/// a stage has computed one (0 before that).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Candidate {
    /// Token id (index into the logits).
    pub id: u32,
    /// The logit after the penalties (before temperature).
    pub logit: f32,
    /// Probability; after [`Sampler::sample`], the final one among the survivors (they
    /// sum to 1).
    pub p: f32,
}

/// xoshiro256** (Blackman and Vigna, 2018), its 256-bit state filled from the seed by
/// splitmix64 as its authors recommend: a small, fast, well-tested generator whose output
/// is fully specified, so a seed gives the same tokens on every target.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The generator for `seed`: the state is four successive splitmix64 outputs (never
    /// all zero, which xoshiro cannot leave).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut s = [0u64; 4];
        for word in &mut s {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *word = z ^ (z >> 31);
        }
        Rng { s }
    }

    /// The generator with this exact state (for checking against published vectors); an
    /// all-zero state would only ever give zeros, so it is replaced by `new(0)`'s.
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] { Self::new(0) } else { Rng { s } }
    }

    /// The next 64 random bits (xoshiro256**).
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`: the top 24 bits of [`Rng::next_u64`] times 2⁻²⁴, so every
    /// value is exact in `f32` and 1.0 is impossible (the low bits of xoshiro256** are the
    /// weaker ones).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 bits (the top 53 of [`Rng::next_u64`] times 2⁻⁵³): what
    /// the draw uses, so that a token of probability far below 2⁻²⁴ in a large vocabulary
    /// still gets its share.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Samples tokens with a fixed [`SamplerConfig`] in a caller-provided workspace of
/// [`Candidate`]s ([`Sampler::workspace_len`] of them), and holds the RNG between calls.
pub struct Sampler<'w> {
    config: SamplerConfig,
    workspace: &'w mut [Candidate],
    rng: Rng,
    /// Candidates left after the last `sample` (`workspace[..kept]`).
    kept: usize,
}

/// The configuration, the workspace's length and the survivors of the last draw (not the
/// whole workspace: a vocabulary's worth of candidates is no use in a log line).
impl fmt::Debug for Sampler<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("config", &self.config)
            .field("workspace_len", &self.workspace.len())
            .field("rng", &self.rng)
            .field("kept", &self.kept)
            .finish()
    }
}

impl<'w> Sampler<'w> {
    /// Candidates a vocabulary of `n_vocab` tokens needs: one per token, exactly.
    pub fn workspace_len(n_vocab: usize) -> usize {
        n_vocab
    }

    /// A sampler for `config` (checked by [`SamplerConfig::validate`]) seeded with
    /// `config.seed`. The vocabulary size is only known from the logits, so a workspace
    /// shorter than them is reported by [`Sampler::sample`].
    pub fn new(config: SamplerConfig, workspace: &'w mut [Candidate]) -> Result<Self> {
        config.validate()?;
        Ok(Sampler {
            config,
            workspace,
            rng: Rng::new(config.seed),
            kept: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Restarts the RNG from `seed`: the following draws repeat those of a new sampler
    /// with that seed.
    pub fn reseed(&mut self, seed: u64) {
        self.config.seed = seed;
        self.rng = Rng::new(seed);
    }

    /// The candidates that survived every filter of the last [`Sampler::sample`], with
    /// their final probabilities (summing to 1): most probable first after top-k, in no
    /// particular order after top-p without top-k, in token order when neither ran; after
    /// a greedy call, the one chosen token with probability 1. Empty before the first call
    /// and after an error.
    pub fn candidates(&self) -> &[Candidate] {
        self.workspace.get(..self.kept).unwrap_or(&[])
    }

    /// Picks the next token from `logits` (one per vocabulary entry), penalising by the
    /// last `penalty_last_n` tokens of `recent` (the history, oldest first).
    ///
    /// Errors: empty logits or a workspace shorter than them ([`Error::BufferTooSmall`]),
    /// more logits than `u32` ids ([`Error::LengthMismatch`]), no logit above `-inf` after
    /// the penalties ([`Error::CannotSample`]).
    pub fn sample(&mut self, logits: &[f32], recent: &[u32]) -> Result<u32> {
        self.kept = 0;
        let n = logits.len();
        if n == 0 {
            return Err(Error::BufferTooSmall {
                needed: 1,
                actual: 0,
            });
        }
        if u32::try_from(n - 1).is_err() {
            return Err(Error::LengthMismatch {
                expected: (u32::MAX as usize).saturating_add(1),
                actual: n,
            });
        }
        let Some(cands) = self.workspace.get_mut(..n) else {
            return Err(Error::BufferTooSmall {
                needed: n,
                actual: self.workspace.len(),
            });
        };
        for (i, (c, &l)) in cands.iter_mut().zip(logits).enumerate() {
            *c = Candidate {
                id: i as u32,
                logit: not_nan(l),
                p: 0.0,
            };
        }
        let config = self.config;
        if config.penalises() {
            penalize(cands, recent, &config);
        }
        let best = argmax(cands);
        if cands[best].logit == f32::NEG_INFINITY {
            return Err(Error::CannotSample {
                reason: "no logit is above -inf (all are NaN or -inf)",
            });
        }
        if config.temperature <= 0.0 {
            cands.swap(0, best);
            cands[0].p = 1.0;
            self.kept = 1;
            return Ok(cands[0].id);
        }

        let mut kept = n;
        // Whether cands[..kept] is in descending order (logit, then lower id).
        let mut sorted = false;
        if config.top_k > 0 && config.top_k < kept {
            kept = config.top_k;
            sort_least_by(cands, kept, ranks_before);
            sorted = true;
        }
        if config.top_p < 1.0 {
            // Sorted survivors stay sorted; without top-k they come back in no order.
            kept = top_p(&mut cands[..kept], config.top_p, sorted);
        }
        if config.min_p > 0.0 {
            kept = min_p(&mut cands[..kept], config.min_p, sorted);
        }
        let kept_cands = &mut cands[..kept];
        let total = softmax_weights(kept_cands, config.temperature);
        let target = self.rng.next_f64() * total;
        let mut chosen = None;
        let mut last_nonzero = 0;
        let mut running = 0.0f64;
        for (i, c) in kept_cands.iter_mut().enumerate() {
            let w = f64::from(c.p);
            if w > 0.0 {
                last_nonzero = i;
            }
            running += w;
            if chosen.is_none() && running > target {
                chosen = Some(i);
            }
            c.p = (w / total) as f32;
        }
        // Rounding cannot leave the running sum at or below u·Σ < Σ, but if it did, the
        // last token with a weight is the one the draw was heading for.
        let chosen = chosen.unwrap_or(last_nonzero);
        self.kept = kept;
        Ok(kept_cands[chosen].id)
    }
}

/// NaN becomes `-inf` (a token the model gives no number for is never drawn).
fn not_nan(x: f32) -> f32 {
    if x.is_nan() { f32::NEG_INFINITY } else { x }
}

/// Whether `a` comes before `b` in the filters' order: higher logit first, then lower id
/// (a total order: logits are never NaN here).
fn ranks_before(a: &Candidate, b: &Candidate) -> bool {
    a.logit > b.logit || (a.logit == b.logit && a.id < b.id)
}

/// Index of the highest logit, the first among equals (0 for an empty slice).
fn argmax(cands: &[Candidate]) -> usize {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, c) in cands.iter().enumerate() {
        if c.logit > best_logit {
            best = i;
            best_logit = c.logit;
        }
    }
    best
}

/// The highest logit (`-inf` for an empty slice).
fn max_logit(cands: &[Candidate]) -> f32 {
    cands.iter().fold(
        f32::NEG_INFINITY,
        |m, c| if c.logit > m { c.logit } else { m },
    )
}

/// The penalties stage over candidates still in token order (`cands[i].id == i`). The
/// `p` fields (all 0 here) count each token's occurrences in the window, then go back to
/// 0 as each token is penalised, once.
fn penalize(cands: &mut [Candidate], recent: &[u32], config: &SamplerConfig) {
    let window = &recent[recent.len().saturating_sub(config.penalty_last_n)..];
    for &t in window {
        if let Some(c) = cands.get_mut(t as usize) {
            c.p += 1.0;
        }
    }
    for &t in window {
        let Some(c) = cands.get_mut(t as usize) else {
            continue;
        };
        if c.p == 0.0 {
            continue;
        }
        let count = c.p;
        c.p = 0.0;
        let mut l = c.logit;
        if l <= 0.0 {
            l *= config.repeat_penalty;
        } else {
            l /= config.repeat_penalty;
        }
        l -= count * config.frequency_penalty + config.presence_penalty;
        c.logit = not_nan(l);
    }
}

/// Stores `exp((l - max) / temperature)` in each `p` and returns their sum (in `f64`):
/// the softmax's weights. When the maximum is `+inf`, the `+inf` logits weigh 1 each and
/// the rest 0. `cands` is not empty and its maximum is above `-inf`.
fn softmax_weights(cands: &mut [Candidate], temperature: f32) -> f64 {
    let max = max_logit(cands);
    let mut total = 0.0f64;
    for c in cands.iter_mut() {
        c.p = if max == f32::INFINITY {
            if c.logit == f32::INFINITY { 1.0 } else { 0.0 }
        } else {
            libm::expf((c.logit - max) / temperature)
        };
        total += f64::from(c.p);
    }
    total
}

/// Top-p over `cands` (sorted in filter order when `sorted`); returns how many survive,
/// moved to the front (still in order when they were sorted, in no particular order
/// otherwise).
fn top_p(cands: &mut [Candidate], top_p: f32, sorted: bool) -> usize {
    let total = softmax_weights(cands, 1.0);
    let target = f64::from(top_p) * total;
    if sorted {
        prefix_reaching(cands, 0.0, target).unwrap_or(cands.len())
    } else {
        nucleus(cands, target)
    }
}

/// Length of the shortest prefix of `cands` whose weights (`p`), added to `acc`, reach
/// `target`; `None` when the whole slice does not.
fn prefix_reaching(cands: &[Candidate], mut acc: f64, target: f64) -> Option<usize> {
    for (i, c) in cands.iter().enumerate() {
        acc += f64::from(c.p);
        if acc >= target {
            return Some(i + 1);
        }
    }
    None
}

/// Regions at most this long are sorted rather than partitioned further.
const NUCLEUS_SORT_LEN: usize = 32;

/// Quickselect on probability mass: moves to the front the smallest set of top-ranked
/// candidates (in filter order) whose weights reach `target`, in no particular order, and
/// returns its size (all of `cands` when rounding keeps the total just short of
/// `target`). Each round partitions the undecided region around a median-of-three pivot
/// and keeps the side where the running sum crosses `target`: O(n) expected. After
/// 2·log₂(n) + 8 rounds (pivots an adversary picked) the rest is heap-sorted, so it is
/// never worse than O(n log n).
fn nucleus(cands: &mut [Candidate], target: f64) -> usize {
    // Invariant: cands[..lo] rank before everything after them and weigh `acc` < target;
    // cands[hi..] rank after everything before them; the answer lies in lo + 1 ..= hi.
    let (mut lo, mut hi, mut acc) = (0, cands.len(), 0.0f64);
    let mut rounds = 2 * (usize::BITS - cands.len().leading_zeros()) + 8;
    while hi.saturating_sub(lo) > NUCLEUS_SORT_LEN && rounds > 0 {
        rounds -= 1;
        let region = &mut cands[lo..hi];
        let last = region.len() - 1;
        let pivot_at = median_of_three(region, 0, last / 2, last);
        region.swap(pivot_at, last);
        let pivot = region[last];
        let mut before = 0;
        let mut mass = 0.0f64;
        for i in 0..last {
            if ranks_before(&region[i], &pivot) {
                mass += f64::from(region[i].p);
                region.swap(i, before);
                before += 1;
            }
        }
        region.swap(before, last);
        if acc + mass >= target {
            hi = lo + before;
        } else {
            acc += mass + f64::from(pivot.p);
            if acc >= target {
                return lo + before + 1;
            }
            lo += before + 1;
        }
    }
    let rest = &mut cands[lo..hi];
    sort_by(rest, ranks_before);
    match prefix_reaching(rest, acc, target) {
        Some(k) => lo + k,
        None => hi,
    }
}

/// Which of `v[a]`, `v[b]`, `v[c]` is the middle one in filter order.
fn median_of_three(v: &[Candidate], a: usize, b: usize, c: usize) -> usize {
    let ab = ranks_before(&v[a], &v[b]);
    let bc = ranks_before(&v[b], &v[c]);
    let ac = ranks_before(&v[a], &v[c]);
    if ab == bc {
        b
    } else if ab == ac {
        c
    } else {
        a
    }
}

/// Min-p over `cands` (sorted in filter order when `sorted`); returns how many survive,
/// moved to the front in their order.
fn min_p(cands: &mut [Candidate], min_p: f32, sorted: bool) -> usize {
    let max = max_logit(cands);
    let min_logit = max + libm::logf(min_p);
    if sorted {
        // The first candidate is the maximum and always survives.
        return 1 + cands
            .iter()
            .skip(1)
            .take_while(|c| c.logit >= min_logit)
            .count();
    }
    let mut kept = 0;
    for i in 0..cands.len() {
        if cands[i].logit >= min_logit {
            cands[kept] = cands[i];
            kept += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands<const N: usize>(logits: [f32; N]) -> [Candidate; N] {
        let mut c = [Candidate::default(); N];
        for (i, (c, l)) in c.iter_mut().zip(logits).enumerate() {
            *c = Candidate {
                id: i as u32,
                logit: l,
                p: 0.0,
            };
        }
        c
    }

    #[test]
    fn seeding_is_splitmix64() {
        // splitmix64's first outputs from 0 (Vigna's reference code).
        assert_eq!(Rng::new(0).s[0], 0xe220_a839_7b1d_cdaf);
        assert_eq!(Rng::new(0).s[1], 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(Rng::from_state([0; 4]).s, Rng::new(0).s);
    }

    #[test]
    fn nucleus_selects_the_sorted_prefix() {
        // 300 candidates in several arrangements (shuffled with equal logits, ascending,
        // descending, all equal): the set is the sorted order's shortest prefix.
        let shapes: [fn(usize) -> f32; 4] = [
            |i| ((i * 37) % 101) as f32 * 0.03,
            |i| i as f32 * 0.02,
            |i| -(i as f32) * 0.02,
            |_| 1.0,
        ];
        for shape in shapes {
            for p in [0.01f32, 0.3, 0.5, 0.9, 0.99, 0.999999] {
                let mut c = [Candidate::default(); 300];
                for (i, c) in c.iter_mut().enumerate() {
                    *c = Candidate {
                        id: i as u32,
                        logit: shape(i),
                        p: 0.0,
                    };
                }
                let mut sorted = c;
                sort_by(&mut sorted, ranks_before);
                let want = top_p(&mut sorted, p, true);
                let kept = top_p(&mut c, p, false);
                assert_eq!(kept, want, "p {p}");
                let mut got = c;
                sort_by(&mut got[..kept], ranks_before);
                for (g, w) in got[..kept].iter().zip(&sorted[..want]) {
                    assert_eq!(g.id, w.id, "p {p}");
                }
            }
        }
    }

    #[test]
    fn min_p_keeps_order_when_unsorted() {
        let mut c = cands([0.0, 3.0, -5.0, 2.5, 3.0]);
        // ln(0.5) = -0.693: keep logits >= 2.307.
        let kept = min_p(&mut c, 0.5, false);
        let ids: [u32; 3] = [c[0].id, c[1].id, c[2].id];
        assert_eq!((kept, ids), (3, [1, 3, 4]));
    }

    #[test]
    fn infinite_logits_share_everything() {
        let mut c = cands([f32::INFINITY, 1.0, f32::INFINITY, f32::NEG_INFINITY]);
        let total = softmax_weights(&mut c, 0.7);
        assert_eq!(total, 2.0);
        assert_eq!([c[0].p, c[1].p, c[2].p, c[3].p], [1.0, 0.0, 1.0, 0.0]);
    }
}
