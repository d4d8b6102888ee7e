//! How a forward pass hands independent work to threads without the core owning any.
//!
//! The core is single-threaded and allocation-free; what it can say is "these row ranges
//! of this buffer are independent". A [`Parallel`] runner takes such a buffer, cuts it
//! into pieces of whole rows and runs a job on each piece, on as many threads as it has.
//! [`Serial`] (the default everywhere) runs the job once over the whole buffer;
//! `moe_std::pool::ThreadPool` implements the trait with its workers. Every number is
//! computed by the same code whatever the split, so results are identical bit for bit.

use core::fmt;

use crate::Result;

/// A job over one piece of a split buffer: `job(first_row, rows)` where `rows` holds
/// whole rows starting at row `first_row` of the buffer.
pub type RowsJob<'j> = &'j (dyn Fn(usize, &mut [u8]) -> Result<()> + Sync);

/// Runs a job on disjoint pieces of a buffer, possibly in parallel.
pub trait Parallel: Sync {
    /// Splits `data` (rows of `row_bytes` bytes; a trailing partial row belongs to the
    /// last piece) into disjoint pieces of whole rows that cover it exactly once, calls
    /// `job(first_row, piece)` on each and returns when all have run: the first error any
    /// job returned, else `Ok`.
    ///
    /// `min_rows` is the smallest piece worth a thread of its own (the implementation may
    /// ignore it). `row_bytes == 0` must be treated as one piece.
    fn for_each_rows(
        &self,
        data: &mut [u8],
        row_bytes: usize,
        min_rows: usize,
        job: RowsJob<'_>,
    ) -> Result<()>;

    /// [`for_each_rows`](Self::for_each_rows) for rows of unequal cost (causal attention:
    /// later tokens attend to more positions), with no minimum piece: a runner with
    /// threads should cut pieces finer than one per thread and hand them out as threads
    /// free up, so no thread waits on another's expensive rows. The default is
    /// `for_each_rows(data, row_bytes, 1, job)`.
    fn for_each_uneven_rows(
        &self,
        data: &mut [u8],
        row_bytes: usize,
        job: RowsJob<'_>,
    ) -> Result<()> {
        self.for_each_rows(data, row_bytes, 1, job)
    }
}

/// Everything on the calling thread, in one piece.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serial;

impl Parallel for Serial {
    fn for_each_rows(&self, data: &mut [u8], _: usize, _: usize, job: RowsJob<'_>) -> Result<()> {
        job(0, data)
    }
}

impl fmt::Debug for dyn Parallel + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Parallel")
    }
}
