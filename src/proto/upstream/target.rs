//! Which upstream host to take: libpq's `target_session_attrs` and `load_balance_hosts`
//! (`fe-connect.c`, `PQconnectPoll` in `CONNECTION_CHECK_TARGET`), as decisions without I/O.
//!
//! After a login the server's kind is known from what it reported, or asked for:
//! - PostgreSQL 14 and later report `default_transaction_read_only` and `in_hot_standby` as
//!   ParameterStatus; with both known, the session is read-only if either is on.
//! - Otherwise `read-write` and `read-only` ask `SHOW transaction_read_only`, as libpq does.
//!   Where libpq asks `SELECT pg_is_in_recovery()` for `primary`, `standby` and
//!   `prefer-standby`, which a physical replication connection cannot run, the relay asks
//!   `SHOW in_hot_standby`, and a server older than 14, which has no such setting,
//!   `SHOW transaction_read_only` (on for every hot standby).
//!
//! A server of the wrong kind is left with libpq's message and the next host is tried.
//! `prefer-standby` goes over the hosts twice, as libpq does: for a standby first, then for
//! any server. `load_balance_hosts=random` shuffles the hosts once per connection attempt.

use crate::proto::conninfo::{LoadBalanceHosts, TargetSessionAttrs};

/// What is known of a server's kind after its login.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerKind {
    /// Whether sessions are read-only (`transaction_read_only`), once known.
    pub read_only: Option<bool>,
    /// Whether the server is a hot standby, once known.
    pub hot_standby: Option<bool>,
}

impl ServerKind {
    /// What ParameterStatus told during the login: both values are needed for `read_only`,
    /// as libpq requires them both before it trusts them.
    pub fn reported(default_read_only: Option<bool>, in_hot_standby: Option<bool>) -> ServerKind {
        let read_only = match (default_read_only, in_hot_standby) {
            (Some(d), Some(h)) => Some(d || h),
            _ => None,
        };
        ServerKind {
            read_only,
            hot_standby: in_hot_standby,
        }
    }

    /// Takes the answer to a query [`check`] asked for: `on` or `off`.
    ///
    /// # Errors
    /// Any other value, as a message naming the query.
    pub fn answer(&mut self, query: TargetQuery, value: &str) -> Result<(), String> {
        let on = match value {
            "on" => true,
            "off" => false,
            _ => return Err(format!("unexpected answer {value:?} to {}", query.sql())),
        };
        match query {
            TargetQuery::TransactionReadOnly => self.read_only = Some(on),
            TargetQuery::InHotStandby => self.hot_standby = Some(on),
            TargetQuery::ReadOnlyAsStandby => self.hot_standby = Some(on),
        }
        Ok(())
    }
}

/// A question the relay asks a server to learn its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetQuery {
    /// `SHOW transaction_read_only`, for `read-write` and `read-only`.
    TransactionReadOnly,
    /// `SHOW in_hot_standby` (PostgreSQL 14 and later).
    InHotStandby,
    /// `SHOW transaction_read_only` standing in for `in_hot_standby` before 14.
    ReadOnlyAsStandby,
}

impl TargetQuery {
    /// The command to send.
    pub fn sql(self) -> &'static str {
        match self {
            TargetQuery::TransactionReadOnly | TargetQuery::ReadOnlyAsStandby => {
                "SHOW transaction_read_only"
            }
            TargetQuery::InHotStandby => "SHOW in_hot_standby",
        }
    }
}

/// One pass over the hosts: which kind of server it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass(TargetSessionAttrs);

impl Pass {
    /// What this pass accepts.
    pub fn attrs(self) -> TargetSessionAttrs {
        self.0
    }
}

/// The passes over the host list for `attrs`: one, or for `prefer-standby` a pass for a
/// standby and then one for any server.
pub fn passes(attrs: TargetSessionAttrs) -> Vec<Pass> {
    match attrs {
        TargetSessionAttrs::PreferStandby => vec![
            Pass(TargetSessionAttrs::Standby),
            Pass(TargetSessionAttrs::Any),
        ],
        other => vec![Pass(other)],
    }
}

