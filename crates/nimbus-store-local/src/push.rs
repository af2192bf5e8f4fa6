//! [`PushStore`] on SQLite (migration 7): `push_vapid_keys`, `push_subscriptions`,
//! `push_topic_members`, `push_messages`, `push_deliveries`.
//!
//! A claim moves a delivery's `next_attempt_at` to the end of its lease, so a delivery being sent
//! is simply not due; if the process dies mid-send, it is due again once the lease has run out.
//! Attempts are counted at the claim, so a delivery that kills the sender every time still
//! reaches the maximum.

use nimbus_model::UnixMillis;
use nimbus_store::Result;
use nimbus_store::events::NewEvent;
use nimbus_store::push::{
    Backlog, Claimed, DeliveryCounts, DeliveryInfo, DeliveryQuery, EVENT_QUEUED, EXPIRED,
    EnqueueError, FAILED, MessageInfo, NewMessage, NewSubscription, Outcome, PushStore, QUEUED,
    SENT, SubscribeError, Subscription, Target, VapidKey,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Context;
use crate::sqlite::SqliteStore;

const SUB_COLUMNS: &str = "id, kind, user_id, endpoint, p256dh, auth, created_at";

fn sub_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Subscription> {
    Ok(Subscription {
        id: row.get(at)?,
        kind: row.get(at + 1)?,
        user_id: row.get(at + 2)?,
        endpoint: row.get(at + 3)?,
        p256dh: row.get(at + 4)?,
        auth: row.get(at + 5)?,
        topics: Vec::new(),
        created_at: row.get(at + 6)?,
    })
}

fn with_topics(conn: &Connection, project: &str, mut sub: Subscription) -> Result<Subscription> {
    sub.topics = conn
        .prepare_cached(
            "SELECT topic FROM push_topic_members WHERE project = ?1 AND subscription = ?2
             ORDER BY topic",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![project, sub.id], |r| r.get(0))?.collect::<Result<Vec<_>, _>>()
        })
        .context("reading a subscription's topics")?;
    Ok(sub)
}

fn get_sub(conn: &Connection, project: &str, id: &str) -> Result<Option<Subscription>> {
    let sub = conn
        .prepare_cached(&format!(
            "SELECT {SUB_COLUMNS} FROM push_subscriptions WHERE project = ?1 AND id = ?2"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(params![project, id], |r| sub_from_row(r, 0)).optional()
        })
        .context("reading a push subscription")?;
    sub.map(|s| with_topics(conn, project, s)).transpose()
}

fn count(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<u64> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.query_row(p, |r| r.get::<_, i64>(0)))
        .map(|n| n as u64)
        .context("counting push rows")
}

fn delete_sub_in(conn: &Connection, project: &str, id: &str) -> Result<bool> {
    conn.execute(
        "DELETE FROM push_topic_members WHERE project = ?1 AND subscription = ?2",
        params![project, id],
    )
    .context("removing a subscription's topics")?;
    let n = conn
        .execute(
            "DELETE FROM push_subscriptions WHERE project = ?1 AND id = ?2",
            params![project, id],
        )
        .context("removing a push subscription")?;
    Ok(n > 0)
}

