//! Streaming bulk upserts: an iterator of any length, a bounded number of rows held.

use super::{BulkOutcome, RowOutcome, UpsertMany, Upsertable};
use crate::conn::{Dialect, WriteConnection};
use crate::error::{Error, InvalidInput, Result};
use crate::observe;
use crate::tx;

/// When the chunks of [`bulk_upsert_stream`] commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Each chunk is its own transaction (one statement per chunk on PostgreSQL). Locks are
    /// held for one chunk only, and a chunk's rows are sorted by key, so concurrent streams do
    /// not deadlock. When a chunk fails, the chunks before it stay committed: an upsert is
    /// idempotent, so run the whole stream again.
    PerChunk,
    /// One transaction around every chunk: all rows or none. Its locks are held until the end,
    /// and rows are sorted within each chunk only, so two such streams over overlapping keys
    /// in different orders can deadlock (a retryable [`Error::Deadlock`]); sort the input by
    /// key to rule it out. The server keeps the whole transaction's changes until it commits.
    AllOrNothing,
}

/// Upserts the rows of `rows`, of any length, holding at most `chunk_rows` of them at a time:
/// each chunk of `chunk_rows` consecutive rows is one [`UpsertMany`] with the defaults of
/// [`bulk_upsert`](super::bulk_upsert) (validated, keys collapsed with the last one winning,
/// sorted by key, one statement on PostgreSQL).
///
/// **Bound**: the iterator's rows are moved into a buffer of `chunk_rows` rows, which is
/// written and emptied before the next row is taken; the statement's column arrays borrow the
/// buffer's rows. Memory is that of one chunk, whatever the stream's length.
///
/// **Across chunks** a key is not collapsed: a key in two chunks is written twice, in stream
/// order, so the last row still wins, and it is counted in both chunks' outcomes (e.g. inserted
/// by the first, updated by the second). `collapsed` counts rows collapsed within chunks.
///
/// # Errors
/// - [`Error::InvalidInput`] naming the first invalid row by its position in the stream
///   (`rows[i].field`); with [`Commit::PerChunk`] the chunks before its chunk are committed.
/// - Any database error: with [`Commit::PerChunk`] the chunks before the failing one are
///   committed, with [`Commit::AllOrNothing`] nothing is.
///
/// # Panics
/// When `chunk_rows` is 0.
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use upsert_kit::upsert::{bulk_upsert_stream, Commit};
/// use upsert_kit::UpsertModel;
/// #[derive(UpsertModel)]
/// #[upsert(table = items, key(sku))]
/// pub struct Item {
///     pub sku: String,
///     pub name: String,
/// }
/// let mut conn = establish_sqlite()?;
/// // A million rows would be held 1,000 at a time; ten here.
/// let rows = (0..10).map(|i| Item { sku: format!("sku-{}", i % 7), name: format!("item {i}") });
/// let outcome = bulk_upsert_stream(&mut conn, rows, 4, Commit::AllOrNothing)?;
/// // Keys 0 to 6, and keys 0 to 2 again in later chunks: the last row of each key wins.
/// assert_eq!((outcome.inserted, outcome.updated), (7, 3));
/// # Ok(()) }
/// ```
pub fn bulk_upsert_stream<C, M, I>(
    conn: &mut C,
    rows: I,
    chunk_rows: usize,
    commit: Commit,
) -> Result<BulkOutcome>
where
    C: WriteConnection,
    M: Upsertable<C::Raw>,
    I: IntoIterator<Item = M>,
{
    run(conn, rows, chunk_rows, commit, None)
}