/// What to do with a logged-in server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetCheck {
    /// Take it.
    Accept,
    /// Ask it this first, then check again with the answer.
    Ask(TargetQuery),
    /// Leave it with this message (libpq's) and try the next host.
    Reject(&'static str),
}

/// Whether a server of `kind` (running `version_num`) suits `pass`.
pub fn check(pass: Pass, kind: ServerKind, version_num: u32) -> TargetCheck {
    let verdict = |wrong: bool, message| {
        if wrong {
            TargetCheck::Reject(message)
        } else {
            TargetCheck::Accept
        }
    };
    match pass.0 {
        TargetSessionAttrs::Any => TargetCheck::Accept,
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::ReadOnly => {
            let Some(read_only) = kind.read_only else {
                return TargetCheck::Ask(TargetQuery::TransactionReadOnly);
            };
            if pass.0 == TargetSessionAttrs::ReadWrite {
                verdict(read_only, "session is read-only")
            } else {
                verdict(!read_only, "session is not read-only")
            }
        }
        TargetSessionAttrs::Primary
        | TargetSessionAttrs::Standby
        | TargetSessionAttrs::PreferStandby => {
            let Some(standby) = kind.hot_standby else {
                return TargetCheck::Ask(if version_num >= 140_000 {
                    TargetQuery::InHotStandby
                } else {
                    TargetQuery::ReadOnlyAsStandby
                });
            };
            if pass.0 == TargetSessionAttrs::Primary {
                verdict(standby, "server is in hot standby mode")
            } else {
                verdict(!standby, "server is not in hot standby mode")
            }
        }
    }
}

