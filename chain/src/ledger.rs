//! Tamper-evident history of each lot and its products: a hash chain per
//! lot in `trace_events`. Each event is appended in the transaction that
//! writes the data it describes. Its hash covers the lot, its position, its
//! kind, the previous event's hash and its payload, and its payload is
//! rebuilt from the stored rows at verification. Changing a stored value
//! or an event therefore makes verification fail.

use crate::store::Engine;
use anyhow::Context;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// `prev_hash` of a lot's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub const LOT_CREATED: &str = "lot_created";
pub const GAVAGE_FINISHED: &str = "gavage_finished";
pub const INSPECTION_STARTED: &str = "inspection_started";
pub const SAMPLE_GRADED: &str = "sample_graded";
pub const PRODUCT_CREATED: &str = "product_created";

/// SHA-256 of `text`, as lowercase hex.
pub fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Hash of one event. Fields are separated by a newline, which none of
/// them contains except inside the JSON payload, which comes last.
pub fn event_hash(code_lot: &str, seq: i64, kind: &str, prev_hash: &str, payload: &str) -> String {
    digest(&format!(
        "{code_lot}\n{seq}\n{kind}\n{prev_hash}\n{payload}"
    ))
}

pub fn lot_created(
    code_lot: &str,
    gaveur_id: i64,
    site: &str,
    genetique: &str,
    nb_canards: i64,
    duree_jours: i64,
    started_at: &str,
) -> Value {
    json!({
        "code_lot": code_lot, "gaveur_id": gaveur_id, "site": site, "genetique": genetique,
        "nb_canards": nb_canards, "duree_jours": duree_jours, "started_at": started_at,
    })
}

pub fn gavage_finished(
    poids_moyen_final: f64,
    nb_canards_final: i64,
    taux_mortalite: f64,
    slaughter_at: &str,
) -> Value {
    json!({
        "poids_moyen_final": poids_moyen_final, "nb_canards_final": nb_canards_final,
        "taux_mortalite": taux_mortalite, "slaughter_at": slaughter_at,
    })
}

pub fn inspection_started(attempt: i64, claimed_at: &str) -> Value {
    json!({ "attempt": attempt, "claimed_at": claimed_at })
}

/// Payload of a graded sample. The raw measurement enters through the
/// digest of its stored JSON, which keeps the event short.
#[allow(clippy::too_many_arguments)]
pub fn sample_graded(
    sample_index: i64,
    device_id: &str,
    measured_at: &str,
    tof_distances: &str,
    as7341_counts: &str,
    grade: Option<&str>,
    final_score: f64,
    tof_score: f64,
    as7341_score: f64,
) -> Value {
    json!({
        "sample_index": sample_index, "device_id": device_id, "measured_at": measured_at,
        "measurement_sha256": digest(&format!("{tof_distances}\n{as7341_counts}")),
        "grade": grade, "final_score": final_score, "tof_score": tof_score,
        "as7341_score": as7341_score,
    })
}

/// Payload of a new product. The token enters only through its digest, so
/// the chain of a lot never reveals the trace page of another product.
pub fn product_created(
    product_id: &str,
    token: &str,
    sample_index: i64,
    grade: &str,
    final_score: f64,
    created_at: &str,
) -> Value {
    json!({
        "product_id": product_id, "token_sha256": digest(token), "sample_index": sample_index,
        "grade": grade, "final_score": final_score, "created_at": created_at,
    })
}

/// Last event of a lot's chain, as the next append needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// Appends an event to the lot's chain, on the caller's transaction, and
/// returns the new head.
pub async fn append(
    connection: &mut sqlx::AnyConnection,
    code_lot: &str,
    kind: &'static str,
    payload: &Value,
) -> anyhow::Result<Head> {
    let mut head = head(connection, code_lot).await?;
    let event = head.chain(code_lot, kind, payload);
    insert(connection, &[event]).await?;
    Ok(head)
}

