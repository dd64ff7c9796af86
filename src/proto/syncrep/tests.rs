//! Tests of the parent module.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use super::*;

fn names(s: &str) -> SyncStandbyNames {
    s.parse().unwrap()
}

fn refused(s: &str) -> String {
    s.parse::<SyncStandbyNames>().unwrap_err().to_string()
}

fn at(w: u64, f: u64, a: u64) -> AckPositions {
    AckPositions {
        write: Lsn(w),
        flush: Lsn(f),
        apply: Lsn(a),
    }
}

fn standby(name: &str, p: AckPositions) -> Standby<'_> {
    Standby {
        application_name: name,
        streaming: true,
        positions: p,
    }
}

#[test]
fn parses_postgresql_syntax() {
    let first = names("FIRST 2 (s1, s2, s3)");
    assert_eq!(first.method(), SyncMethod::Priority);
    assert_eq!(first.num_sync(), 2);
    assert_eq!(first.names(), ["s1", "s2", "s3"]);
    let any = names("any 2(s1,\"S 2\",*)");
    assert_eq!(any.method(), SyncMethod::Quorum);
    assert_eq!(any.names(), ["s1", "S 2", "*"]);
    let bare = names("a, b");
    assert_eq!((bare.method(), bare.num_sync()), (SyncMethod::Priority, 1));
    let counted = names("3 (a, b)");
    assert_eq!(
        (counted.method(), counted.num_sync()),
        (SyncMethod::Priority, 3)
    );
    assert_eq!(names("*").names(), ["*"]);
    assert_eq!(names("\"a\"\"b\"").names(), ["a\"b"]);
    // A number alone is a name, as in PostgreSQL.
    assert_eq!(names("1").names(), ["1"]);
    assert_eq!(
        names("FIRST 1 (walrelay_1, x$y)").names(),
        ["walrelay_1", "x$y"]
    );
}

#[test]
fn displays_canonically_and_round_trips() {
    for s in [
        "FIRST 2 (s1, s2, s3)",
        "ANY 1 (\"S 2\", *)",
        "FIRST 1 (\"any\")",
    ] {
        assert_eq!(names(s).to_string(), s);
        assert_eq!(names(&names(s).to_string()), names(s));
    }
    assert_eq!(names("a,b").to_string(), "FIRST 1 (a, b)");
}

#[test]
fn refuses_what_postgresql_refuses() {
    assert!(
        refused("FIRST 0 (a)")
            .contains("number of synchronous standbys (0) must be greater than zero")
    );
    for bad in [
        "FIRST (a)",
        "ANY 2 a",
        "a,",
        ",a",
        "(a)",
        "2 (a",
        "2 (a) b",
        "a b",
        "\"a",
        "a;b",
        "ANY",
    ] {
        let e = refused(bad);
        assert!(
            e.starts_with(&format!(
                "invalid value for parameter \"synchronous_standby_names\": \"{bad}\": "
            )),
            "{bad}: {e}"
        );
    }
    assert!(refused("a;b").ends_with("syntax error at or near \";\""));
    assert!(refused("a,").ends_with("syntax error at end of input"));
    assert!(refused("\"a").ends_with("unterminated quoted identifier"));
}

#[test]
fn priorities_follow_the_list_and_ignore_case() {
    let first = names("FIRST 1 (s1, S2, *)");
    assert_eq!(first.priority("s1"), Some(1));
    assert_eq!(first.priority("s2"), Some(2));
    assert_eq!(first.priority("other"), Some(3));
    let any = names("ANY 1 (s1, s2)");
    assert_eq!(any.priority("S2"), Some(1));
    assert_eq!(any.priority("s3"), None);
}

#[test]
fn priority_takes_the_oldest_of_the_first_k() {
    let n = names("FIRST 2 (s1, s2, s3)");
    let standbys = [
        standby("s3", at(900, 900, 900)),
        standby("s2", at(500, 400, 300)),
        standby("s1", at(700, 600, 100)),
    ];
    assert_eq!(n.decide(&standbys), SyncAck::Held(at(500, 400, 100)));
    // s1 gone: s2 and s3 are the first two now.
    assert_eq!(n.decide(&standbys[..2]), SyncAck::Held(at(500, 400, 300)));
    assert_eq!(
        n.decide(&standbys[..1]),
        SyncAck::Short {
            required: 2,
            available: 1
        }
    );
}

#[test]
fn quorum_takes_the_kth_newest_of_each_position() {
    let n = names("ANY 2 (s1, s2, s3)");
    let standbys = [
        standby("s1", at(100, 100, 100)),
        standby("s2", at(300, 200, 50)),
        standby("s3", at(200, 300, 75)),
    ];
    assert_eq!(n.decide(&standbys), SyncAck::Held(at(200, 200, 75)));
}

#[test]
fn only_streaming_standbys_with_a_flush_position_and_a_listed_name_count() {
    let n = names("ANY 1 (s1, s2)");
    let mut catchup = standby("s1", at(500, 500, 500));
    catchup.streaming = false;
    let no_flush = standby("s2", at(500, 0, 0));
    let unlisted = standby("s3", at(500, 500, 500));
    assert_eq!(
        n.decide(&[catchup, no_flush, unlisted]),
        SyncAck::Short {
            required: 1,
            available: 0
        }
    );
    // Duplicates of one name both count, in connection order among equals.
    let first = names("FIRST 1 (s1)");
    let twins = [standby("s1", at(10, 10, 10)), standby("s1", at(20, 20, 20))];
    assert_eq!(first.decide(&twins), SyncAck::Held(at(10, 10, 10)));
}

#[test]
fn acknowledged_positions_stay_within_the_relays_own_and_never_move_back() {
    let held = at(900, 800, 700);
    assert_eq!(held.capped(Lsn(850), Lsn(600)), at(850, 600, 600));
    assert_eq!(at(100, 300, 50).max(at(200, 100, 60)), at(200, 300, 60));
}