/// The order to try `count` hosts in: as listed, or with `random` shuffled (Fisher–Yates,
/// `random()` drawing a fresh number each time), as libpq's `load_balance_hosts` does.
pub fn host_order(
    count: usize,
    balance: LoadBalanceHosts,
    mut random: impl FnMut() -> u32,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    if balance == LoadBalanceHosts::Random {
        for i in (1..count).rev() {
            let j = usize::try_from(random()).unwrap_or(0) % (i + 1);
            order.swap(i, j);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: u32 = 150_018;
    const PG13: u32 = 130_023;

    fn kind(read_only: Option<bool>, hot_standby: Option<bool>) -> ServerKind {
        ServerKind {
            read_only,
            hot_standby,
        }
    }

    fn one(attrs: TargetSessionAttrs) -> Pass {
        passes(attrs)[0]
    }

    #[test]
    fn reported_parameters_decide_only_when_both_are_known() {
        assert_eq!(
            ServerKind::reported(Some(false), Some(false)),
            kind(Some(false), Some(false))
        );
        assert_eq!(
            ServerKind::reported(Some(true), Some(false)).read_only,
            Some(true)
        );
        assert_eq!(
            ServerKind::reported(Some(false), Some(true)).read_only,
            Some(true)
        );
        assert_eq!(
            ServerKind::reported(None, Some(true)),
            kind(None, Some(true))
        );
        assert_eq!(ServerKind::reported(Some(true), None), kind(None, None));
    }

    #[test]
    fn any_takes_every_server_without_asking() {
        for k in [kind(None, None), kind(Some(true), Some(true))] {
            assert_eq!(
                check(one(TargetSessionAttrs::Any), k, PG15),
                TargetCheck::Accept
            );
        }
    }

    #[test]
    fn read_write_asks_when_unknown_and_refuses_a_read_only_session() {
        let rw = one(TargetSessionAttrs::ReadWrite);
        assert_eq!(
            check(rw, kind(None, Some(false)), PG13),
            TargetCheck::Ask(TargetQuery::TransactionReadOnly)
        );
        assert_eq!(
            check(rw, kind(Some(true), None), PG15),
            TargetCheck::Reject("session is read-only")
        );
        assert_eq!(
            check(rw, kind(Some(false), None), PG15),
            TargetCheck::Accept
        );
        let ro = one(TargetSessionAttrs::ReadOnly);
        assert_eq!(
            check(ro, kind(Some(false), None), PG15),
            TargetCheck::Reject("session is not read-only")
        );
        assert_eq!(check(ro, kind(Some(true), None), PG15), TargetCheck::Accept);
    }

    #[test]
    fn primary_and_standby_ask_in_hot_standby_or_before_14_transaction_read_only() {
        let primary = one(TargetSessionAttrs::Primary);
        assert_eq!(
            check(primary, kind(Some(true), None), PG15),
            TargetCheck::Ask(TargetQuery::InHotStandby)
        );
        assert_eq!(
            check(primary, kind(None, None), PG13),
            TargetCheck::Ask(TargetQuery::ReadOnlyAsStandby)
        );
        assert_eq!(
            check(primary, kind(None, Some(true)), PG15),
            TargetCheck::Reject("server is in hot standby mode")
        );
        assert_eq!(
            check(primary, kind(Some(true), Some(false)), PG15),
            TargetCheck::Accept
        );
        let standby = one(TargetSessionAttrs::Standby);
        assert_eq!(
            check(standby, kind(None, Some(false)), PG15),
            TargetCheck::Reject("server is not in hot standby mode")
        );
        assert_eq!(
            check(standby, kind(None, Some(true)), PG15),
            TargetCheck::Accept
        );
    }

    #[test]
    fn prefer_standby_wants_a_standby_first_then_anything() {
        let p = passes(TargetSessionAttrs::PreferStandby);
        assert_eq!(p.len(), 2);
        assert_eq!(
            check(p[0], kind(None, Some(false)), PG15),
            TargetCheck::Reject("server is not in hot standby mode")
        );
        assert_eq!(
            check(p[1], kind(None, Some(false)), PG15),
            TargetCheck::Accept
        );
        assert_eq!(passes(TargetSessionAttrs::ReadWrite).len(), 1);
    }

    #[test]
    fn answers_fill_in_the_kind() {
        let mut k = ServerKind::default();
        k.answer(TargetQuery::TransactionReadOnly, "on").unwrap();
        assert_eq!(k.read_only, Some(true));
        k.answer(TargetQuery::InHotStandby, "off").unwrap();
        assert_eq!(k.hot_standby, Some(false));
        k.answer(TargetQuery::ReadOnlyAsStandby, "on").unwrap();
        assert_eq!(k.hot_standby, Some(true));
        let err = k.answer(TargetQuery::InHotStandby, "maybe").unwrap_err();
        assert!(err.contains("SHOW in_hot_standby"), "{err}");
    }

    #[test]
    fn hosts_keep_their_order_unless_balanced() {
        assert_eq!(
            host_order(3, LoadBalanceHosts::Disable, || 7),
            vec![0, 1, 2]
        );
        let mut draws = [1u32, 0].into_iter();
        // i = 2: swap(2, 1 % 3 = 1) → [0, 2, 1]; i = 1: swap(1, 0 % 2 = 0) → [2, 0, 1].
        assert_eq!(
            host_order(3, LoadBalanceHosts::Random, || draws.next().unwrap()),
            vec![2, 0, 1]
        );
        assert_eq!(
            host_order(0, LoadBalanceHosts::Random, || 0),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn random_order_is_a_permutation_and_reaches_every_first_host() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            state >> 8
        };
        let mut firsts = [0usize; 4];
        for _ in 0..400 {
            let order = host_order(4, LoadBalanceHosts::Random, &mut next);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            firsts[order[0]] += 1;
        }
        assert!(firsts.iter().all(|n| *n > 40), "{firsts:?}");
    }
}
