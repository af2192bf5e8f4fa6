//! Document collections on SQLite: documents as JSONB in one table keyed `(coll, id)`, filters
//! compiled to SQL over `json_extract`/`json_type`, declared indexes as partial expression
//! indexes, and one event per write appended in the same transaction.
//!
//! # What reaches SQL text
//!
//! Values never do: every value is a bound parameter. Three things are formatted into SQL:
//! the collection's integer id (from our own table), index names built from it and a hash, and
//! JSON paths of [`FieldPath`]s, whose grammar admits only `[A-Za-z0-9_]` segments joined by `.`.
//! A path is written as a literal (`'$.a.b'`) when a declared index covers it, because SQLite only
//! uses an expression index for the very same expression, and a bound parameter is not; other
//! paths are bound too. The collection id is a literal for the same reason: the partial indexes
//! are `WHERE coll = <id>`, and the planner can only prove that a query implies that from a
//! literal.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::fmt::Write as _;

use nimbus_model::now_millis;
use nimbus_store::documents::{
    Collection, CollectionSpec, CompareOp, Cursor, Document, DocumentStore, Expect, FailureReason,
    FieldPath, Filter, IndexSpec, Plan, Query, QueryPage, SortField, WriteFailure, WriteOp,
    WriteOutcome, document_event,
};
use nimbus_store::{Result, StoreError};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params, params_from_iter};
use serde_json::Value;

use crate::error::Context;
use crate::sqlite::{SqliteStore, json_column};

struct CollectionRow {
    id: i64,
    collection: Collection,
}

const COLLECTION_COLUMNS: &str =
    "id, project, name, schema_json, rules_json, indexes_json, created_at, updated_at";

fn collection_from_row(row: &Row<'_>) -> rusqlite::Result<CollectionRow> {
    let schema: Option<String> = row.get(3)?;
    let schema = schema.map(|s| serde_json::from_str(&s)).transpose().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(CollectionRow {
        id: row.get(0)?,
        collection: Collection {
            project: row.get(1)?,
            name: row.get(2)?,
            spec: CollectionSpec {
                schema,
                rules: json_column(row, 4)?,
                indexes: json_column(row, 5)?,
            },
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
        },
    })
}

fn find_collection(conn: &Connection, project: &str, name: &str) -> Result<Option<CollectionRow>> {
    // A retired collection (being deleted) is found by no name, whatever a caller passes.
    if name.starts_with('~') {
        return Ok(None);
    }
    conn.prepare_cached(&format!(
        "SELECT {COLLECTION_COLUMNS} FROM doc_collections WHERE project = ?1 AND name = ?2"
    ))
    .and_then(|mut s| s.query_row([project, name], collection_from_row).optional())
    .with_context(|| format!("reading collection {project}/{name}"))
}

fn require_collection(conn: &Connection, project: &str, name: &str) -> Result<CollectionRow> {
    find_collection(conn, project, name)?
        .ok_or_else(|| StoreError::NotFound(format!("collection {name}")))
}

/// `dix_<collection id>_<FNV-1a of the fields>`: no user text in an identifier, and the same
/// fields keep the same index across spec updates (no rebuild when only the rules change).
fn index_name(coll: i64, index: &IndexSpec) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in index.fields.iter().flat_map(|f| f.to_string().into_bytes().into_iter().chain([0])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("dix_{coll}_{h:016x}")
}

fn json_path(p: &FieldPath) -> String {
    // Safe as an SQL string literal: segments are [A-Za-z0-9_] only (FieldPath's grammar).
    format!("$.{p}")
}

/// Create and drop indexes so that the collection has exactly those of `spec`.
fn sync_indexes(tx: &Transaction<'_>, coll: i64, spec: &CollectionSpec) -> Result<()> {
    let wanted: HashMap<String, &IndexSpec> =
        spec.indexes.iter().map(|i| (index_name(coll, i), i)).collect();
    let existing: Vec<String> = tx
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'documents' AND name LIKE ?1")
        .and_then(|mut s| s.query_map([format!("dix_{coll}_%")], |r| r.get(0))?.collect())
        .context("listing a collection's indexes")?;
    for name in &existing {
        // LIKE's `_` matches any character; check the exact prefix.
        if name.starts_with(&format!("dix_{coll}_")) && !wanted.contains_key(name) {
            tx.execute_batch(&format!("DROP INDEX \"{name}\"")).context("dropping an index")?;
        }
    }
    for (name, index) in wanted {
        let mut cols = String::new();
        for f in &index.fields {
            write!(cols, "json_extract(data, '{}'), ", json_path(f)).ok();
        }
        tx.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS \"{name}\" ON documents ({cols}id) WHERE coll = {coll}"
        ))
        .with_context(|| format!("creating index {}", index.name))?;
    }
    Ok(())
}

