//! `buildbot migrate-db`: a master's SQLite history copied into an empty PostgreSQL database,
//! row for row with its ids, in one transaction (all of it or nothing), so the masters of a
//! cluster start from the history the single master had. The two schemas are the same
//! migration for migration, so the copy goes by the columns SQLite has.

use tokio_postgres::types::{ToSql, Type};

use super::PgStore;
use crate::master::store::StoreError;

/// What a master keeps that a cluster shares, in an order that satisfies the foreign keys.
/// What belongs to running masters (leases, cluster jobs, locks, the event journal) starts
/// afresh.
const HISTORY: &[&str] = &[
    "requests",
    "changes",
    "request_changes",
    "builds",
    "steps",
    "test_results",
    "poll_heads",
    "web_sessions",
];

/// How many rows of each table were copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub tables: Vec<(String, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the database already holds a history ({requests} requests); migrate-db copies into an empty one"
    )]
    NotEmpty { requests: i64 },
    #[error("reading {table} from SQLite: {source}")]
    Read {
        table: String,
        source: rusqlite::Error,
    },
    #[error("copying {table}: column {column} holds a value PostgreSQL's {kind} cannot take")]
    Value {
        table: String,
        column: String,
        kind: String,
    },
}

/// One SQLite value as the PostgreSQL column of type `kind` takes it.
fn converted(value: rusqlite::types::Value, kind: &Type) -> Option<Box<dyn ToSql + Sync + Send>> {
    use rusqlite::types::Value;
    Some(match (value, kind) {
        (Value::Null, kind) if *kind == Type::INT8 => Box::new(None::<i64>),
        (Value::Null, kind) if *kind == Type::FLOAT8 => Box::new(None::<f64>),
        (Value::Null, kind) if *kind == Type::BYTEA => Box::new(None::<Vec<u8>>),
        (Value::Null, kind) if *kind == Type::BOOL => Box::new(None::<bool>),
        (Value::Null, _) => Box::new(None::<String>),
        (Value::Integer(number), kind) if *kind == Type::INT8 => Box::new(number),
        (Value::Integer(number), kind) if *kind == Type::FLOAT8 => Box::new(number as f64),
        (Value::Integer(number), kind) if *kind == Type::BOOL => Box::new(number != 0),
        (Value::Real(number), kind) if *kind == Type::FLOAT8 => Box::new(number),
        (Value::Text(text), kind) if *kind == Type::TEXT => {
            // PostgreSQL refuses NUL in text; the store writes U+FFFD for it, so does the copy.
            Box::new(text.replace('\0', "\u{fffd}"))
        }
        (Value::Blob(bytes), kind) if *kind == Type::BYTEA => Box::new(bytes),
        (Value::Text(text), kind) if *kind == Type::BYTEA => Box::new(text.into_bytes()),
        _ => return None,
    })
}

impl PgStore {
    /// Copies the history in the SQLite file `sqlite` (migrated to this buildbot's schema
    /// first) into this database, which must hold none. Returns the rows copied per table.
    pub async fn copy_from_sqlite(&self, sqlite: &std::path::Path) -> Result<Copied, CopyError> {
        // Opening migrates the file to the schema this buildbot knows, as PostgreSQL's is.
        drop(crate::master::store::sqlite::SqliteStore::open(sqlite)?);
        let source = rusqlite::Connection::open_with_flags(
            sqlite,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(StoreError::from)?;
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(StoreError::from)?;
        // Nobody else copies or records meanwhile: the check and the copy are one decision.
        transaction
            .batch_execute(&format!(
                "LOCK TABLE {} IN EXCLUSIVE MODE",
                HISTORY.join(", ")
            ))
            .await
            .map_err(StoreError::from)?;
        let requests: i64 = transaction
            .query_one("SELECT COUNT(*) FROM requests", &[])
            .await
            .map_err(StoreError::from)?
            .get(0);
        if requests > 0 {
            return Err(CopyError::NotEmpty { requests });
        }
        let mut copied = Copied::default();
        for table in HISTORY {
            let read = |source: rusqlite::Error| CopyError::Read {
                table: (*table).to_string(),
                source,
            };
            let mut select = source
                .prepare(&format!("SELECT * FROM {table}"))
                .map_err(read)?;
            let columns: Vec<String> = select.column_names().map(str::to_string).collect();
            let quoted: Vec<String> = columns.iter().map(|name| format!("\"{name}\"")).collect();
            let placeholders: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
            let insert = transaction
                .prepare(&format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    quoted.join(", "),
                    placeholders.join(", ")
                ))
                .await
                .map_err(StoreError::from)?;
            let kinds: Vec<Type> = insert.params().to_vec();
            let mut rows = select.query([]).map_err(read)?;
            let mut count = 0u64;
            while let Some(row) = rows.next().map_err(read)? {
                let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
                for (index, kind) in kinds.iter().enumerate() {
                    let value: rusqlite::types::Value = row.get(index).map_err(read)?;
                    let value = converted(value, kind).ok_or_else(|| CopyError::Value {
                        table: (*table).to_string(),
                        column: columns[index].clone(),
                        kind: kind.name().to_string(),
                    })?;
                    values.push(value);
                }
                let params: Vec<&(dyn ToSql + Sync)> = values
                    .iter()
                    .map(|value| value.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                transaction
                    .execute(&insert, &params)
                    .await
                    .map_err(StoreError::from)?;
                count += 1;
            }
            copied.tables.push(((*table).to_string(), count));
        }
        transaction.commit().await.map_err(StoreError::from)?;
        self.advance_identities().await?;
        Ok(copied)
    }
}
