//! Held builds and their shell sessions in PostgreSQL (migration 19, as SQLite's).

use super::PgStore;
use super::cluster::fence_build;
use super::verbs::text;
use crate::master::store::{MasterLease, ShellHold, ShellSession, StoreError};

fn env_json(env: &[(String, String)]) -> String {
    text(&serde_json::to_string(env).unwrap_or_else(|_| "[]".into()))
}

impl PgStore {
    pub(super) async fn pg_hold_build(
        &self,
        owner: &MasterLease,
        hold: ShellHold,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence_build(&transaction, owner, hold.build_id).await?;
        transaction
            .execute(
                "INSERT INTO shell_holds (build_id, builder, number, slave, dir, env, owner, held_until)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (build_id) DO UPDATE SET held_until = excluded.held_until",
                &[
                    &hold.build_id,
                    &text(&hold.builder),
                    &hold.number,
                    &text(&hold.slave),
                    &text(&hold.dir),
                    &env_json(&hold.env),
                    &hold.owner.as_deref().map(text),
                    &hold.held_until,
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn pg_shell_hold(
        &self,
        builder: &str,
        number: i64,
    ) -> Result<Option<ShellHold>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT build_id, builder, number, slave, dir, env, owner, held_until
                 FROM shell_holds WHERE builder = $1 AND number = $2",
                &[&text(builder), &number],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let env: String = row.try_get(5)?;
        Ok(Some(ShellHold {
            build_id: row.try_get(0)?,
            builder: row.try_get(1)?,
            number: row.try_get(2)?,
            slave: row.try_get(3)?,
            dir: row.try_get(4)?,
            env: serde_json::from_str(&env).unwrap_or_default(),
            owner: row.try_get(6)?,
            held_until: row.try_get(7)?,
        }))
    }

    pub(super) async fn pg_held_dirs(
        &self,
        slave: &str,
        builder: &str,
        after: f64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT dir FROM shell_holds
                 WHERE slave = $1 AND builder = $2 AND held_until > $3 ORDER BY dir",
                &[&text(slave), &text(builder), &after],
            )
            .await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(StoreError::from))
            .collect()
    }

    pub(super) async fn pg_set_held_until(
        &self,
        build_id: i64,
        until: f64,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE shell_holds SET held_until = $2 WHERE build_id = $1",
                &[&build_id, &until],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn pg_start_shell_session(
        &self,
        session: ShellSession,
    ) -> Result<i64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO shell_sessions (build_id, who, from_addr, master, started_at, ended_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &session.build_id,
                    &text(&session.who),
                    &text(&session.from_addr),
                    &text(&session.master),
                    &session.started_at,
                    &session.ended_at,
                ],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub(super) async fn pg_end_shell_session(&self, id: i64, at: f64) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "UPDATE shell_sessions SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL",
                &[&id, &at],
            )
            .await?;
        let row = transaction
            .query_one(
                "SELECT COUNT(*) FROM shell_sessions WHERE ended_at IS NULL
                   AND build_id = (SELECT build_id FROM shell_sessions WHERE id = $1)",
                &[&id],
            )
            .await?;
        transaction.commit().await?;
        Ok(row.try_get(0)?)
    }

    pub(super) async fn pg_shell_sessions(
        &self,
        build_id: i64,
    ) -> Result<Vec<ShellSession>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, build_id, who, from_addr, master, started_at, ended_at
                 FROM shell_sessions WHERE build_id = $1 ORDER BY id",
                &[&build_id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ShellSession {
                    id: row.try_get(0)?,
                    build_id: row.try_get(1)?,
                    who: row.try_get(2)?,
                    from_addr: row.try_get(3)?,
                    master: row.try_get(4)?,
                    started_at: row.try_get(5)?,
                    ended_at: row.try_get(6)?,
                })
            })
            .collect()
    }
}