fn drop_indexes(tx: &Transaction<'_>, coll: i64) -> Result<()> {
    sync_indexes(tx, coll, &CollectionSpec::default())
}

// Deleting a collection. Its documents can be millions (they are bounded only by the project's
// stored-bytes quota, if it has one), and deleting them in the transaction that removes the
// collection would hold SQLite's single writer, so every project's writes and the invocation
// recorder, for seconds: something any tenant with a service key could do at will. So the
// collection leaves the namespace at once (renamed to `~deleted-{id}`, which no valid name
// matches and no listing shows) with its indexes dropped, and its documents then go
// `PURGE_STEP` per transaction, the writer handed on between steps (`delete_in_steps`); the row
// goes last, since the storage triggers find a document's project through it. A collection
// left retired by a crash is purged by the next deletion in its project.

/// Documents deleted per transaction while a retired collection is purged.
const PURGE_STEP: usize = 1000;

/// Take a collection out of its project's namespace and drop its indexes.
fn retire_collection(tx: &Transaction<'_>, coll: i64) -> Result<()> {
    drop_indexes(tx, coll)?;
    tx.execute(
        "UPDATE doc_collections SET name = ?2 WHERE id = ?1",
        params![coll, format!("~deleted-{coll}")],
    )
    .context("retiring a collection")?;
    Ok(())
}

/// Delete the documents and rows of the project's retired collections, a step at a time.
fn purge_retired(store: &SqliteStore, project: &str) -> Result<()> {
    let retired: Vec<i64> = store.read(|conn| {
        conn.prepare_cached(
            "SELECT id FROM doc_collections WHERE project = ?1 AND substr(name, 1, 1) = '~'",
        )
        .and_then(|mut s| s.query_map([project], |r| r.get(0))?.collect())
        .context("listing retired collections")
    })?;
    for coll in retired {
        store.delete_in_steps(
            "deleting a collection's documents",
            "documents",
            "rowid",
            "coll = ?1",
            PURGE_STEP,
            &[&coll],
        )?;
        store.write("deleting a collection", |tx| {
            tx.execute("DELETE FROM doc_collections WHERE id = ?1", [coll])
                .context("deleting a collection")
        })?;
    }
    Ok(())
}

const DOC_COLUMNS: &str = "id, revision, created_at, updated_at, json(data)";

