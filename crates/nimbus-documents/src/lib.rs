//! The document database of Nimbus: per project, collections of JSON documents with ids,
//! timestamps and revisions; optional JSON Schemas; declared indexes; queries written in the
//! rule language; per-operation access rules; batches that commit or fail together; and
//! realtime subscriptions ([`realtime`]) fed by the event log.
//!
//! Storage is behind [`DocumentStore`]; every write appends its event to the event log in the
//! same transaction (the store does it). This crate knows no SQL and no HTTP.

pub mod error;
pub mod filter;
pub mod realtime;
pub mod tickets;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_rules::{Caller, Env, Operation, RuleSet, RuleSources};
use nimbus_store::documents::{
    Collection, CollectionSpec, Document, DocumentStore, Expect, FailureReason, Filter, IndexSpec,
    MAX_LIMIT, Plan, Query, SortKey, WriteFailure, WriteOp, WriteOutcome,
};
use nimbus_store::events::EventLog;
use nimbus_store::usage::{StorageGuard, Unlimited};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::{DocError, Result};
pub use filter::ParsedFilter;

/// Operator settings.
#[derive(Debug, Clone)]
pub struct DocumentsConfig {
    /// Largest document, serialized (default 1 MiB).
    pub max_document_bytes: usize,
    /// Per-subscriber queue of realtime events; a subscriber that lets it fill is disconnected.
    pub subscriber_queue: usize,
    /// Most documents a list examines in Rust (rules that cannot be pushed into the query)
    /// before answering with what it has and a cursor.
    pub max_examined: usize,
}

impl Default for DocumentsConfig {
    fn default() -> Self {
        DocumentsConfig { max_document_bytes: 1 << 20, subscriber_queue: 256, max_examined: 5000 }
    }
}

/// Who is calling, as far as access rules go.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// Admin token or a service key: rules do not apply.
    Service,
    /// An end user: the `auth` value of the rules (`null` for anonymous callers).
    User(Value),
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal::User(Value::Null)
    }

    fn caller(&self) -> Caller<'_> {
        match self {
            Principal::Service => Caller::Service,
            Principal::User(auth) => Caller::User(auth),
        }
    }

    pub(crate) fn auth(&self) -> &Value {
        static NULL: Value = Value::Null;
        match self {
            Principal::Service => &NULL,
            Principal::User(a) => a,
        }
    }
}

/// A collection as an administrator creates or replaces it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub rules: RuleSources,
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
}

/// A collection, its rules compiled and its schema built: what every request uses.
pub struct Compiled {
    pub info: Collection,
    pub rules: RuleSet,
    schema: Option<jsonschema::Validator>,
}

impl Compiled {
    fn build(info: Collection) -> Result<Compiled> {
        let sources: RuleSources = serde_json::from_value(info.spec.rules.clone())
            .map_err(|e| DocError::Internal(format!("stored rules of {}: {e}", info.name)))?;
        let rules = RuleSet::compile(&Env::documents(), &sources).map_err(|e| {
            DocError::invalid(
                "invalid_rule",
                format!("rule for {}: {}", e.operation.as_str(), e.error.message()),
            )
        })?;
        let schema =
            info.spec.schema.as_ref().map(jsonschema::validator_for).transpose().map_err(|e| {
                DocError::invalid("invalid_schema", format!("the schema is not valid: {e}"))
            })?;
        Ok(Compiled { info, rules, schema })
    }

    fn check_schema(&self, data: &Value) -> Result<()> {
        if let Some(v) = &self.schema
            && let Err(e) = v.validate(data)
        {
            let path = e.instance_path().as_str();
            return Err(DocError::Schema {
                path: if path.is_empty() { "/".into() } else { path.to_owned() },
                message: e.to_string(),
            });
        }
        Ok(())
    }

    /// May `who` do `op`, with `doc` the stored data and `body` the incoming data?
    pub fn allows(
        &self,
        op: Operation,
        who: &Principal,
        doc: Option<&Value>,
        body: Option<&Value>,
    ) -> bool {
        let null = Value::Null;
        let request = match body {
            Some(b) => serde_json::json!({ "body": b }),
            None => Value::Null,
        };
        let env = self.rules.env();
        let mut ctx = env.context();
        let _ = ctx.set("doc", doc.unwrap_or(&null));
        let _ = ctx.set("request", &request);
        self.rules.check(op, who.caller(), &ctx).is_allowed()
    }
}