/// As [`bulk_upsert_stream`], and tells what happened to each input row: `each(i, outcome)`
/// is called for every row of a chunk, in input order, once the chunk is written; `i` is the
/// row's position in the stream, and a [`RowOutcome::Superseded`] row names the position of
/// the later row of its chunk that was written instead. Memory stays bounded by the chunk.
/// With [`Commit::AllOrNothing`] the outcomes told are final only when the call returns `Ok`
/// (an error rolls back the chunks already told).
///
/// # Errors
/// As [`bulk_upsert_stream`].
///
/// # Panics
/// When `chunk_rows` is 0.
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use upsert_kit::upsert::{bulk_upsert_stream_rows, Commit};
/// use upsert_kit::{RowOutcome, UpsertModel};
/// #[derive(UpsertModel)]
/// #[upsert(table = items, key(sku))]
/// pub struct Item {
///     pub sku: String,
///     pub name: String,
/// }
/// let mut conn = establish_sqlite()?;
/// let rows = ["a", "b", "a", "a"].map(|sku| Item { sku: sku.into(), name: "x".into() });
/// let mut told = Vec::new();
/// bulk_upsert_stream_rows(&mut conn, rows, 3, Commit::PerChunk, |i, o| told.push((i, o)))?;
/// assert_eq!(told, [
///     (0, RowOutcome::Superseded { by: 2 }), (1, RowOutcome::Inserted), (2, RowOutcome::Inserted),
///     (3, RowOutcome::Updated), // the next chunk: "a" exists now
/// ]);
/// # Ok(()) }
/// ```
pub fn bulk_upsert_stream_rows<C, M, I>(
    conn: &mut C,
    rows: I,
    chunk_rows: usize,
    commit: Commit,
    mut each: impl FnMut(usize, RowOutcome),
) -> Result<BulkOutcome>
where
    C: WriteConnection,
    M: Upsertable<C::Raw>,
    I: IntoIterator<Item = M>,
{
    run(conn, rows, chunk_rows, commit, Some(&mut each))
}

/// What a stream tells of each row, if anything.
type Each<'a> = Option<&'a mut dyn FnMut(usize, RowOutcome)>;

fn run<C, M, I>(
    conn: &mut C,
    rows: I,
    chunk_rows: usize,
    commit: Commit,
    mut each: Each<'_>,
) -> Result<BulkOutcome>
where
    C: WriteConnection,
    M: Upsertable<C::Raw>,
    I: IntoIterator<Item = M>,
{
    assert!(chunk_rows > 0, "a chunk holds at least one row");
    let table = observe::table_name::<M::Table>;
    observe::call!(C::Backend::SYSTEM, "bulk_upsert_stream", table).run(|call| {
        let total = match commit {
            Commit::PerChunk => stream(conn, rows.into_iter(), chunk_rows, each)?,
            Commit::AllOrNothing => tx::transaction(conn.raw(), |conn| {
                stream(conn, rows.into_iter(), chunk_rows, each.take())
            })?,
        };
        call.counts(total.inserted, total.updated, total.unchanged);
        Ok(total)
    })
}

fn stream<C, M, I>(
    conn: &mut C,
    rows: I,
    chunk_rows: usize,
    mut each: Each<'_>,
) -> Result<BulkOutcome>
where
    C: WriteConnection,
    M: Upsertable<C::Raw>,
    I: Iterator<Item = M>,
{
    let mut total = BulkOutcome::default();
    let mut buffer: Vec<M> = Vec::with_capacity(chunk_rows);
    let mut rows = rows.enumerate().peekable();
    while rows.peek().is_some() {
        buffer.clear();
        for (i, row) in rows.by_ref().take(chunk_rows) {
            row.validate().map_err(|e| {
                Error::InvalidInput(InvalidInput::new(
                    format!("rows[{i}].{}", e.field),
                    e.reason,
                ))
            })?;
            buffer.push(row);
        }
        let many = UpsertMany::new(&buffer).chunk_size(chunk_rows);
        let part = match each.as_mut() {
            None => many.execute(conn)?,
            Some(each) => {
                // The chunk's first row's position in the stream.
                let first = total.rows() + total.collapsed;
                let told = many.execute_rows(conn)?;
                for (i, outcome) in told.iter().enumerate() {
                    each(
                        first + i,
                        match *outcome {
                            RowOutcome::Superseded { by } => {
                                RowOutcome::Superseded { by: first + by }
                            }
                            other => other,
                        },
                    );
                }
                BulkOutcome::tally(&told)
            }
        };
        total.inserted += part.inserted;
        total.updated += part.updated;
        total.unchanged += part.unchanged;
        total.collapsed += part.collapsed;
    }
    Ok(total)
}