fn document_from_row(row: &Row<'_>) -> rusqlite::Result<Document> {
    Ok(Document {
        id: row.get(0)?,
        revision: row.get::<_, i64>(1)? as u64,
        created_at: row.get(2)?,
        updated_at: row.get(3)?,
        data: json_column(row, 4)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Query compilation

struct Sql<'a> {
    params: Vec<SqlValue>,
    /// Paths that a declared index covers: written as literals so the index matches.
    indexed: &'a HashSet<FieldPath>,
}

impl Sql<'_> {
    fn bind(&mut self, v: SqlValue) -> String {
        self.params.push(v);
        format!("?{}", self.params.len())
    }

    fn path_arg(&mut self, p: &FieldPath) -> String {
        if self.indexed.contains(p) {
            format!("'{}'", json_path(p))
        } else {
            self.bind(SqlValue::Text(json_path(p)))
        }
    }

    fn extract(&mut self, p: &FieldPath) -> String {
        let a = self.path_arg(p);
        format!("json_extract(d.data, {a})")
    }

    fn json_type(&mut self, p: &FieldPath) -> String {
        let a = self.path_arg(p);
        format!("json_type(d.data, {a})")
    }

    fn scalar(&mut self, v: &Value) -> Option<String> {
        Some(match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => self.bind(SqlValue::Integer(i)),
                None => self.bind(SqlValue::Real(n.as_f64()?)),
            },
            Value::String(s) => self.bind(SqlValue::Text(s.clone())),
            _ => return None,
        })
    }

    /// `value` (an SQL value expression) with JSON type `ty` equals the scalar `v`, typed: a
    /// number never equals a string or a boolean (json_extract gives `true` as 1).
    fn typed_eq(&mut self, value: &str, ty: &str, v: &Value) -> String {
        match v {
            Value::Null => format!("({ty} IS NULL OR {ty} = 'null')"),
            Value::Bool(b) => format!("{ty} IS '{b}'"),
            Value::Number(_) => {
                let p = self.scalar(v).unwrap_or_else(|| "NULL".into());
                format!("({value} = {p} AND {ty} IN ('integer', 'real'))")
            }
            Value::String(_) => {
                let p = self.scalar(v).unwrap_or_else(|| "NULL".into());
                format!("({value} = {p} AND {ty} = 'text')")
            }
            // Lists and objects are not filter values (the service refuses them).
            _ => "0".into(),
        }
    }

    fn filter(&mut self, f: &Filter) -> String {
        match f {
            Filter::True => "1".into(),
            Filter::False => "0".into(),
            Filter::And(items) | Filter::Or(items) if items.is_empty() => {
                if matches!(f, Filter::And(_)) { "1".into() } else { "0".into() }
            }
            Filter::And(items) => {
                let parts: Vec<String> = items.iter().map(|i| self.filter(i)).collect();
                format!("({})", parts.join(" AND "))
            }
            Filter::Or(items) => {
                let parts: Vec<String> = items.iter().map(|i| self.filter(i)).collect();
                format!("({})", parts.join(" OR "))
            }
            // `IS NOT 1`, not `NOT`: a NULL (a comparison with a missing field) is "not true",
            // so its negation must be true.
            Filter::Not(inner) => format!("(({}) IS NOT 1)", self.filter(inner)),
            Filter::Compare(p, op, v) => {
                let (x, t) = (self.extract(p), self.json_type(p));
                match op {
                    CompareOp::Eq => self.typed_eq(&x, &t, v),
                    CompareOp::Ne => format!("(({}) IS NOT 1)", self.typed_eq(&x, &t, v)),
                    _ => {
                        let sym = match op {
                            CompareOp::Lt => "<",
                            CompareOp::Le => "<=",
                            CompareOp::Gt => ">",
                            _ => ">=",
                        };
                        let types = match v {
                            Value::Number(_) => "IN ('integer', 'real')",
                            Value::String(_) => "= 'text'",
                            _ => return "0".into(),
                        };
                        let Some(p) = self.scalar(v) else { return "0".into() };
                        format!("({x} {sym} {p} AND {t} {types})")
                    }
                }
            }
            Filter::In(p, values) => {
                if values.is_empty() {
                    return "0".into();
                }
                let (x, t) = (self.extract(p), self.json_type(p));
                let parts: Vec<String> = values.iter().map(|v| self.typed_eq(&x, &t, v)).collect();
                format!("({})", parts.join(" OR "))
            }
            Filter::Contains(p, v) => {
                let pa = self.path_arg(p);
                let elem = self.typed_eq("je.value", "je.type", v);
                let mut sql = format!(
                    "(EXISTS (SELECT 1 FROM json_each(d.data, {pa}) AS je WHERE \
                     CASE json_type(d.data, {pa}) WHEN 'array' THEN {elem}"
                );
                if let Value::String(_) = v {
                    let key = self.scalar(v).unwrap_or_default();
                    let needle = self.scalar(v).unwrap_or_default();
                    write!(
                        sql,
                        " WHEN 'object' THEN je.key = {key} ELSE 0 END) \
                         OR (json_type(d.data, {pa}) = 'text' \
                         AND instr(json_extract(d.data, {pa}), {needle}) > 0))"
                    )
                    .ok();
                } else {
                    sql.push_str(" ELSE 0 END))");
                }
                sql
            }
            Filter::Exists(p) => {
                let x = self.extract(p);
                format!("({x} IS NOT NULL)")
            }
            Filter::IsContainer { path, strings } => {
                let t = self.json_type(path);
                let more = if *strings { ", 'object', 'text'" } else { "" };
                format!("({t} IS NULL OR {t} IN ('null', 'array'{more}))")
            }
        }
    }

    fn sort_expr(&mut self, f: &SortField) -> String {
        match f {
            SortField::Field(p) => self.extract(p),
            SortField::Id => "d.id".into(),
            SortField::CreatedAt => "d.created_at".into(),
            SortField::UpdatedAt => "d.updated_at".into(),
        }
    }
}

fn json_to_sql(v: &Value) -> Option<SqlValue> {
    Some(match v {
        Value::Null => SqlValue::Null,
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64()?),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        _ => return None,
    })
}

fn sql_to_json(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::from(i),
        SqlValue::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        SqlValue::Text(s) => Value::String(s),
        SqlValue::Blob(_) => Value::Null,
    }
}

