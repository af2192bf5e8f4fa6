//! One module per group of commands.

pub mod deploy;
pub mod dev;
pub mod functions;
pub mod invoke;
pub mod logs;
pub mod new;
pub mod projects;
pub mod secrets;
pub mod serve;
pub mod users;

use nimbus_model::RouteSpec;

/// A route as a full URL on the server, with its methods if it restricts them.
pub fn route_url(base: &str, route: &RouteSpec) -> String {
    if route.methods.is_empty() {
        format!("{base}{}", route.path)
    } else {
        format!("{base}{} [{}]", route.path, route.methods.join(", "))
    }
}

/// Routes for a table cell.
pub fn routes_cell(routes: &[RouteSpec]) -> String {
    if routes.is_empty() {
        return "-".into();
    }
    routes
        .iter()
        .map(|r| {
            if r.methods.is_empty() {
                r.path.clone()
            } else {
                format!("{} [{}]", r.path, r.methods.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
