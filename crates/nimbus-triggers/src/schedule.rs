//! The scheduler: fires each cron tick of every schedule trigger once, as a
//! `dev.nimbus.scheduler.tick` event on the log. The store's compare-and-set on the last fired
//! tick makes a tick fire once across restarts (and across nodes sharing a store). Ticks missed
//! while the server was down are skipped, or all run (`catch_up`, at most [`MAX_CATCH_UP`]).

use std::collections::HashMap;
use std::time::Duration;

use chrono::TimeZone;
use nimbus_model::event_types::SCHEDULE_TICK;
use nimbus_model::{TriggerKind, TriggerSpec, UnixMillis, now_millis, parse_cron, trigger_names};
use nimbus_store::events::NewEvent;
use serde_json::json;

use crate::{TriggerService, blocking};

/// Most missed ticks a `catch_up` schedule runs after a downtime (the newest ones).
pub const MAX_CATCH_UP: usize = 100;

/// Longest sleep between looks at the schedules (deploys add and change schedules).
const LOOK_EVERY: Duration = Duration::from_secs(1);

type Key = (String, String, String);

struct Known {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
    spec: TriggerSpec,
    last: UnixMillis,
}

pub(crate) async fn run(service: TriggerService) {
    let mut known: HashMap<Key, Known> = HashMap::new();
    loop {
        let mut wake = now_millis() + LOOK_EVERY.as_millis() as i64;
        let mut seen = Vec::new();
        for f in service.inner.functions.all_triggered() {
            let spec = &f.info.spec;
            for (t, name) in spec.triggers.iter().zip(trigger_names(&spec.triggers)) {
                if t.kind != TriggerKind::Schedule {
                    continue;
                }
                let key = (f.info.project.clone(), spec.name.clone(), name);
                seen.push(key.clone());
                match tick(&service, &mut known, key, t).await {
                    Ok(Some(next)) => wake = wake.min(next),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "scheduler"),
                }
            }
        }
        known.retain(|k, _| seen.contains(k));
        let wait = (wake - now_millis()).clamp(1, LOOK_EVERY.as_millis() as i64);
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// Fire what is due of one schedule; returns when its next tick is.
async fn tick(
    service: &TriggerService,
    known: &mut HashMap<Key, Known>,
    key: Key,
    t: &TriggerSpec,
) -> crate::Result<Option<UnixMillis>> {
    let now = now_millis();
    if known.get(&key).is_none_or(|k| k.spec != *t) {
        let cron = parse_cron(t.cron.as_deref().unwrap_or_default())
            .map_err(crate::TriggerError::Invalid)?;
        let tz: chrono_tz::Tz =
            t.timezone.as_deref().unwrap_or("UTC").parse().unwrap_or(chrono_tz::UTC);
        let (store, k) = (service.inner.stores.schedules.clone(), key.clone());
        let stored = blocking(move || Ok(store.last_tick(&k.0, &k.1, &k.2)?)).await?;
        let last = match stored {
            Some(last) => last,
            None => {
                // A new schedule starts now: nothing before its deploy is "missed".
                fire(service, &key, now, Vec::new()).await?;
                now
            }
        };
        known.insert(key.clone(), Known { cron, tz, spec: t.clone(), last });
    }
    let k = known.get_mut(&key).expect("inserted above");
    let mut due = Vec::new();
    let mut cursor =
        k.tz.timestamp_millis_opt(k.last)
            .single()
            .unwrap_or_else(|| k.tz.timestamp_millis_opt(0).unwrap());
    let next = loop {
        let Ok(at) = k.cron.find_next_occurrence(&cursor, false) else { break None };
        let ms = at.timestamp_millis();
        if ms > now {
            break Some(ms);
        }
        due.push(ms);
        if due.len() > MAX_CATCH_UP {
            due.remove(0);
        }
        cursor = at;
    };
    if due.is_empty() {
        return Ok(next);
    }
    let grace = service.inner.config.schedule_grace.as_millis() as i64;
    let newest = *due.last().expect("not empty");
    let to_run: Vec<UnixMillis> =
        if t.catch_up { due } else { due.into_iter().filter(|ms| now - ms <= grace).collect() };
    if to_run.is_empty() {
        // Missed while the server was down: skip them.
        let skipped = fire(service, &key, newest, Vec::new()).await?;
        if skipped {
            service.inner.metrics.ticks_skipped.inc();
        }
    }
    for ms in to_run {
        let event = NewEvent {
            project: key.0.clone(),
            kind: SCHEDULE_TICK.to_owned(),
            source: format!("/v1/projects/{}/functions/{}/triggers/{}", key.0, key.1, key.2),
            subject: format!("{}/{}", key.1, key.2),
            data: json!({
                "function": key.1,
                "trigger": key.2,
                "cron": t.cron,
                "timezone": t.timezone.as_deref().unwrap_or("UTC"),
                "scheduled_time": chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "tick": ms,
                "late_ms": now - ms,
            }),
        };
        if fire(service, &key, ms, vec![event]).await? {
            service.inner.metrics.ticks.inc();
        }
    }
    k.last = newest;
    Ok(next)
}

async fn fire(
    service: &TriggerService,
    key: &Key,
    tick: UnixMillis,
    events: Vec<NewEvent>,
) -> crate::Result<bool> {
    let (store, k) = (service.inner.stores.schedules.clone(), key.clone());
    blocking(move || Ok(store.fire_tick(&k.0, &k.1, &k.2, tick, &events)?)).await
}
