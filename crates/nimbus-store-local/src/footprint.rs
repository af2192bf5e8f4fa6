//! [`SqliteStore::project_rows`]: what a project still holds, table by table. For operators
//! checking a deletion, and for the tests that prove one leaves nothing behind.

use nimbus_store::Result;

use crate::error::Context;
use crate::sqlite::SqliteStore;

impl SqliteStore {
    /// The rows of `project` in every table that carries a `project` column, plus its
    /// documents (which reach it through their collection); only tables where it has rows.
    /// Rows keyed by a parent row (attempts, upload parts, identities' cascades) go with it.
    pub fn project_rows(&self, project: &str) -> Result<Vec<(String, u64)>> {
        self.read(|conn| {
            let tables: Vec<String> = conn
                .prepare(
                    "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) c \
                     WHERE m.type = 'table' AND c.name = 'project' ORDER BY m.name",
                )
                .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
                .context("listing tables with a project column")?;
            let mut counts = Vec::new();
            let documents = "SELECT count(*) FROM documents \
                 WHERE coll IN (SELECT id FROM doc_collections WHERE project = ?1)"
                .to_string();
            let queries = tables
                .into_iter()
                .map(|t| (format!("SELECT count(*) FROM \"{t}\" WHERE project = ?1"), t))
                .chain([(documents, "documents".to_string())]);
            for (sql, table) in queries {
                let n: u64 = conn
                    .query_row(&sql, [project], |r| r.get(0))
                    .with_context(|| format!("counting {table} of project {project}"))?;
                if n > 0 {
                    counts.push((table, n));
                }
            }
            Ok(counts)
        })
    }
}