/// The SQL of a query, its parameters, and how many sort columns follow the document columns.
fn compile_query(
    coll: &CollectionRow,
    q: &Query,
    count_only: bool,
) -> Result<(String, Vec<SqlValue>)> {
    let indexed: HashSet<FieldPath> =
        coll.collection.spec.indexes.iter().flat_map(|i| i.fields.iter().cloned()).collect();
    let mut b = Sql { params: Vec::new(), indexed: &indexed };
    let mut sql = String::new();
    let filter = q.filter.as_ref().map(|f| b.filter(f));
    if count_only {
        write!(sql, "SELECT count(*) FROM documents AS d WHERE d.coll = {}", coll.id).ok();
        if let Some(f) = filter {
            write!(sql, " AND {f}").ok();
        }
        return Ok((sql, b.params));
    }
    let keys: Vec<(String, bool)> =
        q.sort.iter().map(|k| (b.sort_expr(&k.field), k.descending)).collect();
    // The id breaks ties, in the direction of the last key, so an index (field, id) read
    // backwards serves a descending sort.
    let id_desc = keys.last().is_some_and(|k| k.1);
    write!(sql, "SELECT d.id, d.revision, d.created_at, d.updated_at, json(d.data)").ok();
    for (k, _) in &keys {
        write!(sql, ", {k}").ok();
    }
    write!(sql, " FROM documents AS d WHERE d.coll = {}", coll.id).ok();
    if let Some(f) = filter {
        write!(sql, " AND {f}").ok();
    }
    if let Some(after) = &q.after {
        if after.values.len() != keys.len() {
            return Err(StoreError::Conflict("the cursor does not match the sort".into()));
        }
        let vals: Vec<SqlValue> = after
            .values
            .iter()
            .map(json_to_sql)
            .collect::<Option<_>>()
            .ok_or_else(|| StoreError::Conflict("cursor values must be scalars".into()))?;
        let uniform = keys.iter().all(|k| k.1 == id_desc);
        let no_nulls = vals.iter().all(|v| !matches!(v, SqlValue::Null));
        if uniform && no_nulls {
            // A row-value comparison: SQLite turns it into an index range.
            let lhs: Vec<&str> = keys.iter().map(|k| k.0.as_str()).chain(["d.id"]).collect();
            let rhs: Vec<String> = vals
                .into_iter()
                .chain([SqlValue::Text(after.id.clone())])
                .map(|v| b.bind(v))
                .collect();
            let op = if id_desc { "<" } else { ">" };
            write!(sql, " AND ({}) {op} ({})", lhs.join(", "), rhs.join(", ")).ok();
        } else {
            // (k1 after v1) OR (k1 = v1 AND k2 after v2) OR ... OR (all equal AND id after).
            // SQLite sorts NULL first ascending and last descending.
            let mut ors = Vec::new();
            let mut eqs: Vec<String> = Vec::new();
            for ((k, desc), v) in keys.iter().zip(vals) {
                let is_null = matches!(v, SqlValue::Null);
                let p = b.bind(v);
                let after = match (desc, is_null) {
                    (false, true) => format!("{k} IS NOT NULL"),
                    (false, false) => format!("{k} > {p}"),
                    (true, true) => "0".to_string(),
                    (true, false) => format!("({k} < {p} OR {k} IS NULL)"),
                };
                ors.push(eqs.iter().cloned().chain([after]).collect::<Vec<_>>().join(" AND "));
                eqs.push(format!("{k} IS {p}"));
            }
            let p = b.bind(SqlValue::Text(after.id.clone()));
            let op = if id_desc { "<" } else { ">" };
            ors.push(
                eqs.into_iter().chain([format!("d.id {op} {p}")]).collect::<Vec<_>>().join(" AND "),
            );
            write!(sql, " AND (({}))", ors.join(") OR (")).ok();
        }
    }
    sql.push_str(" ORDER BY ");
    for (k, desc) in &keys {
        write!(sql, "{k} {}, ", if *desc { "DESC" } else { "ASC" }).ok();
    }
    write!(sql, "d.id {}", if id_desc { "DESC" } else { "ASC" }).ok();
    let limit = q.limit.clamp(1, nimbus_store::documents::MAX_LIMIT);
    let p = b.bind(SqlValue::Integer(i64::from(limit) + 1));
    write!(sql, " LIMIT {p}").ok();
    Ok((sql, b.params))
}

/// Which declared index the plan uses, and whether the query reads the whole collection.
fn plan_of(
    conn: &Connection,
    coll: &CollectionRow,
    sql: &str,
    params: &[SqlValue],
    filtered: bool,
) -> Result<(Option<String>, bool, Vec<String>)> {
    let detail: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .and_then(|mut s| s.query_map(params_from_iter(params), |r| r.get(3))?.collect())
        .context("explaining a query")?;
    let mut index = None;
    let mut searched = false;
    for spec in &coll.collection.spec.indexes {
        let name = index_name(coll.id, spec);
        for line in &detail {
            if line.contains(&name) {
                index.get_or_insert_with(|| spec.name.clone());
                searched |= line.starts_with("SEARCH");
            }
        }
    }
    let sorts = detail.iter().any(|l| l.contains("TEMP B-TREE"));
    let scan = (filtered && !searched) || sorts;
    Ok((index, scan, detail))
}

