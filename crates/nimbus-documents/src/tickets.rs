//! Short-lived, single-use tickets for realtime connections from browsers, which cannot set an
//! `Authorization` header on `EventSource` or `WebSocket`. A client POSTs with its bearer token
//! and gets a ticket valid for [`TICKET_TTL`], then opens `...?ticket=<t>`. A ticket in a URL (and
//! so in access logs) is harmless once used or expired, unlike an access token.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore as _;

use crate::Principal;
use crate::error::{DocError, Result};

pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets outstanding at once, across projects; beyond it, issuing fails (bounded memory).
pub const MAX_TICKETS: usize = 100_000;

#[derive(Default)]
pub struct Tickets {
    map: Mutex<HashMap<String, (String, Principal, Instant)>>,
}

impl Tickets {
    /// A new ticket for `who` on `project`.
    pub fn issue(&self, project: &str, who: Principal) -> Result<String> {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let ticket = format!("nbt_{}", hex::encode(bytes));
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.len() >= MAX_TICKETS {
            map.retain(|_, (_, _, exp)| *exp > now);
            if map.len() >= MAX_TICKETS {
                return Err(DocError::invalid(
                    "too_many_tickets",
                    "too many outstanding tickets; retry shortly",
                ));
            }
        }
        map.insert(ticket.clone(), (project.to_owned(), who, now + TICKET_TTL));
        Ok(ticket)
    }

    /// Use a ticket: valid once, before it expires, for its own project.
    pub fn redeem(&self, project: &str, ticket: &str) -> Result<Principal> {
        let found = self.map.lock().remove(ticket);
        match found {
            Some((p, who, exp)) if p == project && exp > Instant::now() => Ok(who),
            _ => Err(DocError::Unauthorized("the ticket is unknown, used or expired".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_and_project_bound() {
        let t = Tickets::default();
        let a = t.issue("p1", Principal::Service).unwrap();
        assert!(t.redeem("p2", &a).is_err(), "another project's ticket worked");
        let b = t.issue("p1", Principal::anonymous()).unwrap();
        assert_eq!(t.redeem("p1", &b).unwrap(), Principal::anonymous());
        assert!(t.redeem("p1", &b).is_err(), "a ticket worked twice");
    }
}