fn deny(op: Operation, coll: &str) -> DocError {
    DocError::Forbidden(format!("the {} rule of collection {coll} denies this", op.as_str()))
}

/// A document as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentView {
    pub id: String,
    pub revision: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub data: Value,
}

impl From<Document> for DocumentView {
    fn from(d: Document) -> Self {
        DocumentView {
            id: d.id,
            revision: d.revision,
            created_at: d.created_at,
            updated_at: d.updated_at,
            data: d.data,
        }
    }
}

/// What a list asks for, as the API receives it (all optional text).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListParams {
    pub filter: Option<String>,
    pub sort: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
    pub fields: Option<String>,
    #[serde(default)]
    pub count: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListResult {
    pub documents: Vec<DocumentView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The declared index the query used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// True when the query read through the whole collection: declare an index.
    pub scan: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One write of a batch, as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum BatchWrite {
    Create { collection: String, id: Option<String>, data: Value },
    Replace { collection: String, id: String, data: Value, if_match: Option<u64> },
    Patch { collection: String, id: String, patch: Value, if_match: Option<u64> },
    Delete { collection: String, id: String, if_match: Option<u64> },
}

/// Most writes in one batch.
pub const MAX_BATCH: usize = 500;

#[derive(Clone)]
pub struct DocumentService {
    inner: Arc<Inner>,
    /// Asked before a batch that adds data (the stored-bytes quota). Outside `Inner` so that it
    /// can be set after `start` (the realtime hub's copy only reads).
    guard: Arc<dyn StorageGuard>,
}

struct Inner {
    store: Arc<dyn DocumentStore>,
    log: Arc<dyn EventLog>,
    config: DocumentsConfig,
    cache: RwLock<HashMap<(String, String), Arc<Compiled>>>,
    hub: realtime::Hub,
    tickets: tickets::Tickets,
}

/// How often a write without a condition retries when another write got in between its read
/// and its write (optimistic concurrency inside the service).
const RETRIES: usize = 5;

impl DocumentService {
    /// Start the service and its realtime hub (a task tailing the event log).
    pub async fn start(
        store: Arc<dyn DocumentStore>,
        log: Arc<dyn EventLog>,
        config: DocumentsConfig,
    ) -> Result<DocumentService> {
        let hub = realtime::Hub::start(log.clone(), config.subscriber_queue).await?;
        let service = DocumentService {
            inner: Arc::new(Inner {
                store,
                log,
                config,
                cache: RwLock::default(),
                hub,
                tickets: tickets::Tickets::default(),
            }),
            guard: Arc::new(Unlimited),
        };
        service.inner.hub.attach(service.clone());
        Ok(service)
    }

    /// Check `guard` (the stored-bytes quota) before every write that adds data.
    pub fn with_storage_guard(mut self, guard: Arc<dyn StorageGuard>) -> Self {
        self.guard = guard;
        self
    }

    pub fn config(&self) -> &DocumentsConfig {
        &self.inner.config
    }

    pub fn tickets(&self) -> &tickets::Tickets {
        &self.inner.tickets
    }

    pub fn hub(&self) -> &realtime::Hub {
        &self.inner.hub
    }

    pub(crate) fn log(&self) -> &Arc<dyn EventLog> {
        &self.inner.log
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn DocumentStore) -> nimbus_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.inner.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| DocError::Internal(e.to_string()))??)
    }

    // -- collections ---------------------------------------------------------------------

    fn spec_of(config: &CollectionConfig) -> Result<CollectionSpec> {
        let mut names = std::collections::HashSet::new();
        for i in &config.indexes {
            validate::validate_collection_name(&i.name)?;
            if !names.insert(i.name.clone()) {
                return Err(DocError::invalid(
                    "invalid_index",
                    format!("index {} is declared twice", i.name),
                ));
            }
            if i.fields.is_empty() || i.fields.len() > 8 {
                return Err(DocError::invalid("invalid_index", "an index has 1 to 8 fields"));
            }
        }
        if config.indexes.len() > 16 {
            return Err(DocError::invalid("invalid_index", "at most 16 indexes per collection"));
        }
        let spec = CollectionSpec {
            schema: config.schema.clone(),
            rules: serde_json::to_value(&config.rules)
                .map_err(|e| DocError::Internal(e.to_string()))?,
            indexes: config.indexes.clone(),
        };
        // Compile now: rule and schema errors go back to the administrator, not to end users.
        Compiled::build(Collection {
            project: String::new(),
            name: String::new(),
            spec: spec.clone(),
            created_at: 0,
            updated_at: 0,
        })?;
        Ok(spec)
    }

    pub async fn create_collection(
        &self,
        project: &str,
        name: &str,
        config: &CollectionConfig,
    ) -> Result<Collection> {
        validate::validate_collection_name(name)?;
        let spec = Self::spec_of(config)?;
        let (p, n) = (project.to_owned(), name.to_owned());
        let out = self.blocking(move |s| s.create_collection(&p, &n, &spec)).await;
        self.forget(project, name);
        out.map_err(|e| match e {
            DocError::Store(nimbus_store::StoreError::Conflict(_)) => {
                DocError::Conflict(format!("collection {name} exists"))
            }
            e => e,
        })
    }

    pub async fn update_collection(
        &self,
        project: &str,
        name: &str,
        config: &CollectionConfig,
    ) -> Result<Collection> {
        let spec = Self::spec_of(config)?;
        let (p, n) = (project.to_owned(), name.to_owned());
        let out = self.blocking(move |s| s.update_collection(&p, &n, &spec)).await;
        self.forget(project, name);
        out.map_err(not_found)
    }

    pub async fn get_collection(&self, project: &str, name: &str) -> Result<Collection> {
        Ok(self.compiled(project, name).await?.info.clone())
    }

    pub async fn list_collections(&self, project: &str) -> Result<Vec<Collection>> {
        let p = project.to_owned();
        self.blocking(move |s| s.list_collections(&p)).await
    }

    pub async fn delete_collection(&self, project: &str, name: &str) -> Result<bool> {
        let (p, n) = (project.to_owned(), name.to_owned());
        let out = self.blocking(move |s| s.delete_collection(&p, &n)).await;
        self.forget(project, name);
        self.inner.hub.close_collection(project, name);
        out
    }

    /// The project is being deleted: its collections, documents and subscribers go.
    pub async fn delete_project(&self, project: &str) -> Result<u64> {
        let p = project.to_owned();
        let n = self.blocking(move |s| s.delete_project(&p)).await?;
        self.inner.cache.write().retain(|(p, _), _| p != project);
        self.inner.hub.close_project(project);
        Ok(n)
    }

    fn forget(&self, project: &str, name: &str) {
        self.inner.cache.write().remove(&(project.to_owned(), name.to_owned()));
    }

    /// The compiled collection, from the cache or the store.
    pub async fn compiled(&self, project: &str, name: &str) -> Result<Arc<Compiled>> {
        if let Some(c) = self.cached(project, name) {
            return Ok(c);
        }
        let (p, n) = (project.to_owned(), name.to_owned());
        let info = self
            .blocking(move |s| s.get_collection(&p, &n))
            .await?
            .ok_or_else(|| DocError::NotFound(format!("collection {name}")))?;
        let compiled = Arc::new(Compiled::build(info)?);
        self.inner.cache.write().insert((project.to_owned(), name.to_owned()), compiled.clone());
        Ok(compiled)
    }

    /// The compiled collection if it is cached (the hub uses this: no store read per event).
    pub(crate) fn cached(&self, project: &str, name: &str) -> Option<Arc<Compiled>> {
        self.inner.cache.read().get(&(project.to_owned(), name.to_owned())).cloned()
    }

    // -- documents -----------------------------------------------------------------------

    async fn read_doc(&self, project: &str, coll: &str, id: &str) -> Result<Option<Document>> {
        let (p, c, i) = (project.to_owned(), coll.to_owned(), id.to_owned());
        self.blocking(move |s| s.get(&p, &c, &i)).await.map_err(not_found)
    }

    pub async fn get(
        &self,
        project: &str,
        coll: &str,
        id: &str,
        who: &Principal,
    ) -> Result<Document> {
        validate::validate_id(id)?;
        let compiled = self.compiled(project, coll).await?;
        let doc = self
            .read_doc(project, coll, id)
            .await?
            .ok_or_else(|| DocError::NotFound(format!("document {id}")))?;
        if !compiled.allows(Operation::Get, who, Some(&doc.data), None) {
            return Err(deny(Operation::Get, coll));
        }
        Ok(doc)
    }

    /// Run one batch against the store, mapping condition failures to errors.
    async fn commit(
        &self,
        project: &str,
        ops: Vec<WriteOp>,
    ) -> Result<std::result::Result<Vec<WriteOutcome>, WriteFailure>> {
        let p = project.to_owned();
        self.blocking(move |s| s.write(&p, &ops)).await
    }

    /// Create a document; `id` is the client's choice or a new UUIDv7.
    pub async fn create(
        &self,
        project: &str,
        coll: &str,
        id: Option<String>,
        data: Value,
        who: &Principal,
    ) -> Result<Document> {
        let mut out = self
            .batch(project, vec![BatchWrite::Create { collection: coll.into(), id, data }], who)
            .await?;
        Ok(out.remove(0).document().clone())
    }

    /// Replace (or create) a document. `expect` is the request's condition.
    pub async fn put(
        &self,
        project: &str,
        coll: &str,
        id: &str,
        data: Value,
        expect: Expect,
        who: &Principal,
    ) -> Result<WriteOutcome> {
        let write = match expect {
            Expect::Absent => {
                BatchWrite::Create { collection: coll.into(), id: Some(id.into()), data }
            }
            Expect::Revision(r) => BatchWrite::Replace {
                collection: coll.into(),
                id: id.into(),
                data,
                if_match: Some(r),
            },
            Expect::Any | Expect::Exists => {
                BatchWrite::Replace { collection: coll.into(), id: id.into(), data, if_match: None }
            }
        };
        let absent = matches!(expect, Expect::Absent);
        // `If-Match: *`: only an existing document may be replaced.
        if expect == Expect::Exists && self.read_doc(project, coll, id).await?.is_none() {
            return Err(DocError::PreconditionFailed(format!("document {id} does not exist")));
        }
        let mut out = self.batch(project, vec![write], who).await.map_err(|e| match e {
            DocError::Conflict(m) if absent => DocError::PreconditionFailed(m),
            e => e,
        })?;
        Ok(out.remove(0))
    }

    pub async fn patch(
        &self,
        project: &str,
        coll: &str,
        id: &str,
        patch: Value,
        if_match: Option<u64>,
        who: &Principal,
    ) -> Result<Document> {
        let mut out = self
            .batch(
                project,
                vec![BatchWrite::Patch { collection: coll.into(), id: id.into(), patch, if_match }],
                who,
            )
            .await?;
        Ok(out.remove(0).document().clone())
    }

    pub async fn delete(
        &self,
        project: &str,
        coll: &str,
        id: &str,
        if_match: Option<u64>,
        who: &Principal,
    ) -> Result<Document> {
        let mut out = self
            .batch(
                project,
                vec![BatchWrite::Delete { collection: coll.into(), id: id.into(), if_match }],
                who,
            )
            .await?;
        Ok(out.remove(0).document().clone())
    }

    /// Apply writes atomically: every one is checked (ids, shape, schema, rules) and then all are
    /// committed in one transaction, or none is. Reads needed by rules, patches and updates are
    /// pinned by revision, so a concurrent write makes the batch retry (or, for a write with its
    /// own `if_match`, fail with a precondition error).
    pub async fn batch(
        &self,
        project: &str,
        writes: Vec<BatchWrite>,
        who: &Principal,
    ) -> Result<Vec<WriteOutcome>> {
        if writes.is_empty() || writes.len() > MAX_BATCH {
            return Err(DocError::invalid(
                "invalid_batch",
                format!("a batch has 1 to {MAX_BATCH} writes"),
            ));
        }
        let max = self.inner.config.max_document_bytes;
        // Server-assigned ids are chosen once, so a retry does not create twice.
        let writes: Vec<BatchWrite> = writes
            .into_iter()
            .map(|w| match w {
                BatchWrite::Create { collection, id: None, data } => BatchWrite::Create {
                    collection,
                    id: Some(uuid::Uuid::now_v7().to_string()),
                    data,
                },
                w => w,
            })
            .collect();
        for attempt in 0.. {
            let mut ops = Vec::with_capacity(writes.len());
            // Whether a failure of op i is the caller's own condition.
            let mut own_condition = Vec::with_capacity(writes.len());
            for w in &writes {
                let (coll, id) = match w {
                    BatchWrite::Create { collection, id, .. } => {
                        (collection, id.as_deref().unwrap_or_default())
                    }
                    BatchWrite::Replace { collection, id, .. }
                    | BatchWrite::Patch { collection, id, .. }
                    | BatchWrite::Delete { collection, id, .. } => (collection, id.as_str()),
                };
                validate::validate_id(id)?;
                let compiled = self.compiled(project, coll).await?;
                let current = match w {
                    BatchWrite::Create { .. } => None,
                    BatchWrite::Replace { if_match: None, .. }
                        if *who == Principal::Service && compiled.schema.is_none() =>
                    {
                        None
                    }
                    _ => self.read_doc(project, coll, id).await?,
                };
                let if_match = match w {
                    BatchWrite::Replace { if_match, .. }
                    | BatchWrite::Patch { if_match, .. }
                    | BatchWrite::Delete { if_match, .. } => *if_match,
                    BatchWrite::Create { .. } => None,
                };
                if let (Some(want), Some(cur)) = (if_match, &current)
                    && want != cur.revision
                {
                    return Err(DocError::PreconditionFailed(format!(
                        "document {id} is at revision {}, not {want}",
                        cur.revision
                    )));
                }
                let (data, expect) = match w {
                    BatchWrite::Create { data, .. } => {
                        validate::check_document(data, max)?;
                        (Some(data.clone()), Expect::Absent)
                    }
                    BatchWrite::Replace { data, if_match, .. } => {
                        validate::check_document(data, max)?;
                        let expect = match (&current, if_match) {
                            (_, Some(r)) => Expect::Revision(*r),
                            (Some(c), None) => Expect::Revision(c.revision),
                            // Not read (service) or absent: create or replace as found.
                            (None, None)
                                if *who == Principal::Service && compiled.schema.is_none() =>
                            {
                                Expect::Any
                            }
                            (None, None) => Expect::Absent,
                        };
                        (Some(data.clone()), expect)
                    }
                    BatchWrite::Patch { patch, .. } => {
                        let cur = current
                            .as_ref()
                            .ok_or_else(|| DocError::NotFound(format!("document {id}")))?;
                        if !patch.is_object() {
                            return Err(DocError::invalid(
                                "invalid_patch",
                                "a merge patch is a JSON object",
                            ));
                        }
                        let mut data = cur.data.clone();
                        json_patch::merge(&mut data, patch);
                        validate::check_document(&data, max)?;
                        (Some(data), Expect::Revision(cur.revision))
                    }
                    BatchWrite::Delete { .. } => {
                        let cur = current
                            .as_ref()
                            .ok_or_else(|| DocError::NotFound(format!("document {id}")))?;
                        (None, Expect::Revision(cur.revision))
                    }
                };
                // Rules, then schema: a denied caller learns nothing about the schema.
                let (op, allowed) = match (&data, &current) {
                    (Some(d), None) => {
                        (Operation::Create, compiled.allows(Operation::Create, who, None, Some(d)))
                    }
                    (Some(d), Some(c)) => (
                        Operation::Update,
                        compiled.allows(Operation::Update, who, Some(&c.data), Some(d)),
                    ),
                    (None, c) => (
                        Operation::Delete,
                        compiled.allows(Operation::Delete, who, c.as_ref().map(|c| &c.data), None),
                    ),
                };
                if !allowed {
                    return Err(deny(op, coll));
                }
                if let Some(d) = &data {
                    compiled.check_schema(d)?;
                }
                own_condition.push(if_match.is_some() || matches!(w, BatchWrite::Create { .. }));
                ops.push(WriteOp { collection: coll.clone(), id: id.to_owned(), data, expect });
            }
            // A batch that only deletes always goes through; one that writes data is refused
            // while the project is at or over its stored-bytes quota.
            if attempt == 0 && ops.iter().any(|o| o.data.is_some()) {
                let (guard, p) = (self.guard.clone(), project.to_owned());
                tokio::task::spawn_blocking(move || guard.may_store(&p))
                    .await
                    .map_err(|e| DocError::Internal(e.to_string()))??;
            }
            match self.commit(project, ops).await? {
                Ok(outcomes) => return Ok(outcomes),
                Err(f) => {
                    let own = own_condition.get(f.index).copied().unwrap_or(true);
                    match f.reason {
                        FailureReason::NoCollection => {
                            return Err(DocError::NotFound("collection".into()));
                        }
                        FailureReason::AlreadyExists if own => {
                            return Err(DocError::Conflict(format!(
                                "write {} : the document already exists",
                                f.index
                            )));
                        }
                        FailureReason::RevisionMismatch(cur) if own => {
                            return Err(DocError::PreconditionFailed(format!(
                                "write {}: the document is at revision {}",
                                f.index,
                                cur.map_or("none (deleted)".into(), |r| r.to_string())
                            )));
                        }
                        FailureReason::NotFound if own => {
                            return Err(DocError::NotFound(format!("write {}: document", f.index)));
                        }
                        // Someone wrote between our read and our write: read again.
                        _ if attempt + 1 < RETRIES => continue,
                        _ => {
                            return Err(DocError::PreconditionFailed(
                                "the documents kept changing during the write; retry".into(),
                            ));
                        }
                    }
                }
            }
        }
        unreachable!("the retry loop returns")
    }

    // -- queries -------------------------------------------------------------------------

    /// The store query for `params`, and the part of the list rule that could not be pushed
    /// into it (to check in Rust on each candidate).
    fn plan_query(
        &self,
        compiled: &Compiled,
        params: &ListParams,
        who: &Principal,
    ) -> Result<(Query, Option<nimbus_rules::Rule>)> {
        let env = compiled.rules.env();
        let mut parts: Vec<Filter> = Vec::new();
        if let Some(text) = params.filter.as_deref().filter(|t| !t.trim().is_empty()) {
            let parsed = filter::parse_filter(text, env)?;
            parts.push(parsed.to_store(env, who.auth())?);
        }
        let mut residual = None;
        if let Principal::User(auth) = who {
            match compiled.rules.rule(Operation::List) {
                None => return Err(deny(Operation::List, &compiled.info.name)),
                Some(rule) => match filter::translate(rule.expr(), env, auth) {
                    Ok(f) => parts.push(f),
                    Err(why) => {
                        tracing::debug!(collection = %compiled.info.name, reason = %why.0, "list rule checked in Rust");
                        residual = Some(rule.clone());
                    }
                },
            }
        }
        let sort: Vec<SortKey> = match &params.sort {
            Some(s) => filter::parse_sort(s)?,
            None => Vec::new(),
        };
        let limit = params.limit.unwrap_or(20);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(DocError::invalid("invalid_limit", format!("limit is 1 to {MAX_LIMIT}")));
        }
        let after =
            params.cursor.as_deref().map(|c| filter::decode_cursor(c, sort.len())).transpose()?;
        let filter = match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Filter::And(parts)),
        };
        Ok((Query { filter, sort, after, limit }, residual))
    }

    pub async fn list(
        &self,
        project: &str,
        coll: &str,
        params: &ListParams,
        who: &Principal,
    ) -> Result<ListResult> {
        let compiled = self.compiled(project, coll).await?;
        let (query, residual) = self.plan_query(&compiled, params, who)?;
        let fields = params.fields.as_deref().map(filter::parse_fields).transpose()?;
        let limit = query.limit as usize;
        let mut documents = Vec::new();
        let mut next = None;
        let (mut index, mut scan) = (None, false);
        let mut examined = 0usize;
        let mut q = query.clone();
        let mut warning = None;
        // Without a residual rule this runs once. With one, it pages through the store and keeps
        // what the rule allows; the cursor it returns points after the last document examined,
        // so the next page neither skips nor repeats.
        loop {
            let (p, c, qq) = (project.to_owned(), coll.to_owned(), q.clone());
            let page = self.blocking(move |s| s.query(&p, &c, &qq)).await.map_err(not_found)?;
            index = index.or(page.index.clone());
            scan |= page.scan;
            let mut cut = None;
            for (i, d) in page.documents.iter().enumerate() {
                examined += 1;
                if residual
                    .as_ref()
                    .is_none_or(|_| compiled.allows(Operation::List, who, Some(&d.data), None))
                {
                    documents.push(d.clone());
                    if documents.len() == limit && i + 1 < page.documents.len() {
                        cut = Some(i);
                        break;
                    }
                }
            }
            if let Some(i) = cut {
                let d = &page.documents[i];
                next = Some(cursor_of(d, &query.sort));
                break;
            }
            match page.next {
                None => break,
                Some(c) if documents.len() >= limit => {
                    next = Some(c);
                    break;
                }
                Some(c) => {
                    if examined >= self.inner.config.max_examined {
                        warning = Some(format!(
                            "examined {examined} documents that the list rule mostly denied; \
                             continue with next_cursor"
                        ));
                        next = Some(c);
                        break;
                    }
                    q.after = Some(c);
                }
            }
        }
        let count = if params.count {
            Some(self.count(project, coll, &query, residual.is_some(), &compiled, who).await?)
        } else {
            None
        };
        if scan && warning.is_none() {
            warning = Some("this query read the whole collection; declare an index for it".into());
        }
        Ok(ListResult {
            documents: documents
                .into_iter()
                .map(|d| {
                    let mut v = DocumentView::from(d);
                    if let Some(f) = &fields {
                        v.data = filter::project(&v.data, f);
                    }
                    v
                })
                .collect(),
            next_cursor: next.map(|c| filter::encode_cursor(&c)),
            count,
            index,
            scan,
            warning,
        })
    }

    async fn count(
        &self,
        project: &str,
        coll: &str,
        query: &Query,
        residual: bool,
        compiled: &Compiled,
        who: &Principal,
    ) -> Result<u64> {
        if !residual {
            let (p, c, f) = (project.to_owned(), coll.to_owned(), query.filter.clone());
            return self.blocking(move |s| s.count(&p, &c, f.as_ref())).await;
        }
        // A rule that must be checked in Rust: count by reading, within a bound.
        let mut q =
            Query { filter: query.filter.clone(), sort: Vec::new(), after: None, limit: MAX_LIMIT };
        let (mut n, mut seen) = (0u64, 0usize);
        loop {
            let (p, c, qq) = (project.to_owned(), coll.to_owned(), q.clone());
            let page = self.blocking(move |s| s.query(&p, &c, &qq)).await?;
            seen += page.documents.len();
            n += page
                .documents
                .iter()
                .filter(|d| compiled.allows(Operation::List, who, Some(&d.data), None))
                .count() as u64;
            match page.next {
                Some(c) if seen < self.inner.config.max_examined * 4 => q.after = Some(c),
                Some(_) => {
                    return Err(DocError::invalid(
                        "count_unavailable",
                        "counting needs a list rule that can run inside the query (e.g. doc.owner == auth.id) on a collection this large",
                    ));
                }
                None => return Ok(n),
            }
        }
    }

    pub async fn explain(&self, project: &str, coll: &str, params: &ListParams) -> Result<Plan> {
        let compiled = self.compiled(project, coll).await?;
        let (query, _) = self.plan_query(&compiled, params, &Principal::Service)?;
        let (p, c) = (project.to_owned(), coll.to_owned());
        self.blocking(move |s| s.explain(&p, &c, &query)).await
    }
}

