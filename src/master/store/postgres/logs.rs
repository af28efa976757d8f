//! Step logs in PostgreSQL: the chunks of migration 12 (the same table as SQLite's), written by
//! the master running a build and read by every master (`master::logs`).

use tokio_postgres::GenericClient;

use super::PgStore;
use super::cluster::fence_build;
use crate::master::store::{MasterLease, StoreError};
use crate::proto::StreamKind;

/// A byte position as the database keeps it.
fn position(bytes: u64) -> Result<i64, StoreError> {
    i64::try_from(bytes).map_err(|_| StoreError::Task(format!("log position {bytes} too large")))
}

/// Where a stored stream ends now: the last chunk by key, one index probe.
async fn stream_size(
    client: &(impl GenericClient + Sync),
    build_id: i64,
    step: i64,
    stream: StreamKind,
) -> Result<u64, StoreError> {
    let row = client
        .query_opt(
            "SELECT byte_offset + byte_count FROM log_chunks
             WHERE build_id = $1 AND step = $2 AND stream = $3
             ORDER BY byte_offset DESC LIMIT 1",
            &[&build_id, &step, &stream.file_extension()],
        )
        .await?;
    Ok(row.map_or(0, |row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
}

async fn read_range(
    client: &(impl GenericClient + Sync),
    build_id: i64,
    step: i64,
    stream: StreamKind,
    offset: u64,
    max: usize,
) -> Result<(Vec<u8>, u64), StoreError> {
    let size = stream_size(client, build_id, step, stream).await?;
    let end = offset.saturating_add(max as u64).min(size);
    let mut bytes = Vec::new();
    if offset >= end {
        return Ok((bytes, size));
    }
    // From the chunk holding `offset` (the last one starting at or before it) up to `end`.
    let rows = client
        .query(
            "SELECT byte_offset, data FROM log_chunks
             WHERE build_id = $1 AND step = $2 AND stream = $3 AND byte_offset < $5
               AND byte_offset >= COALESCE((SELECT MAX(byte_offset) FROM log_chunks
                   WHERE build_id = $1 AND step = $2 AND stream = $3 AND byte_offset <= $4), 0)
             ORDER BY byte_offset",
            &[
                &build_id,
                &step,
                &stream.file_extension(),
                &position(offset)?,
                &position(end)?,
            ],
        )
        .await?;
    for row in rows {
        let start = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let data: &[u8] = row.get(1);
        let from = offset.saturating_sub(start).min(data.len() as u64) as usize;
        let to = end.saturating_sub(start).min(data.len() as u64) as usize;
        if from < to {
            bytes.extend_from_slice(&data[from..to]);
        }
    }
    Ok((bytes, size))
}

impl PgStore {
    pub(super) async fn append_chunk(
        &self,
        owner: &MasterLease,
        build_id: i64,
        step: i64,
        stream: StreamKind,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // The master's own file holds what a crash of the server might lose of the last chunks.
        super::verbs::relaxed(&transaction).await?;
        fence_build(&transaction, owner, build_id).await?;
        let size = stream_size(&*transaction, build_id, step, stream).await?;
        let end = offset.saturating_add(data.len() as u64);
        if offset < size && end <= size {
            // A retry of an append that was stored (its answer was lost on the way back).
            let (stored, _) =
                read_range(&*transaction, build_id, step, stream, offset, data.len()).await?;
            return if stored == data {
                Ok(())
            } else {
                Err(StoreError::LogOffset { offset, size })
            };
        }
        if offset != size {
            return Err(StoreError::LogOffset { offset, size });
        }
        if !data.is_empty() {
            transaction
                .execute(
                    "INSERT INTO log_chunks (build_id, step, stream, byte_offset, byte_count, data)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &build_id,
                        &step,
                        &stream.file_extension(),
                        &position(offset)?,
                        &position(data.len() as u64)?,
                        &data,
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn read_chunks(
        &self,
        build_id: i64,
        step: i64,
        stream: StreamKind,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        let mut client = self.client().await?;
        // The size and the chunks from one snapshot, so the size is never older than the bytes.
        let transaction = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let read = read_range(&*transaction, build_id, step, stream, offset, max).await?;
        transaction.commit().await?;
        Ok(read)
    }

    pub(super) async fn chunked_size(
        &self,
        build_id: i64,
        step: i64,
        stream: StreamKind,
    ) -> Result<u64, StoreError> {
        stream_size(&**self.client().await?, build_id, step, stream).await
    }

    pub(super) async fn chunked_streams(
        &self,
        build_ids: Vec<i64>,
    ) -> Result<Vec<(i64, i64, StreamKind)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT build_id, step, stream FROM log_chunks
                 WHERE build_id = ANY($1) ORDER BY build_id, step, stream",
                &[&build_ids],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                StreamKind::from_file_extension(row.get::<_, &str>(2))
                    .map(|stream| (row.get(0), row.get(1), stream))
            })
            .collect())
    }
}
