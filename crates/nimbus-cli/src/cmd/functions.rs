//! `list`, `show`, `delete`, `versions`, `rollback`.

use std::process::ExitCode;

use anyhow::Result;
use nimbus_model::{FunctionInfo, VersionInfo};

use super::{route_url_in, routes_cell};
use crate::client::{field, parse};
use crate::output::{
    Table, confirm, format_bytes, format_limit_bytes, format_ms, format_time, outln, print_json,
    short_sha,
};
use crate::{GlobalArgs, project_flag};

pub async fn list(g: &GlobalArgs) -> Result<ExitCode> {
    let value = g.client()?.list_functions().await?;
    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let functions: Vec<FunctionInfo> = field(&value, "functions")?;
    if functions.is_empty() {
        eprintln!("No functions yet. Deploy one with `nimbus deploy`.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "VERSION", "ROUTES", "UPDATED"]);
    for f in &functions {
        let version = if f.active_version == f.latest_version {
            format!("v{}", f.active_version)
        } else {
            format!("v{} (latest v{})", f.active_version, f.latest_version)
        };
        table.row(vec![f.name.clone(), version, routes_cell(&f.routes), format_time(f.updated_at)]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn show(g: &GlobalArgs, name: &str) -> Result<ExitCode> {
    let client = g.client()?;
    let value = client.get_function(name).await?;
    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let f: FunctionInfo = parse(&value)?;
    outln!("name:           {}", f.name);
    outln!("version:        v{} (latest v{})", f.active_version, f.latest_version);
    outln!("sha256:         {}", f.module_sha256);
    outln!("created:        {}", format_time(f.created_at));
    outln!("updated:        {}", format_time(f.updated_at));
    if f.routes.is_empty() {
        outln!(
            "routes:         none (call it with `nimbus{} invoke {}`)",
            project_flag(Some(&f.project)),
            f.name
        );
    } else {
        outln!("routes:");
        for r in &f.routes {
            outln!("  {}", route_url_in(client.base_url(), &f.project, r));
        }
    }
    if f.require_auth {
        outln!("auth:           required (unauthenticated callers get 401)");
    } else {
        outln!("auth:           not required");
    }
    let l = &f.limits;
    outln!("limits:");
    outln!("  timeout:          {}", format_ms(l.timeout_ms));
    outln!("  memory:           {}", format_limit_bytes(l.memory_bytes));
    outln!("  max_concurrency:  {}", l.max_concurrency);
    outln!("  max_queue:        {}", l.max_queue);
    outln!("  max_body:         {}", format_limit_bytes(l.max_body_bytes));
    if f.outbound_hosts.is_empty() {
        outln!("outbound hosts: none (outbound HTTP denied)");
    } else {
        outln!("outbound hosts: {}", f.outbound_hosts.join(", "));
    }
    if f.env.is_empty() {
        outln!("env:            none");
    } else {
        outln!("env:");
        for (k, v) in &f.env {
            outln!("  {k}={v}");
        }
    }
    if f.secrets.is_empty() {
        outln!("secrets:        none");
    } else {
        outln!("secrets:        {}", f.secrets.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(g: &GlobalArgs, name: &str, yes: bool) -> Result<ExitCode> {
    let client = g.client()?;
    confirm(&format!("Delete function {name} with all its versions, secrets and logs?"), yes)?;
    client.delete_function(name).await?;
    if g.json {
        print_json(&serde_json::json!({ "deleted": name }))?;
    } else {
        outln!("Deleted {name}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn versions(g: &GlobalArgs, name: &str) -> Result<ExitCode> {
    let client = g.client()?;
    let value = client.versions(name).await?;
    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut versions: Vec<VersionInfo> = field(&value, "versions")?;
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    // The active version is on the function; fetching it is cheap and makes the table useful.
    let active = match client.get_function(name).await {
        Ok(f) => parse::<FunctionInfo>(&f).ok().map(|f| f.active_version),
        Err(_) => None,
    };
    let mut table = Table::new(&["VERSION", "ACTIVE", "SHA256", "SIZE", "CREATED", "ROUTES"]);
    for v in &versions {
        table.row(vec![
            format!("v{}", v.version),
            if active == Some(v.version) { "*".into() } else { String::new() },
            short_sha(&v.module_sha256),
            format_bytes(v.module_size),
            format_time(v.created_at),
            routes_cell(&v.spec.routes),
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(g: &GlobalArgs, name: &str, version: u32) -> Result<ExitCode> {
    let value = g.client()?.rollback(name, version).await?;
    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let f: FunctionInfo = parse(&value)?;
    outln!("{} is now at v{} (latest v{})", f.name, f.active_version, f.latest_version);
    Ok(ExitCode::SUCCESS)
}

/// A version as listings print it (`v2`) or as a number (`2`).
pub fn parse_version(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix(['v', 'V']).unwrap_or(s);
    match digits.parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("{s:?} is not a version: give it as listed, like v2, or as 2")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_as_listed() {
        assert_eq!(super::parse_version("v2"), Ok(2));
        assert_eq!(super::parse_version("V12"), Ok(12));
        assert_eq!(super::parse_version("3"), Ok(3));
        for bad in ["v", "v0", "x2", "-1", "2.0"] {
            assert!(super::parse_version(bad).is_err(), "{bad}");
        }
    }
}