fn cursor_of(d: &Document, sort: &[SortKey]) -> nimbus_store::documents::Cursor {
    use nimbus_store::documents::SortField;
    let values = sort
        .iter()
        .map(|k| match &k.field {
            SortField::Field(p) => p
                .lookup(&d.data)
                .cloned()
                .filter(|v| !v.is_object() && !v.is_array() && !v.is_boolean())
                .unwrap_or_else(|| bool_as_sql(p.lookup(&d.data))),
            SortField::Id => Value::String(d.id.clone()),
            SortField::CreatedAt => Value::from(d.created_at),
            SortField::UpdatedAt => Value::from(d.updated_at),
        })
        .collect();
    nimbus_store::documents::Cursor { values, id: d.id.clone() }
}

/// A cursor carries sort values as the store compares them: booleans as 1/0, lists and
/// objects as their JSON text.
fn bool_as_sql(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Bool(b)) => Value::from(i64::from(*b)),
        Some(v @ (Value::Array(_) | Value::Object(_))) => Value::String(v.to_string()),
        _ => Value::Null,
    }
}

fn not_found(e: DocError) -> DocError {
    match e {
        DocError::Store(nimbus_store::StoreError::NotFound(what)) => DocError::NotFound(what),
        e => e,
    }
}

/// Collections, documents, and the project's realtime subscribers.
impl nimbus_model::lifecycle::ProjectLifecycle for DocumentService {
    fn part(&self) -> &'static str {
        "documents"
    }

    fn delete_project_data<'a>(
        &'a self,
        project: &'a str,
    ) -> nimbus_model::lifecycle::PartFuture<'a> {
        Box::pin(async move { Ok(self.delete_project(project).await.map(drop)?) })
    }
}

#[cfg(test)]
mod tests;