impl PushStore for SqliteStore {
    fn vapid_key(&self, project: &str) -> Result<Option<VapidKey>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT private_key, public_key, created_at FROM push_vapid_keys WHERE project = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![project], |r| {
                    Ok(VapidKey { private_key: r.get(0)?, public_key: r.get(1)?, created_at: r.get(2)? })
                })
                .optional()
            })
            .context("reading a VAPID key")
        })
    }

    fn insert_vapid_key(&self, project: &str, key: &VapidKey) -> Result<VapidKey> {
        self.write("storing a VAPID key", |tx| {
            tx.execute(
                "INSERT INTO push_vapid_keys (project, private_key, public_key, created_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (project) DO NOTHING",
                params![project, key.private_key, key.public_key, key.created_at],
            )
            .context("storing a VAPID key")?;
            tx.query_row(
                "SELECT private_key, public_key, created_at FROM push_vapid_keys WHERE project = ?1",
                params![project],
                |r| Ok(VapidKey { private_key: r.get(0)?, public_key: r.get(1)?, created_at: r.get(2)? }),
            )
            .context("reading a VAPID key")
        })
    }

    fn put_subscription(
        &self,
        project: &str,
        sub: &NewSubscription<'_>,
        max_per_project: u32,
        max_per_user: u32,
    ) -> Result<Subscription, SubscribeError> {
        let mut conn = self.writer_lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("registering a push subscription: starting a transaction")?;
        let existing: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT id, user_id FROM push_subscriptions WHERE project = ?1 AND endpoint = ?2",
                params![project, sub.endpoint],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .context("looking up a push endpoint")?;
        let id = match existing {
            Some((_, Some(owner))) if sub.user_id.is_some_and(|u| u != owner) => {
                return Err(SubscribeError::EndpointTaken);
            }
            Some((id, owner)) => {
                // Fresh keys (the browser may have rotated them); an unowned endpoint registered
                // again by a signed-in user becomes theirs.
                let user = sub.user_id.map(str::to_owned).or(owner);
                tx.execute(
                    "UPDATE push_subscriptions SET p256dh = ?3, auth = ?4, user_id = ?5
                     WHERE project = ?1 AND id = ?2",
                    params![project, id, sub.p256dh, sub.auth, user],
                )
                .context("updating a push subscription")?;
                id
            }
            None => {
                let in_project = count(
                    &tx,
                    "SELECT count(*) FROM push_subscriptions WHERE project = ?1",
                    params![project],
                )?;
                if in_project >= u64::from(max_per_project) {
                    return Err(SubscribeError::ProjectFull { limit: max_per_project });
                }
                if let Some(user) = sub.user_id {
                    let mine = count(
                        &tx,
                        "SELECT count(*) FROM push_subscriptions WHERE project = ?1 AND user_id = ?2",
                        params![project, user],
                    )?;
                    if mine >= u64::from(max_per_user) {
                        return Err(SubscribeError::UserFull { limit: max_per_user });
                    }
                }
                tx.execute(
                    "INSERT INTO push_subscriptions
                        (project, id, kind, user_id, endpoint, p256dh, auth, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        project,
                        sub.id,
                        sub.kind,
                        sub.user_id,
                        sub.endpoint,
                        sub.p256dh,
                        sub.auth,
                        sub.now
                    ],
                )
                .context("inserting a push subscription")?;
                sub.id.to_owned()
            }
        };
        let stored = get_sub(&tx, project, &id)?.expect("written in this transaction");
        tx.commit().context("registering a push subscription: committing")?;
        Ok(stored)
    }

    fn get_subscription(&self, project: &str, id: &str) -> Result<Option<Subscription>> {
        self.read(|conn| get_sub(conn, project, id))
    }

    fn list_subscriptions(
        &self,
        project: &str,
        user: Option<&str>,
        topic: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Subscription>> {
        self.read(|conn| {
            let cols = SUB_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>();
            let mut sql = format!("SELECT {} FROM push_subscriptions s", cols.join(", "));
            if topic.is_some() {
                sql.push_str(
                    " JOIN push_topic_members t ON t.project = s.project AND t.subscription = s.id
                      AND t.topic = :topic",
                );
            }
            sql.push_str(" WHERE s.project = :project");
            if user.is_some() {
                sql.push_str(" AND s.user_id = :user");
            }
            if after.is_some() {
                sql.push_str(" AND s.id > :after");
            }
            sql.push_str(" ORDER BY s.id LIMIT :limit");
            let mut stmt = conn.prepare_cached(&sql).context("listing push subscriptions")?;
            let limit = i64::from(limit);
            let mut p: Vec<(&str, &dyn rusqlite::ToSql)> =
                vec![(":project", &project), (":limit", &limit)];
            if let Some(t) = &topic {
                p.push((":topic", t));
            }
            if let Some(u) = &user {
                p.push((":user", u));
            }
            if let Some(a) = &after {
                p.push((":after", a));
            }
            let subs = stmt
                .query_map(p.as_slice(), |r| sub_from_row(r, 0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .context("listing push subscriptions")?;
            subs.into_iter().map(|s| with_topics(conn, project, s)).collect()
        })
    }

    fn delete_subscription(&self, project: &str, id: &str) -> Result<bool> {
        self.write("removing a push subscription", |tx| delete_sub_in(tx, project, id))
    }

    fn join_topic(&self, project: &str, id: &str, topic: &str, max_topics: u32) -> Result<()> {
        self.write("joining a push topic", |tx| {
            if get_sub(tx, project, id)?.is_none() {
                return Err(nimbus_store::StoreError::NotFound(format!("subscription {id:?}")));
            }
            let n = count(
                tx,
                "SELECT count(*) FROM push_topic_members WHERE project = ?1 AND subscription = ?2
                 AND topic != ?3",
                params![project, id, topic],
            )?;
            if n >= u64::from(max_topics) {
                return Err(nimbus_store::StoreError::Conflict(format!(
                    "a subscription joins at most {max_topics} topics"
                )));
            }
            tx.execute(
                "INSERT INTO push_topic_members (project, topic, subscription) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![project, topic, id],
            )
            .context("joining a push topic")?;
            Ok(())
        })
    }

    fn leave_topic(&self, project: &str, id: &str, topic: &str) -> Result<bool> {
        self.write("leaving a push topic", |tx| {
            tx.execute(
                "DELETE FROM push_topic_members WHERE project = ?1 AND topic = ?2 AND subscription = ?3",
                params![project, topic, id],
            )
            .map(|n| n > 0)
            .context("leaving a push topic")
        })
    }

    fn enqueue(&self, project: &str, msg: &NewMessage<'_>) -> Result<(u64, u64), EnqueueError> {
        let mut conn = self.writer_lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("queueing a push message: starting a transaction")?;
        let fetch = i64::from(msg.max_targets) + 1;
        let (sql, value) = match msg.target {
            Target::User(u) => (
                "SELECT id FROM push_subscriptions WHERE project = ?1 AND user_id = ?2 LIMIT ?3",
                u,
            ),
            Target::Topic(t) => (
                "SELECT subscription FROM push_topic_members WHERE project = ?1 AND topic = ?2
                 LIMIT ?3",
                t,
            ),
            Target::Subscription(s) => {
                ("SELECT id FROM push_subscriptions WHERE project = ?1 AND id = ?2 LIMIT ?3", s)
            }
        };
        let targets: Vec<String> = tx
            .prepare_cached(sql)
            .and_then(|mut stmt| {
                stmt.query_map(params![project, value, fetch], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .context("resolving a push message's targets")?;
        if matches!(msg.target, Target::Subscription(_)) && targets.is_empty() {
            return Err(EnqueueError::NoSuchSubscription);
        }
        if targets.len() > msg.max_targets as usize {
            return Err(EnqueueError::TooManyTargets { limit: msg.max_targets });
        }
        let sender = serde_json::to_string(&msg.sender).context("encoding the sender")?;
        tx.execute(
            "INSERT INTO push_messages (project, id, target_kind, target, payload, ttl, urgency,
                 topic, sender, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                project,
                msg.id,
                msg.target.kind(),
                value,
                msg.payload,
                msg.ttl,
                msg.urgency,
                msg.topic,
                sender,
                msg.now,
                msg.now + i64::from(msg.ttl) * 1000
            ],
        )
        .context("inserting a push message")?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO push_deliveries (project, message, subscription, state,
                         next_attempt_at, updated_at)
                     VALUES (?1, ?2, ?3, 'queued', ?4, ?4)",
                )
                .context("preparing the delivery insert")?;
            for sub in &targets {
                insert
                    .execute(params![project, msg.id, sub, msg.now])
                    .context("inserting a push delivery")?;
            }
        }
        let mut data = msg.event_data.clone();
        if let Some(obj) = data.as_object_mut() {
            obj.insert("deliveries".into(), targets.len().into());
        }
        let event = NewEvent {
            project: project.to_owned(),
            kind: EVENT_QUEUED.to_owned(),
            source: format!("/v1/projects/{project}/push"),
            subject: format!("messages/{}", msg.id),
            data,
        };
        let positions = crate::events::append_in(&tx, &[event])?;
        tx.commit().context("queueing a push message: committing")?;
        drop(conn);
        let position = positions[0];
        self.events_committed(position);
        Ok((targets.len() as u64, position))
    }

    fn message(&self, project: &str, id: &str) -> Result<Option<MessageInfo>> {
        self.read(|conn| {
            let found = conn
                .prepare_cached(
                    "SELECT target_kind, target, ttl, urgency, topic, sender, created_at
                     FROM push_messages WHERE project = ?1 AND id = ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![project, id], |r| {
                        Ok(MessageInfo {
                            id: id.to_owned(),
                            target_kind: r.get(0)?,
                            target: r.get(1)?,
                            ttl: r.get(2)?,
                            urgency: r.get(3)?,
                            topic: r.get(4)?,
                            sender: crate::sqlite::json_column(r, 5)?,
                            created_at: r.get(6)?,
                            deliveries: DeliveryCounts {
                                queued: 0,
                                sent: 0,
                                failed: 0,
                                expired: 0,
                            },
                        })
                    })
                    .optional()
                })
                .context("reading a push message")?;
            let Some(mut info) = found else { return Ok(None) };
            let counts: Vec<(String, i64)> = conn
                .prepare_cached(
                    "SELECT state, count(*) FROM push_deliveries WHERE project = ?1 AND message = ?2
                     GROUP BY state",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![project, id], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .context("counting a message's deliveries")?;
            for (state, n) in counts {
                let n = n as u64;
                match state.as_str() {
                    QUEUED => info.deliveries.queued = n,
                    SENT => info.deliveries.sent = n,
                    FAILED => info.deliveries.failed = n,
                    EXPIRED => info.deliveries.expired = n,
                    _ => {}
                }
            }
            Ok(Some(info))
        })
    }

    fn deliveries(&self, project: &str, q: &DeliveryQuery<'_>) -> Result<Vec<DeliveryInfo>> {
        self.read(|conn| {
            let mut sql = String::from(
                "SELECT id, message, subscription, state, attempts, last_status, last_error,
                        next_attempt_at, updated_at
                 FROM push_deliveries WHERE project = :project AND id > :after",
            );
            if q.message.is_some() {
                sql.push_str(" AND message = :message");
            }
            if q.subscription.is_some() {
                sql.push_str(" AND subscription = :subscription");
            }
            sql.push_str(" ORDER BY id LIMIT :limit");
            let after = q.after.unwrap_or(0) as i64;
            let limit = i64::from(q.limit);
            let mut p: Vec<(&str, &dyn rusqlite::ToSql)> =
                vec![(":project", &project), (":after", &after), (":limit", &limit)];
            if let Some(m) = &q.message {
                p.push((":message", m));
            }
            if let Some(s) = &q.subscription {
                p.push((":subscription", s));
            }
            conn.prepare_cached(&sql)
                .and_then(|mut stmt| {
                    stmt.query_map(p.as_slice(), |r| {
                        Ok(DeliveryInfo {
                            id: r.get::<_, i64>(0)? as u64,
                            message: r.get(1)?,
                            subscription: r.get(2)?,
                            state: r.get(3)?,
                            attempts: r.get(4)?,
                            last_status: r.get(5)?,
                            last_error: r.get(6)?,
                            next_attempt_at: r.get(7)?,
                            updated_at: r.get(8)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .context("listing push deliveries")
        })
    }

    fn claim(&self, now: UnixMillis, lease_until: UnixMillis, limit: u32) -> Result<Vec<Claimed>> {
        self.write("claiming push deliveries", |tx| {
            let mut claimed = tx
                .prepare_cached(
                    "SELECT d.id, d.project, d.message, d.attempts, m.payload, m.ttl, m.urgency,
                            m.topic, m.expires_at,
                            s.id, s.kind, s.user_id, s.endpoint, s.p256dh, s.auth, s.created_at
                     FROM push_deliveries d
                     JOIN push_messages m ON m.project = d.project AND m.id = d.message
                     LEFT JOIN push_subscriptions s
                         ON s.project = d.project AND s.id = d.subscription
                     WHERE d.state = 'queued' AND d.next_attempt_at <= ?1
                     ORDER BY d.next_attempt_at LIMIT ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![now, limit], |r| {
                        let sub_id: Option<String> = r.get(9)?;
                        Ok(Claimed {
                            id: r.get::<_, i64>(0)? as u64,
                            project: r.get(1)?,
                            message: r.get(2)?,
                            attempts: r.get(3)?,
                            payload: r.get(4)?,
                            ttl: r.get(5)?,
                            urgency: r.get(6)?,
                            topic: r.get(7)?,
                            expires_at: r.get(8)?,
                            subscription: match sub_id {
                                Some(_) => Some(sub_from_row(r, 9)?),
                                None => None,
                            },
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .context("claiming push deliveries")?;
            let mut lease = tx
                .prepare_cached(
                    "UPDATE push_deliveries SET next_attempt_at = ?2, lease_until = ?2,
                         attempts = attempts + 1 WHERE id = ?1",
                )
                .context("preparing the lease")?;
            for c in &mut claimed {
                lease.execute(params![c.id as i64, lease_until]).context("leasing a delivery")?;
                c.attempts += 1;
            }
            Ok(claimed)
        })
    }

    fn complete(&self, outcomes: &[(u64, Outcome)], now: UnixMillis) -> Result<()> {
        self.write("recording push deliveries", |tx| {
            let mut update = tx
                .prepare_cached(
                    "UPDATE push_deliveries SET state = ?2, next_attempt_at = ?3, lease_until = 0,
                         last_status = ?4, last_error = ?5, updated_at = ?6
                     WHERE id = ?1 AND state = 'queued'
                     RETURNING project, subscription",
                )
                .context("preparing the delivery update")?;
            let mut sent: std::collections::BTreeMap<String, u64> = Default::default();
            for (id, outcome) in outcomes {
                let (state, next, status, error, remove) = match outcome {
                    Outcome::Sent { status } => (SENT, now, Some(*status), None, false),
                    Outcome::Retry { at, status, error } => {
                        (QUEUED, *at, *status, Some(error.as_str()), false)
                    }
                    Outcome::Failed { status, error, remove_subscription } => {
                        (FAILED, now, *status, Some(error.as_str()), *remove_subscription)
                    }
                    Outcome::Expired => {
                        (EXPIRED, now, None, Some("the message's TTL ran out"), false)
                    }
                };
                let row: Option<(String, String)> = update
                    .query_row(params![*id as i64, state, next, status, error, now], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                    .context("recording a push delivery")?;
                // Metered here, in the outcome's transaction: a delivery leaves `queued` once,
                // so each message delivered counts exactly once.
                if let (Outcome::Sent { .. }, Some((project, _))) = (outcome, &row) {
                    *sent.entry(project.clone()).or_default() += 1;
                }
                if let (true, Some((project, sub))) = (remove, row) {
                    delete_sub_in(tx, &project, &sub)?;
                }
            }
            let hour = nimbus_model::usage::hour_of(now);
            for (project, n) in sent {
                let c = nimbus_model::usage::UsageCounters { push_sent: n, ..Default::default() };
                crate::usage::add_hourly(tx, &project, hour, "", &c)?;
            }
            Ok(())
        })
    }

    fn next_due(&self) -> Result<Option<UnixMillis>> {
        self.read(|conn| {
            conn.query_row(
                "SELECT min(next_attempt_at) FROM push_deliveries WHERE state = 'queued'",
                [],
                |r| r.get(0),
            )
            .context("finding the next push delivery")
        })
    }

    fn backlog(&self) -> Result<Backlog> {
        self.read(|conn| {
            // Both over the partial index of queued rows; ids are insertion order, so the
            // smallest is the oldest queued delivery (a replayed one keeps its message's age).
            let (queued, first): (i64, Option<i64>) = conn
                .query_row(
                    "SELECT count(*), min(id) FROM push_deliveries WHERE state = 'queued'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .context("counting queued push deliveries")?;
            let oldest_queued_at = match first {
                None => None,
                Some(id) => conn
                    .query_row(
                        "SELECT m.created_at FROM push_deliveries d
                         JOIN push_messages m ON m.project = d.project AND m.id = d.message
                         WHERE d.id = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                    .optional()
                    .context("reading the oldest queued push message")?,
            };
            Ok(Backlog { queued: queued as u64, oldest_queued_at })
        })
    }

    fn requeue_failed(
        &self,
        project: &str,
        message: Option<&str>,
        subscription: Option<&str>,
        now: UnixMillis,
    ) -> Result<u64> {
        self.write("replaying push deliveries", |tx| {
            // Only the given filters, so the (project, message|subscription, id) indexes apply.
            let mut sql = String::from(
                "UPDATE push_deliveries SET state = 'queued', attempts = 0, next_attempt_at = :now,
                     lease_until = 0, updated_at = :now
                 WHERE project = :project AND state = 'failed'
                   AND EXISTS (SELECT 1 FROM push_subscriptions s
                               WHERE s.project = push_deliveries.project
                                 AND s.id = push_deliveries.subscription)
                   AND EXISTS (SELECT 1 FROM push_messages m
                               WHERE m.project = push_deliveries.project
                                 AND m.id = push_deliveries.message AND m.expires_at > :now)",
            );
            let mut p: Vec<(&str, &dyn rusqlite::ToSql)> =
                vec![(":project", &project), (":now", &now)];
            if let Some(m) = &message {
                sql.push_str(" AND message = :message");
                p.push((":message", m));
            }
            if let Some(s) = &subscription {
                sql.push_str(" AND subscription = :subscription");
                p.push((":subscription", s));
            }
            tx.execute(&sql, p.as_slice()).map(|n| n as u64).context("replaying push deliveries")
        })
    }

    fn prune_messages(&self, before: UnixMillis, limit: u32) -> Result<u64> {
        self.write("pruning push messages", |tx| {
            // No index on created_at (no migration for it): the scan goes in rowid order, which
            // is insertion order, so old messages come first and LIMIT stops it early; when
            // nothing is old it reads the table once (hourly).
            let old: Vec<(String, String)> = tx
                .prepare_cached(
                    "SELECT project, id FROM push_messages m WHERE created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM push_deliveries d
                                       WHERE d.project = m.project AND d.message = m.id
                                         AND d.state = 'queued')
                     LIMIT ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![before, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .context("finding old push messages")?;
            let mut deliveries = tx
                .prepare_cached("DELETE FROM push_deliveries WHERE project = ?1 AND message = ?2")
                .context("preparing the delivery prune")?;
            let mut messages = tx
                .prepare_cached("DELETE FROM push_messages WHERE project = ?1 AND id = ?2")
                .context("preparing the message prune")?;
            for (project, id) in &old {
                deliveries.execute(params![project, id]).context("pruning push deliveries")?;
                messages.execute(params![project, id]).context("pruning a push message")?;
            }
            Ok(old.len() as u64)
        })
    }

    fn delete_project(&self, project: &str) -> Result<u64> {
        self.write("deleting a project's push data", |tx| {
            let mut n = 0;
            for table in [
                "push_deliveries",
                "push_messages",
                "push_topic_members",
                "push_subscriptions",
                "push_vapid_keys",
            ] {
                n += tx
                    .execute(&format!("DELETE FROM {table} WHERE project = ?1"), params![project])
                    .context("deleting a project's push data")? as u64;
            }
            Ok(n)
        })
    }
}
