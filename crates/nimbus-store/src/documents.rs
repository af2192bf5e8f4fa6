//! Document collections: the persistence interface of the documents service.
//!
//! The service turns what clients send (filter text, sort strings, cursors) into the typed values
//! here; a backend compiles them to its own query language. [`FieldPath`] can only be built by
//! [`FieldPath::parse`], which admits a strict grammar (identifier segments), so a backend may
//! rely on every path being plain `a.b.c` text. Values always travel as values (bound
//! parameters), never as query text.

use nimbus_model::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::events::NewEvent;

#[cfg(feature = "conformance")]
pub mod conformance;

/// Event types of document changes (see /shared/EVENTS.md for the naming).
pub const EVENT_CREATED: &str = "dev.nimbus.documents.document.created";
pub const EVENT_UPDATED: &str = "dev.nimbus.documents.document.updated";
pub const EVENT_DELETED: &str = "dev.nimbus.documents.document.deleted";
/// Prefix shared by every document event type.
pub const EVENT_PREFIX: &str = "dev.nimbus.documents.";

/// Most segments in a field path, and longest segment.
pub const MAX_PATH_SEGMENTS: usize = 8;
pub const MAX_SEGMENT_LEN: usize = 64;

/// A path into a document's JSON object: `address.city`. Segments are ASCII identifiers
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_SEGMENT_LEN`]), at most [`MAX_PATH_SEGMENTS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(text: &str) -> Option<FieldPath> {
        Self::from_segments(text.split('.').map(str::to_owned).collect())
    }

    pub fn from_segments(segments: Vec<String>) -> Option<FieldPath> {
        let ok = !segments.is_empty()
            && segments.len() <= MAX_PATH_SEGMENTS
            && segments.iter().all(|s| {
                let mut chars = s.chars();
                s.len() <= MAX_SEGMENT_LEN
                    && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        ok.then_some(FieldPath(segments))
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The value at this path in `doc`, if any.
    pub fn lookup<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(doc, |v, seg| v.get(seg))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl TryFrom<String> for FieldPath {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        FieldPath::parse(&s).ok_or_else(|| format!("invalid field path {s:?}"))
    }
}

impl From<FieldPath> for String {
    fn from(p: FieldPath) -> String {
        p.to_string()
    }
}

/// A declared index: one or more fields, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    /// `[a-z0-9_]{1,48}`, unique in the collection.
    pub name: String,
    pub fields: Vec<FieldPath>,
}

/// What an administrator configures on a collection. The store keeps `schema` and `rules` as
/// given (the service validates and compiles them) and builds the indexes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CollectionSpec {
    pub schema: Option<Value>,
    /// The access rules' sources (`nimbus_rules::RuleSources` as JSON).
    pub rules: Value,
    pub indexes: Vec<IndexSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    pub project: String,
    pub name: String,
    #[serde(flatten)]
    pub spec: CollectionSpec,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A stored document and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    /// 1 on creation, +1 on every write: the ETag.
    pub revision: u64,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub data: Value,
}

/// The condition a write needs to hold to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (a put creates or replaces; a delete needs the document).
    Any,
    /// Only if no document has this id (`If-None-Match: *`).
    Absent,
    /// Only if the document exists.
    Exists,
    /// Only if the document is at this revision (`If-Match`).
    Revision(u64),
}

/// One write of a batch. `data: None` deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOp {
    pub collection: String,
    pub id: String,
    pub data: Option<Value>,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    Created(Document),
    Updated(Document),
    /// The document as it was before it was deleted.
    Deleted(Document),
}

impl WriteOutcome {
    pub fn document(&self) -> &Document {
        match self {
            WriteOutcome::Created(d) | WriteOutcome::Updated(d) | WriteOutcome::Deleted(d) => d,
        }
    }
}

/// Why a batch did not commit: its `index`-th write's condition failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    pub index: usize,
    pub reason: FailureReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    NoCollection,
    NotFound,
    AlreadyExists,
    /// The current revision, or `None` when the document does not exist.
    RevisionMismatch(Option<u64>),
}