/// Appends one event of kind `kind` to the chain of each lot in `events`,
/// on the caller's transaction, with one head read and one insert per batch
/// of lots.
pub async fn append_to_each(
    connection: &mut sqlx::AnyConnection,
    kind: &'static str,
    events: &[(&str, Value)],
) -> anyhow::Result<()> {
    let lots: Vec<&str> = events.iter().map(|(code_lot, _)| *code_lot).collect();
    let mut heads = heads(connection, &lots).await?;
    let chained: Vec<NewEvent> = events
        .iter()
        .map(|(code_lot, payload)| {
            heads
                .get_mut(*code_lot)
                .expect("heads returns every requested lot")
                .chain(code_lot, kind, payload)
        })
        .collect();
    insert(connection, &chained).await
}

/// Reads the last event of a lot's chain, or the genesis head of an empty
/// chain. On PostgreSQL it first takes the lot's chain lock for the rest of
/// the transaction. Two instances may write to one lot at once (after a
/// lease expired mid-inspection, for instance), and the lock makes the
/// second writer wait for the first transaction and read its head.
pub async fn head(connection: &mut sqlx::AnyConnection, code_lot: &str) -> anyhow::Result<Head> {
    if connection.backend_name() == "PostgreSQL" {
        sqlx::query(
            "SELECT COUNT(*) AS locked FROM (SELECT pg_advisory_xact_lock($1, hashtext($2))) AS held",
        )
        .bind(crate::cluster::LEDGER_LOCK_CLASS)
        .bind(code_lot)
        .fetch_one(&mut *connection)
        .await
        .with_context(|| format!("lock the chain of lot {code_lot}"))?;
    }
    let last = sqlx::query(
        "SELECT seq, hash FROM trace_events WHERE code_lot = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(code_lot)
    .fetch_optional(&mut *connection)
    .await
    .with_context(|| format!("read the chain head of lot {code_lot}"))?;
    Ok(match last {
        Some(row) => Head {
            seq: row.try_get("seq")?,
            hash: row.try_get("hash")?,
        },
        None => Head::genesis(),
    })
}

/// Lots per read of chain heads: one `UNION ALL` branch each, far below
/// SQLite's limit of 500 branches in one compound select.
const HEADS_PER_READ: usize = 100;

/// Reads the heads of several lots' chains with two statements per 100 lots,
/// taking their locks first on PostgreSQL as `head` does. A lot with no
/// event gets the genesis head.
pub async fn heads(
    connection: &mut sqlx::AnyConnection,
    lots: &[&str],
) -> anyhow::Result<std::collections::HashMap<String, Head>> {
    let mut sorted = lots.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut heads = std::collections::HashMap::with_capacity(sorted.len());
    let engine = Engine::of(connection);
    for chunk in sorted.chunks(HEADS_PER_READ) {
        if engine == Engine::Postgres {
            // The list is sorted so that two writers take the locks in the
            // same order and never wait for each other in a cycle.
            // NOTE: this relies on PostgreSQL scanning a VALUES list in the
            // order written, which it does but does not document.
            let sql = format!(
                "SELECT COUNT(*) AS locked FROM (SELECT pg_advisory_xact_lock($1, hashtext(lot.code)) \
                 FROM (VALUES {}) AS lot(code)) AS held",
                (2..2 + chunk.len())
                    .map(|n| format!("(${n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut query = sqlx::query(&sql).bind(crate::cluster::LEDGER_LOCK_CLASS);
            for code_lot in chunk {
                query = query.bind(*code_lot);
            }
            query
                .fetch_one(&mut *connection)
                .await
                .with_context(|| format!("lock the chains of {} lots", chunk.len()))?;
        }
        // One backward index probe per lot. A correlated MAX(seq) filter
        // instead visits every event of the lots.
        let sql = (1..=chunk.len())
            .map(|n| {
                let code_lot = crate::store::placeholder(engine, n);
                format!(
                    "SELECT * FROM (SELECT code_lot, seq, hash FROM trace_events \
                     WHERE code_lot = {code_lot} ORDER BY seq DESC LIMIT 1) AS head{n}"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut query = sqlx::query(&sql);
        for code_lot in chunk {
            query = query.bind(*code_lot);
        }
        let rows = query
            .fetch_all(&mut *connection)
            .await
            .with_context(|| format!("read the chain heads of {} lots", chunk.len()))?;
        for row in rows {
            let head = Head {
                seq: row.try_get("seq")?,
                hash: row.try_get("hash")?,
            };
            heads.insert(row.try_get("code_lot")?, head);
        }
        for code_lot in chunk {
            heads
                .entry(code_lot.to_string())
                .or_insert_with(Head::genesis);
        }
    }
    Ok(heads)
}

/// An event hashed after its predecessor and ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub code_lot: String,
    pub seq: i64,
    pub kind: &'static str,
    pub payload: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Head {
    /// Head of a chain with no event yet.
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }

    /// Hashes the event that follows this head and moves the head onto it.
    pub fn chain(&mut self, code_lot: &str, kind: &'static str, payload: &Value) -> NewEvent {
        let seq = self.seq + 1;
        let payload = payload.to_string();
        let hash = event_hash(code_lot, seq, kind, &self.hash, &payload);
        let prev_hash = std::mem::replace(&mut self.hash, hash.clone());
        self.seq = seq;
        NewEvent {
            code_lot: code_lot.to_string(),
            seq,
            kind,
            payload,
            prev_hash,
            hash,
        }
    }
}

/// Events per multi-row insert: 7 parameters each.
pub(crate) const EVENTS_PER_INSERT: usize = 48;

/// Inserts events hashed by `Head::chain`, on the caller's transaction.
pub async fn insert(
    connection: &mut sqlx::AnyConnection,
    events: &[NewEvent],
) -> anyhow::Result<()> {
    let recorded_at = crate::time::now();
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let sql = insert_statement(Engine::of(connection), 1, chunk.len());
        bind_events(sqlx::query(&sql), chunk, &recorded_at)
            .execute(&mut *connection)
            .await
            .with_context(|| {
                let first = &chunk[0];
                format!(
                    "append {} events to the chain of lot {} from seq {}",
                    chunk.len(),
                    first.code_lot,
                    first.seq
                )
            })?;
    }
    Ok(())
}

/// Returns an insert of `count` events, its parameters numbered from `first`.
pub(crate) fn insert_statement(engine: Engine, first: usize, count: usize) -> String {
    format!(
        "INSERT INTO trace_events (code_lot, seq, kind, payload, prev_hash, hash, recorded_at) VALUES {}",
        crate::store::placeholder_rows_from(engine, first, count, 7)
    )
}

/// Binds the parameters of `insert_statement` in order, every event
/// recorded at `recorded_at`.
pub(crate) fn bind_events<'q>(
    mut query: crate::store::AnyQuery<'q>,
    events: &'q [NewEvent],
    recorded_at: &'q str,
) -> crate::store::AnyQuery<'q> {
    for event in events {
        query = query
            .bind(&event.code_lot)
            .bind(event.seq)
            .bind(event.kind)
            .bind(&event.payload)
            .bind(&event.prev_hash)
            .bind(&event.hash)
            .bind(recorded_at);
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_text_is_the_sha256_constant() {
        assert_eq!(
            digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hash_changes_with_every_field() {
        let base = event_hash("LL2612001", 2, "lot_created", GENESIS_HASH, "{}");
        assert_ne!(
            base,
            event_hash("LL2612002", 2, "lot_created", GENESIS_HASH, "{}")
        );
        assert_ne!(
            base,
            event_hash("LL2612001", 3, "lot_created", GENESIS_HASH, "{}")
        );
        assert_ne!(
            base,
            event_hash("LL2612001", 2, "gavage_finished", GENESIS_HASH, "{}")
        );
        assert_ne!(
            base,
            event_hash("LL2612001", 2, "lot_created", &digest("x"), "{}")
        );
        assert_ne!(
            base,
            event_hash("LL2612001", 2, "lot_created", GENESIS_HASH, "{ }")
        );
    }

    #[test]
    fn payload_text_is_stable() {
        // Keys come out sorted, so the text rebuilt from stored rows matches.
        let payload = gavage_finished(6950.5, 48, 4.0, "2026-12-04T10:00:00.000Z");
        assert_eq!(
            payload.to_string(),
            r#"{"nb_canards_final":48,"poids_moyen_final":6950.5,"slaughter_at":"2026-12-04T10:00:00.000Z","taux_mortalite":4.0}"#
        );
    }
}