impl SqliteStore {
    fn cached_plan(
        &self,
        conn: &Connection,
        coll: &CollectionRow,
        sql: &str,
        params: &[SqlValue],
        filtered: bool,
    ) -> Result<(Option<String>, bool)> {
        if let Some(p) = self.plans.lock().get(sql) {
            return Ok(p.clone());
        }
        let (index, scan, _) = plan_of(conn, coll, sql, params, filtered)?;
        let mut plans = self.plans.lock();
        if plans.len() > 4096 {
            plans.clear();
        }
        plans.insert(sql.to_owned(), (index.clone(), scan));
        Ok((index, scan))
    }
}

impl DocumentStore for SqliteStore {
    fn create_collection(
        &self,
        project: &str,
        name: &str,
        spec: &CollectionSpec,
    ) -> Result<Collection> {
        let what = format!("creating collection {project}/{name}");
        let out = self.write(&what, |tx| {
            if find_collection(tx, project, name)?.is_some() {
                return Err(StoreError::Conflict(format!("collection {name} exists")));
            }
            let now = now_millis();
            let schema = spec.schema.as_ref().map(|s| s.to_string());
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO doc_collections (project, name, schema_json, rules_json, \
                     indexes_json, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
                     RETURNING id",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            project,
                            name,
                            schema,
                            spec.rules.to_string(),
                            serde_json::to_string(&spec.indexes).unwrap_or_default(),
                            now
                        ],
                        |r| r.get(0),
                    )
                })
                .context(&what)?;
            sync_indexes(tx, id, spec)?;
            require_collection(tx, project, name).map(|c| c.collection)
        });
        self.plans.lock().clear();
        out
    }

    fn update_collection(
        &self,
        project: &str,
        name: &str,
        spec: &CollectionSpec,
    ) -> Result<Collection> {
        let what = format!("updating collection {project}/{name}");
        let out = self.write(&what, |tx| {
            let coll = require_collection(tx, project, name)?;
            tx.prepare_cached(
                "UPDATE doc_collections SET schema_json = ?2, rules_json = ?3, indexes_json = ?4, \
                 updated_at = ?5 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    coll.id,
                    spec.schema.as_ref().map(|s| s.to_string()),
                    spec.rules.to_string(),
                    serde_json::to_string(&spec.indexes).unwrap_or_default(),
                    now_millis()
                ])
            })
            .context(&what)?;
            sync_indexes(tx, coll.id, spec)?;
            require_collection(tx, project, name).map(|c| c.collection)
        });
        self.plans.lock().clear();
        out
    }

    fn get_collection(&self, project: &str, name: &str) -> Result<Option<Collection>> {
        self.read(|conn| Ok(find_collection(conn, project, name)?.map(|c| c.collection)))
    }

    fn list_collections(&self, project: &str) -> Result<Vec<Collection>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLLECTION_COLUMNS} FROM doc_collections WHERE project = ?1 \
                 AND substr(name, 1, 1) != '~' ORDER BY name"
            ))
            .and_then(|mut s| {
                s.query_map([project], collection_from_row)?
                    .map(|r| r.map(|c| c.collection))
                    .collect()
            })
            .with_context(|| format!("listing collections of {project}"))
        })
    }

    fn delete_collection(&self, project: &str, name: &str) -> Result<bool> {
        let out = self.write(&format!("deleting collection {project}/{name}"), |tx| {
            let Some(coll) = find_collection(tx, project, name)? else { return Ok(false) };
            retire_collection(tx, coll.id)?;
            Ok(true)
        });
        self.plans.lock().clear();
        if out? {
            purge_retired(self, project)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn delete_project(&self, project: &str) -> Result<u64> {
        let out = self.write(&format!("deleting the collections of {project}"), |tx| {
            let ids: Vec<i64> = tx
                .prepare(
                    "SELECT id FROM doc_collections WHERE project = ?1 \
                     AND substr(name, 1, 1) != '~'",
                )
                .and_then(|mut s| s.query_map([project], |r| r.get(0))?.collect())
                .context("listing collections")?;
            for id in &ids {
                retire_collection(tx, *id)?;
            }
            Ok(ids.len() as u64)
        });
        self.plans.lock().clear();
        let n = out?;
        purge_retired(self, project)?;
        Ok(n)
    }

    fn get(&self, project: &str, collection: &str, id: &str) -> Result<Option<Document>> {
        self.read(|conn| {
            let coll = require_collection(conn, project, collection)?;
            conn.prepare_cached(&format!(
                "SELECT {DOC_COLUMNS} FROM documents WHERE coll = ?1 AND id = ?2"
            ))
            .and_then(|mut s| s.query_row(params![coll.id, id], document_from_row).optional())
            .with_context(|| format!("reading document {collection}/{id}"))
        })
    }

    /// Concurrent writes are committed together (group commit): each caller queues its write,
    /// and whoever holds the writer connection next runs every queued write in one transaction,
    /// each under its own savepoint, so a failed condition undoes only its own write. One commit
    /// (one WAL append) for many writes is what lets many clients insert at once; each write
    /// still gets its own outcome and events, in queue order.
    fn write(
        &self,
        project: &str,
        ops: &[WriteOp],
    ) -> Result<std::result::Result<Vec<WriteOutcome>, WriteFailure>> {
        let slot = Arc::new(Mutex::new(None));
        self.doc_writes.lock().push_back(QueuedWrite {
            project: project.to_owned(),
            ops: ops.to_vec(),
            result: slot.clone(),
        });
        let mut conn = self.writer_lock();
        loop {
            // A previous holder of the writer may have committed this write already.
            if let Some(result) = slot.lock().take() {
                return result;
            }
            let batch: Vec<QueuedWrite> = {
                let mut queue = self.doc_writes.lock();
                let n = queue.len().min(GROUP_COMMIT_MAX);
                queue.drain(..n).collect()
            };
            self.commit_group(&mut conn, batch);
        }
    }

    fn query(&self, project: &str, collection: &str, q: &Query) -> Result<QueryPage> {
        self.read(|conn| {
            let coll = require_collection(conn, project, collection)?;
            let (sql, params) = compile_query(&coll, q, false)?;
            let (index, scan) = self.cached_plan(conn, &coll, &sql, &params, q.filter.is_some())?;
            let keys = q.sort.len();
            let mut rows: Vec<(Document, Vec<Value>)> = conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(params_from_iter(&params), |r| {
                        let doc = document_from_row(r)?;
                        let vals = (0..keys)
                            .map(|i| r.get::<_, SqlValue>(5 + i).map(sql_to_json))
                            .collect::<rusqlite::Result<Vec<_>>>()?;
                        Ok((doc, vals))
                    })?
                    .collect()
                })
                .with_context(|| format!("querying collection {collection}"))?;
            let limit = q.limit.clamp(1, nimbus_store::documents::MAX_LIMIT) as usize;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let next = if more {
                rows.last().map(|(d, v)| Cursor { values: v.clone(), id: d.id.clone() })
            } else {
                None
            };
            Ok(QueryPage { documents: rows.into_iter().map(|r| r.0).collect(), next, index, scan })
        })
    }

    fn count(&self, project: &str, collection: &str, filter: Option<&Filter>) -> Result<u64> {
        self.read(|conn| {
            let coll = require_collection(conn, project, collection)?;
            let q = Query { filter: filter.cloned(), ..Query::default() };
            let (sql, params) = compile_query(&coll, &q, true)?;
            conn.prepare_cached(&sql)
                .and_then(|mut s| s.query_row(params_from_iter(&params), |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .with_context(|| format!("counting collection {collection}"))
        })
    }

    fn explain(&self, project: &str, collection: &str, q: &Query) -> Result<Plan> {
        self.read(|conn| {
            let coll = require_collection(conn, project, collection)?;
            let (sql, params) = compile_query(&coll, q, false)?;
            let (index, scan, detail) = plan_of(conn, &coll, &sql, &params, q.filter.is_some())?;
            Ok(Plan { index, scan, detail })
        })
    }
}

/// A write waiting for the group commit, and where its result goes.
pub(crate) struct QueuedWrite {
    project: String,
    ops: Vec<WriteOp>,
    result: WriteSlot,
}

type WriteResult = Result<std::result::Result<Vec<WriteOutcome>, WriteFailure>>;
type WriteSlot = Arc<Mutex<Option<WriteResult>>>;

/// Most writes committed in one transaction.
const GROUP_COMMIT_MAX: usize = 256;

/// Why one write stopped: a failed condition (its savepoint rolls back, the others commit) or a
/// store error.
enum Abort {
    Store(StoreError),
    Failed(WriteFailure),
}

impl SqliteStore {
    /// Run `batch` in one transaction on the writer connection and fill every write's slot.
    fn commit_group(&self, conn: &mut Connection, batch: Vec<QueuedWrite>) {
        let fail_all = |batch: &[QueuedWrite], what: &str, e: &dyn std::fmt::Display| {
            for w in batch {
                *w.result.lock() = Some(Err(StoreError::backend(std::io::Error::other(format!(
                    "writing documents: {what}: {e}"
                )))));
            }
        };
        let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return fail_all(&batch, "starting a transaction", &e),
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut last_position = None;
        for w in &batch {
            let outcome = (|| {
                let mut sp = tx.savepoint().map_err(|e| {
                    Abort::Store(StoreError::backend(std::io::Error::other(e.to_string())))
                })?;
                match apply_write(&sp, &w.project, &w.ops) {
                    Ok((outcomes, position)) => {
                        sp.commit().map_err(|e| {
                            Abort::Store(StoreError::backend(std::io::Error::other(e.to_string())))
                        })?;
                        Ok((outcomes, position))
                    }
                    Err(abort) => {
                        // Undo this write only; dropping the savepoint releases it.
                        let _ = sp.rollback();
                        Err(abort)
                    }
                }
            })();
            results.push(match outcome {
                Ok((outcomes, position)) => {
                    last_position = position.or(last_position);
                    Ok(Ok(outcomes))
                }
                Err(Abort::Failed(f)) => Ok(Err(f)),
                Err(Abort::Store(e)) => Err(e),
            });
        }
        if let Err(e) = tx.commit() {
            return fail_all(&batch, "committing", &e);
        }
        if let Some(p) = last_position {
            self.events_committed(p);
        }
        for (w, r) in batch.iter().zip(results) {
            *w.result.lock() = Some(r);
        }
    }
}

/// One write's changes and events inside the caller's transaction; the position of its last
/// event.
fn apply_write(
    tx: &Connection,
    project: &str,
    ops: &[WriteOp],
) -> std::result::Result<(Vec<WriteOutcome>, Option<u64>), Abort> {
    let mut colls: HashMap<&str, Option<i64>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut events = Vec::with_capacity(ops.len());
    let now = now_millis();
    for (index, op) in ops.iter().enumerate() {
        let fail = |reason| Abort::Failed(WriteFailure { index, reason });
        let coll = match colls.get(op.collection.as_str()) {
            Some(c) => *c,
            None => {
                let c = find_collection(tx, project, &op.collection)
                    .map_err(Abort::Store)?
                    .map(|c| c.id);
                colls.insert(&op.collection, c);
                c
            }
        };
        let coll = coll.ok_or_else(|| fail(FailureReason::NoCollection))?;
        // The old data goes into an update's event (`previous`); a delete returns it
        // from its DELETE instead, so it is read only for a replacement.
        let current: Option<(u64, i64, Option<String>)> = tx
            .prepare_cached(
                "SELECT revision, created_at, CASE WHEN ?3 THEN json(data) END \
                     FROM documents WHERE coll = ?1 AND id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![coll, op.id, op.data.is_some()], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .context("reading a document's revision")
            .map_err(Abort::Store)?;
        match (op.expect, current.as_ref()) {
            (Expect::Absent, Some(_)) => return Err(fail(FailureReason::AlreadyExists)),
            (Expect::Exists, None) => return Err(fail(FailureReason::NotFound)),
            (Expect::Any, None) if op.data.is_none() => {
                return Err(fail(FailureReason::NotFound));
            }
            (Expect::Revision(r), cur) if cur.map(|c| c.0) != Some(r) => {
                return Err(fail(FailureReason::RevisionMismatch(cur.map(|c| c.0))));
            }
            _ => {}
        }
        let mut previous = None;
        let outcome = match (&op.data, current) {
            (Some(data), None) => {
                let text = serde_json::to_string(data)
                    .context("encoding a document")
                    .map_err(Abort::Store)?;
                tx.prepare_cached(
                    "INSERT INTO documents (coll, id, revision, created_at, updated_at, \
                         data) VALUES (?1, ?2, 1, ?3, ?3, jsonb(?4))",
                )
                .and_then(|mut s| s.execute(params![coll, op.id, now, text]))
                .context("inserting a document")
                .map_err(Abort::Store)?;
                WriteOutcome::Created(Document {
                    id: op.id.clone(),
                    revision: 1,
                    created_at: now,
                    updated_at: now,
                    data: data.clone(),
                })
            }
            (Some(data), Some((rev, created_at, old))) => {
                previous = old
                    .map(|old| serde_json::from_str::<Value>(&old))
                    .transpose()
                    .context("decoding a document")
                    .map_err(Abort::Store)?;
                let text = serde_json::to_string(data)
                    .context("encoding a document")
                    .map_err(Abort::Store)?;
                tx.prepare_cached(
                    "UPDATE documents SET revision = ?3, updated_at = ?4, \
                         data = jsonb(?5) WHERE coll = ?1 AND id = ?2",
                )
                .and_then(|mut s| s.execute(params![coll, op.id, (rev + 1) as i64, now, text]))
                .context("updating a document")
                .map_err(Abort::Store)?;
                WriteOutcome::Updated(Document {
                    id: op.id.clone(),
                    revision: rev + 1,
                    created_at,
                    updated_at: now,
                    data: data.clone(),
                })
            }
            (None, _) => {
                let old = tx
                    .prepare_cached(&format!(
                        "DELETE FROM documents WHERE coll = ?1 AND id = ?2 \
                             RETURNING {DOC_COLUMNS}"
                    ))
                    .and_then(|mut s| s.query_row(params![coll, op.id], document_from_row))
                    .context("deleting a document")
                    .map_err(Abort::Store)?;
                WriteOutcome::Deleted(old)
            }
        };
        events.push(document_event(project, &op.collection, &outcome, previous.as_ref()));
        outcomes.push(outcome);
    }
    let positions = crate::events::append_in(tx, &events).map_err(Abort::Store)?;
    Ok((outcomes, positions.last().copied()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nimbus_store::documents::{CollectionSpec, DocumentStore, Expect, WriteOp};
    use serde_json::json;

    use super::*;

    fn put(coll: &str, id: String) -> WriteOp {
        WriteOp { collection: coll.into(), id, data: Some(json!({"n": 1})), expect: Expect::Any }
    }

    fn fill(s: &SqliteStore, coll: &str, n: usize) {
        s.create_collection("p", coll, &CollectionSpec::default()).unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let ops: Vec<_> = chunk.iter().map(|i| put(coll, format!("d{i}"))).collect();
            DocumentStore::write(s, "p", &ops).unwrap().unwrap();
        }
    }

    /// (rows in `documents`, rows in `doc_collections`, the project's stored-documents count).
    fn counts(s: &SqliteStore) -> (i64, i64, i64) {
        s.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM doc_collections), \
                     (SELECT coalesce(sum(documents), 0) FROM project_storage WHERE project = 'p')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap())
        })
        .unwrap()
    }

    /// A big collection leaves the namespace at once and its documents go in steps, with other
    /// writes getting in between them; the storage count follows every document.
    #[test]
    fn deleting_a_big_collection_goes_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(&dir.path().join("d.db")).unwrap());
        fill(&s, "big", 8 * PURGE_STEP);
        fill(&s, "keep", 3);
        let writer = s.clone();
        let (deleted, inside, writes) = crate::stepping_tests::writes_beside(
            move |i| {
                DocumentStore::write(&*writer, "p", &[put("keep", format!("w{i}"))])
                    .unwrap()
                    .unwrap();
            },
            || s.delete_collection("p", "big").unwrap(),
        );
        assert!(deleted);
        // One deletion in a single transaction lets none in. More than one is usual, but a
        // machine busy with other work may not schedule the writer at every step.
        assert!(inside >= 1, "{inside} writes began and ended during the deletion");
        let names: Vec<_> = s.list_collections("p").unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["keep"]);
        assert!(s.get_collection("p", "big").unwrap().is_none());
        let kept = 3 + writes as i64;
        assert_eq!(counts(&s), (kept, 1, kept));
        assert!(!s.delete_collection("p", "big").unwrap());
    }

    /// A collection left retired (a crash between retiring and purging) is found by no name,
    /// listed nowhere, and purged by the next deletion in its project.
    #[test]
    fn a_collection_left_retired_is_purged_by_the_next_deletion() {
        let s = SqliteStore::open_in_memory().unwrap();
        fill(&s, "a", 10);
        fill(&s, "b", 5);
        let a = s.read(|conn| find_collection(conn, "p", "a")).unwrap().unwrap().id;
        s.write("retiring", |tx| retire_collection(tx, a)).unwrap();
        let names: Vec<_> = s.list_collections("p").unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["b"]);
        assert!(s.get_collection("p", &format!("~deleted-{a}")).unwrap().is_none());
        assert_eq!(counts(&s), (15, 2, 15));
        assert!(s.delete_collection("p", "b").unwrap());
        assert_eq!(counts(&s), (0, 0, 0));
    }
}
