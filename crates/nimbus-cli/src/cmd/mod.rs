//! One module per group of commands.

pub mod deploy;
pub mod dev;
pub mod events;
pub mod files;
pub mod functions;
pub mod invoke;
pub mod logs;
pub mod new;
pub mod profile;
pub mod projects;
pub mod push;
pub mod secrets;
pub mod serve;
pub mod usage;
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

/// A route as a full URL of `project`'s functions: `/@project/...` outside the default project.
pub fn route_url_in(base: &str, project: &str, route: &RouteSpec) -> String {
    if project == "default" {
        route_url(base, route)
    } else {
        route_url(&format!("{base}/@{project}"), route)
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