/// A predicate on a document; a document matches when it evaluates to true. Comparisons are
/// typed: a number never equals a string or a boolean, and `<`, `<=`, `>`, `>=` only hold between
/// two numbers or two strings (byte order). A missing field reads as `null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    True,
    False,
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    /// `value` is a scalar (null, bool, number, string); `Lt`.. need a number or a string.
    Compare(FieldPath, CompareOp, Value),
    /// The field equals one of the scalars.
    In(FieldPath, Vec<Value>),
    /// The field is a list holding the scalar, a string holding the string, or an object with
    /// that key.
    Contains(FieldPath, Value),
    /// The field holds a value other than null.
    Exists(FieldPath),
    /// The field is null or missing, a list, or (when `strings`, for a string needle) an object
    /// or a string: the values `Contains` is defined on.
    IsContainer {
        path: FieldPath,
        strings: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A sort key: a field of the data, or a metadata column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortField {
    Field(FieldPath),
    Id,
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: SortField,
    pub descending: bool,
}

/// Where the previous page ended: the sort-key values of its last document, then its id (the
/// final tie-breaker; always ascending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub values: Vec<Value>,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort: Vec<SortKey>,
    pub after: Option<Cursor>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    pub documents: Vec<Document>,
    /// Set when there may be more: where the next page starts.
    pub next: Option<Cursor>,
    /// The declared index the query used, if any.
    pub index: Option<String>,
    /// The query read through the whole collection (no declared index narrowed it).
    pub scan: bool,
}

/// How a backend runs a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub index: Option<String>,
    pub scan: bool,
    /// The backend's own words (SQLite: EXPLAIN QUERY PLAN lines).
    pub detail: Vec<String>,
}

/// Most documents one query returns.
pub const MAX_LIMIT: u32 = 1000;

pub trait DocumentStore: Send + Sync + 'static {
    /// `Conflict` if it exists.
    fn create_collection(
        &self,
        project: &str,
        name: &str,
        spec: &CollectionSpec,
    ) -> Result<Collection>;
    /// Replace the spec, creating and dropping indexes to match. `NotFound` if absent.
    fn update_collection(
        &self,
        project: &str,
        name: &str,
        spec: &CollectionSpec,
    ) -> Result<Collection>;
    fn get_collection(&self, project: &str, name: &str) -> Result<Option<Collection>>;
    fn list_collections(&self, project: &str) -> Result<Vec<Collection>>;
    /// Delete a collection with its documents and indexes. Returns whether it existed.
    fn delete_collection(&self, project: &str, name: &str) -> Result<bool>;
    /// Delete every collection of a project. Returns how many.
    fn delete_project(&self, project: &str) -> Result<u64>;

    /// `NotFound` if the collection does not exist.
    fn get(&self, project: &str, collection: &str, id: &str) -> Result<Option<Document>>;
    /// Apply every write or none, in one transaction that also appends one event per write
    /// ([`document_event`]). The outer error is a backend failure; the inner one a failed
    /// condition, after which nothing was written.
    fn write(
        &self,
        project: &str,
        ops: &[WriteOp],
    ) -> Result<std::result::Result<Vec<WriteOutcome>, WriteFailure>>;
    /// Documents matching the filter, in sort order then by id, after the cursor. `NotFound` if
    /// the collection does not exist.
    fn query(&self, project: &str, collection: &str, query: &Query) -> Result<QueryPage>;
    fn count(&self, project: &str, collection: &str, filter: Option<&Filter>) -> Result<u64>;
    fn explain(&self, project: &str, collection: &str, query: &Query) -> Result<Plan>;
}

/// The event a backend appends for a write, the same for every backend. `data` holds the
/// collection, the id, the revision and the document (for a delete, as it was), and for an
/// update the data it replaced (`previous`), so consumers (realtime, triggers) can check rules
/// and filters, before and after, without reading the store.
pub fn document_event(
    project: &str,
    collection: &str,
    outcome: &WriteOutcome,
    previous: Option<&Value>,
) -> NewEvent {
    let (kind, doc) = match outcome {
        WriteOutcome::Created(d) => (EVENT_CREATED, d),
        WriteOutcome::Updated(d) => (EVENT_UPDATED, d),
        WriteOutcome::Deleted(d) => (EVENT_DELETED, d),
    };
    NewEvent {
        project: project.to_owned(),
        kind: kind.to_owned(),
        source: format!("/v1/projects/{project}/collections/{collection}"),
        subject: doc.id.clone(),
        data: {
            let mut data = serde_json::json!({
                "collection": collection,
                "id": doc.id,
                "revision": doc.revision,
                "document": doc,
            });
            if let (WriteOutcome::Updated(_), Some(previous)) = (outcome, previous) {
                data["previous"] = previous.clone();
            }
            data
        },
    }
}
