//! One conformance suite for every store backend: each case below is an async function of a
//! `SharedStore`, run once against a fresh `SqliteStore` in a temp dir and once against a fresh
//! database on a private PostgreSQL server (tests/support/postgres.rs). A backend passes when
//! it answers every verb as the trait's doc comments say — the same way as the other.
//!
//! The cases that only PostgreSQL has (connection errors, concurrent masters migrating) follow
//! at the end.

#[path = "support/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use buildbot::change::ChangeSpec;
use buildbot::master::store::postgres::PgStore;
use buildbot::master::store::sqlite::SqliteStore;
use buildbot::master::store::{
    BuildRef, MasterInfo, MasterLease, NewRequest, Recorded, SharedStore, StoreError,
    StoredSession, now,
};
use buildbot::status::{BuildResult, JobRecord, LastBuild, RequestKind};

/// Runs each named case against both backends: `sqlite::NAME` and `postgresql::NAME`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = buildbot::master::store::sqlite::SqliteStore::open(
                        &dir.path().join("state.sqlite"),
                    )
                    .expect("open a fresh SQLite store");
                    super::$case(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod postgresql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let url = super::postgres::fresh_database().await;
                    let store = buildbot::master::store::postgres::PgStore::connect(&url)
                        .await
                        .expect("connect to a fresh PostgreSQL database");
                    super::$case(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

conformance!(
    requests_are_recorded_once_in_order,
    pending_counts_by_builder_and_who,
    pending_requests_oldest_first_with_changes_patch_and_properties,
    cancelled_requests_hand_their_changes_to_the_collapsed_one,
    builds_are_numbered_per_builder_with_their_steps,
    finished_builds_end_or_requeue_their_request,
    slave_losses_are_counted_per_request,
    interrupted_builds_are_cut_short_and_requeued,
    builds_in_a_time_window,
    build_detail_by_number_and_id,
    durations_of_recent_successes,
    one_revision_is_one_change,
    one_revision_is_one_change_also_when_arriving_at_once,
    a_job_is_recorded_once_also_when_recorded_at_once,
    builds_started_at_once_get_distinct_numbers,
    poll_heads_are_upserted,
    sessions_live_until_they_expire,
    text_with_nul_is_stored_whatever_the_backend,
    a_request_is_claimed_once,
    masters_hold_leases_and_cluster_jobs,
    a_lost_masters_builds_are_retried_and_its_late_writes_refused,
    the_event_log_numbers_events_in_one_sequence,
    master_locks_are_taken_whole_and_freed_on_every_end,
    irc_link_codes_are_taken_once_and_expire,
    step_logs_are_chunked_read_in_ranges_and_fenced,
    land_entries_queue_per_branch_and_replace_the_users_queued_one,
    land_transitions_are_compare_and_set,
    test_results_are_kept_paged_counted_and_fenced,
    test_history_looks_back_at_the_builders_builds,
    the_outbox_keeps_each_notification_once_until_it_ends,
    a_new_run_of_a_master_takes_over_what_its_killed_run_held,
    bisections_are_kept_and_updated,
    held_builds_keep_their_directory_and_record_their_shells,
    artifacts_are_recorded_chunked_and_fenced,
    retention_prunes_old_builds_parts_once_and_keeps_the_newest,
    retention_deletes_old_builds_with_everything_hanging_off_them,
);

fn request(job: &str, builder: &str) -> NewRequest {
    NewRequest {
        job_name: job.into(),
        jobid: format!("{job}-id"),
        builder: builder.into(),
        who: Some("alice".into()),
        comment: Some("a comment".into()),
        repository: "/srv/repo.git".into(),
        branch: None,
        baserev: Some("abc123".into()),
        // Not UTF-8: a patch is bytes.
        patch: Some(vec![b'-', 0, 0x9f, 0xff, b'\n']),
        patch_level: 1,
        submitted_at: 1_700_000_000.25,
        properties: [("foo".to_string(), "bar".to_string())].into(),
        kind: RequestKind::Try,
        reason: Some("try by alice".into()),
        change_ids: Vec::new(),
    }
}

fn change(revision: &str) -> ChangeSpec {
    ChangeSpec {
        repository: "/srv/repo.git".into(),
        branch: "main".into(),
        revision: revision.into(),
        who: Some("bob".into()),
        comments: Some("fix it".into()),
        files: vec!["src/a.rs".into(), "README".into()],
        properties: [("ticket".to_string(), "7".to_string())].into(),
    }
}

/// A run of master `name`, registered with a lease that outlasts the test.
async fn run_of(store: &SharedStore, name: &str) -> MasterLease {
    store
        .register_master(name, &MasterInfo::default(), Duration::from_secs(600))
        .await
        .expect("register the master")
}

async fn new_change(store: &SharedStore, revision: &str) -> i64 {
    match store.record_change(&change(revision), "bob").await {
        Ok(Recorded::New(stored)) => stored.id,
        other => panic!("{revision} should be new: {other:?}"),
    }
}

async fn one(store: &SharedStore, request: NewRequest) -> i64 {
    let ids = store.record_requests(vec![request]).await.expect("record");
    assert_eq!(ids.len(), 1);
    ids[0]
}

async fn requests_are_recorded_once_in_order(store: SharedStore) {
    let ids = store
        .record_requests(vec![request("j1", "linux"), request("j1", "mac")])
        .await
        .expect("record");
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1], "ids in order: {ids:?}");
    // The same job again (a master restarted between recording and moving on): the known one
    // keeps its id, a new builder gets a new request.
    let again = store
        .record_requests(vec![request("j1", "linux"), request("j1", "windows")])
        .await
        .expect("record again");
    assert_eq!(again[0], ids[0]);
    assert!(again[1] > ids[1]);
    assert!(store.is_job_recorded("j1").await.expect("read"));
    assert!(!store.is_job_recorded("j2").await.expect("read"));
    assert_eq!(
        store.request_ids_of_job("j1", "linux").await.expect("read"),
        vec![ids[0]]
    );
    assert!(
        store
            .request_ids_of_job("j1", "solaris")
            .await
            .expect("read")
            .is_empty()
    );
    // A request reads back as it was recorded (without its changes).
    let stored = store.request(ids[1]).await.expect("read");
    assert_eq!(stored, Some(request("j1", "mac").stored(ids[1])));
    assert_eq!(store.request(ids[1] + 1000).await.expect("read"), None);
    let expected_patch = Some(vec![b'-', 0, 0x9f, 0xff, b'\n']);
    assert_eq!(
        store.request_patch(ids[0]).await.expect("read"),
        expected_patch
    );
    assert_eq!(store.patch(ids[0]).await.expect("read"), expected_patch);
    let no_patch = one(
        &store,
        NewRequest {
            patch: None,
            kind: RequestKind::Force,
            ..request("j3", "linux")
        },
    )
    .await;
    assert_eq!(store.request_patch(no_patch).await.expect("read"), None);
    assert_eq!(
        store.request_patch(no_patch + 1000).await.expect("read"),
        None
    );
    assert_eq!(
        store.request(no_patch).await.expect("read").map(|r| r.kind),
        Some(RequestKind::Force)
    );
    // The composite read keeps the order asked for and leaves out what does not exist.
    let found: Vec<i64> = store
        .requests(vec![ids[1], 99_999, ids[0]])
        .await
        .expect("read")
        .into_iter()
        .map(|request| request.id)
        .collect();
    assert_eq!(found, vec![ids[1], ids[0]]);
}

async fn pending_counts_by_builder_and_who(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let bob = |job: &str, builder: &str| NewRequest {
        who: Some("bob".into()),
        ..request(job, builder)
    };
    let ids = store
        .record_requests(vec![
            request("j1", "linux"),
            request("j1", "mac"),
            bob("j2", "linux"),
        ])
        .await
        .expect("record");
    let count = |builder: Option<&'static str>, who: Option<&'static str>| {
        let store = Arc::clone(&store);
        async move { store.pending_count(builder, who).await.expect("count") }
    };
    assert_eq!(count(None, None).await, 3);
    assert_eq!(count(Some("linux"), None).await, 2);
    assert_eq!(count(None, Some("bob")).await, 1);
    assert_eq!(count(Some("mac"), Some("bob")).await, 0);
    assert_eq!(count(Some("linux"), Some("alice")).await, 1);
    // A request being built no longer waits.
    store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    assert_eq!(count(Some("linux"), None).await, 1);
    assert_eq!(count(None, None).await, 2);
}

async fn pending_requests_oldest_first_with_changes_patch_and_properties(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let first_change = new_change(&store, "1111").await;
    let second_change = new_change(&store, "2222").await;
    let properties: BTreeMap<String, String> = [
        ("a".to_string(), "1".to_string()),
        ("ü".to_string(), "\"quoted\"".to_string()),
    ]
    .into();
    let with_changes = NewRequest {
        change_ids: vec![second_change, first_change],
        properties: properties.clone(),
        kind: RequestKind::Scheduled,
        patch: None,
        baserev: None,
        branch: Some("main".into()),
        ..request("sched-1", "linux")
    };
    let first = one(&store, with_changes.clone()).await;
    let building = one(&store, request("j2", "linux")).await;
    let last = one(&store, request("j3", "mac")).await;
    store
        .start_build(&me, building, "linux", "s1")
        .await
        .expect("start");
    let pending = store.pending_requests().await.expect("read");
    let ids: Vec<i64> = pending.iter().map(|request| request.id).collect();
    assert_eq!(
        ids,
        vec![first, last],
        "oldest first, without the building one"
    );
    assert_eq!(pending[0].change_ids, vec![first_change, second_change]);
    assert_eq!(pending[0].properties, properties);
    assert_eq!(
        pending[0],
        NewRequest {
            change_ids: vec![first_change, second_change],
            ..with_changes
        }
        .stored(first)
    );
    assert_eq!(
        pending[1].patch.as_deref(),
        Some(&[b'-', 0, 0x9f, 0xff, b'\n'][..])
    );
    assert!(pending[1].change_ids.is_empty());
}

async fn cancelled_requests_hand_their_changes_to_the_collapsed_one(store: SharedStore) {
    let first_change = new_change(&store, "1111").await;
    let second_change = new_change(&store, "2222").await;
    let third_change = new_change(&store, "3333").await;
    let with = |job: &str, changes: Vec<i64>| NewRequest {
        change_ids: changes,
        ..request(job, "linux")
    };
    let older = one(&store, with("c1", vec![first_change])).await;
    let middle = one(&store, with("c2", vec![second_change])).await;
    let newest = one(&store, with("c3", vec![third_change])).await;
    store
        .cancel_requests(
            vec![older, middle],
            Some((newest, vec![first_change, second_change, third_change])),
        )
        .await
        .expect("cancel");
    let pending = store.pending_requests().await.expect("read");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, newest);
    assert_eq!(
        pending[0].change_ids,
        vec![first_change, second_change, third_change]
    );
    assert_eq!(
        store.job_record("c1").await.expect("read"),
        JobRecord {
            builders: vec!["linux".into()],
            finished: Vec::new(),
            cancelled: vec!["linux".into()],
        }
    );
    // Cancelling without collapsing, and cancelling nothing, are fine too.
    store
        .cancel_requests(vec![newest], None)
        .await
        .expect("cancel");
    store
        .cancel_requests(Vec::new(), None)
        .await
        .expect("cancel");
    assert!(store.pending_requests().await.expect("read").is_empty());
}

async fn builds_are_numbered_per_builder_with_their_steps(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let ids = store
        .record_requests(vec![
            request("j1", "linux"),
            request("j1", "mac"),
            request("j2", "linux"),
        ])
        .await
        .expect("record");
    let (linux_1, number) = store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    assert_eq!(number, 1);
    let (mac_1, number) = store
        .start_build(&me, ids[1], "mac", "s2")
        .await
        .expect("start");
    assert_eq!(number, 1);
    let (linux_2, number) = store
        .start_build(&me, ids[2], "linux", "s1")
        .await
        .expect("start");
    assert_eq!(number, 2);
    assert!(linux_1 != mac_1 && mac_1 != linux_2);

    let checkout = store
        .start_step(&me, linux_1, 1, "checkout")
        .await
        .expect("step");
    let test = store
        .start_step(&me, linux_1, 2, "test")
        .await
        .expect("step");
    assert_ne!(checkout, test);
    assert!(store.step_running(linux_1, 1).await.expect("read"));
    store
        .finish_step(&me, checkout, BuildResult::Success, "ok")
        .await
        .expect("finish");
    assert!(!store.step_running(linux_1, 1).await.expect("read"));
    assert!(store.step_running(linux_1, 2).await.expect("read"));
    assert!(!store.step_running(linux_1, 3).await.expect("read"));
    let steps = store.steps_of(linux_1).await.expect("read");
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[0].number, steps[0].name.as_str()), (1, "checkout"));
    assert_eq!(steps[0].result, Some(BuildResult::Success));
    assert_eq!(steps[0].summary.as_deref(), Some("ok"));
    assert!(
        steps[0]
            .finished_at
            .is_some_and(|end| end >= steps[0].started_at)
    );
    assert_eq!((steps[1].number, steps[1].result), (2, None));
    assert!(store.steps_of(mac_1).await.expect("read").is_empty());

    store
        .finish_step(&me, test, BuildResult::Failure, "2 failed")
        .await
        .expect("finish");
    store
        .finish_build(
            &me,
            linux_1,
            BuildResult::Failure,
            Some("tests failed"),
            false,
        )
        .await
        .expect("finish");
    let newest = store.newest_builds("linux", 10).await.expect("read");
    let numbers: Vec<i64> = newest.iter().map(|build| build.number).collect();
    assert_eq!(numbers, vec![2, 1], "newest first");
    assert_eq!(newest[1].id, linux_1);
    assert_eq!(newest[1].slave, "s1");
    assert_eq!(newest[1].result, Some(BuildResult::Failure));
    assert_eq!(newest[1].reason.as_deref(), Some("tests failed"));
    assert!(newest[1].finished_at.is_some());
    assert_eq!((newest[0].finished_at, newest[0].result), (None, None));
    assert_eq!(
        store.newest_builds("linux", 1).await.expect("read").len(),
        1
    );
    assert!(
        store
            .newest_builds("linux", 0)
            .await
            .expect("read")
            .is_empty()
    );
    // A negative limit is none (SQLite's reading of LIMIT -1).
    assert_eq!(
        store.newest_builds("linux", -1).await.expect("read"),
        newest
    );
    assert!(
        store
            .newest_builds("bsd", 5)
            .await
            .expect("read")
            .is_empty()
    );

    // The composite read: newest rows, the first `with_steps` with steps.
    let recent = store
        .recent_builds(vec!["linux".into(), "mac".into()], 5, 2)
        .await
        .expect("read");
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].rows, newest);
    assert_eq!(recent[0].steps.len(), 2);
    assert!(recent[0].steps[0].is_empty());
    assert_eq!(recent[0].steps[1], steps_after(&store, linux_1).await);
    assert_eq!(recent[1].rows.len(), 1);

    // Each builder's finished build with the highest number; a running one does not count.
    let mut last = store.last_finished_builds().await.expect("read");
    last.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        last,
        vec![(
            "linux".to_string(),
            LastBuild {
                number: 1,
                result: BuildResult::Failure
            }
        )]
    );
    store
        .finish_build(&me, linux_2, BuildResult::Success, None, false)
        .await
        .expect("finish");
    store
        .finish_build(&me, mac_1, BuildResult::Warnings, None, false)
        .await
        .expect("finish");
    let mut last = store.last_finished_builds().await.expect("read");
    last.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        last,
        vec![
            (
                "linux".to_string(),
                LastBuild {
                    number: 2,
                    result: BuildResult::Success
                }
            ),
            (
                "mac".to_string(),
                LastBuild {
                    number: 1,
                    result: BuildResult::Warnings
                }
            ),
        ]
    );
}

async fn steps_after(store: &SharedStore, build_id: i64) -> Vec<buildbot::master::store::StepRow> {
    store.steps_of(build_id).await.expect("read")
}

async fn finished_builds_end_or_requeue_their_request(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let ids = store
        .record_requests(vec![request("j1", "linux"), request("j1", "mac")])
        .await
        .expect("record");
    let (build, _) = store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    // The slave was lost: the build is retried, its request waits again.
    store
        .finish_build(&me, build, BuildResult::Exception, Some("slave lost"), true)
        .await
        .expect("finish");
    let pending: Vec<i64> = store
        .pending_requests()
        .await
        .expect("read")
        .iter()
        .map(|request| request.id)
        .collect();
    assert_eq!(pending, ids);
    assert_eq!(
        store.job_record("j1").await.expect("read").finished,
        Vec::new()
    );
    let (again, number) = store
        .start_build(&me, ids[0], "linux", "s2")
        .await
        .expect("start");
    assert_eq!(number, 2);
    store
        .finish_build(&me, again, BuildResult::Success, None, false)
        .await
        .expect("finish");
    let (mac, _) = store
        .start_build(&me, ids[1], "mac", "s3")
        .await
        .expect("start");
    store
        .finish_build(&me, mac, BuildResult::Failure, None, false)
        .await
        .expect("finish");
    assert!(store.pending_requests().await.expect("read").is_empty());
    assert_eq!(
        store.job_record("j1").await.expect("read"),
        JobRecord {
            builders: vec!["linux".into(), "mac".into()],
            finished: vec![
                ("linux".into(), 2, BuildResult::Success),
                ("mac".into(), 1, BuildResult::Failure),
            ],
            cancelled: Vec::new(),
        }
    );
    assert_eq!(
        store.job_record("nothing").await.expect("read"),
        JobRecord::default()
    );
}

async fn slave_losses_are_counted_per_request(store: SharedStore) {
    let ids = store
        .record_requests(vec![request("j1", "linux"), request("j1", "mac")])
        .await
        .expect("record");
    assert_eq!(store.record_slave_loss(ids[0]).await.expect("count"), 1);
    assert_eq!(store.record_slave_loss(ids[0]).await.expect("count"), 2);
    assert_eq!(store.record_slave_loss(ids[1]).await.expect("count"), 1);
    assert_eq!(store.record_slave_loss(ids[0]).await.expect("count"), 3);
}

async fn interrupted_builds_are_cut_short_and_requeued(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let ids = store
        .record_requests(vec![request("j1", "linux"), request("j1", "mac")])
        .await
        .expect("record");
    let (running, _) = store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    let done_step = store
        .start_step(&me, running, 1, "checkout")
        .await
        .expect("step");
    store
        .finish_step(&me, done_step, BuildResult::Success, "ok")
        .await
        .expect("finish");
    store
        .start_step(&me, running, 2, "test")
        .await
        .expect("step");
    let (finished, _) = store
        .start_build(&me, ids[1], "mac", "s2")
        .await
        .expect("start");
    store
        .finish_build(&me, finished, BuildResult::Success, None, false)
        .await
        .expect("finish");

    // Another master's running build is not this master's to recover.
    let other = run_of(&store, "other").await;
    let others = one(&store, request("j2", "linux")).await;
    let (other_build, _) = store
        .start_build(&other, others, "linux", "s9")
        .await
        .expect("start");
    // The master stops (its builds left running) and starts again: a new run.
    store.retire_master(&me).await.expect("retire");
    let me = run_of(&store, "m").await;
    assert_eq!(
        store
            .recover_interrupted_builds(&me)
            .await
            .expect("recover"),
        1
    );
    assert_eq!(
        store
            .build_detail(&BuildRef::Id(other_build))
            .await
            .expect("read")
            .expect("found")
            .build
            .finished_at,
        None
    );
    let pending: Vec<i64> = store
        .pending_requests()
        .await
        .expect("read")
        .iter()
        .map(|request| request.id)
        .collect();
    assert_eq!(pending, vec![ids[0]]);
    let build = &store
        .build_detail(&BuildRef::Id(running))
        .await
        .expect("read")
        .expect("found")
        .build;
    assert_eq!(build.result, Some(BuildResult::Exception));
    assert_eq!(build.reason.as_deref(), Some("master restarted"));
    assert!(build.finished_at.is_some());
    let steps = store.steps_of(running).await.expect("read");
    assert_eq!(steps[0].summary.as_deref(), Some("ok"));
    assert_eq!(steps[1].result, Some(BuildResult::Exception));
    assert_eq!(steps[1].summary.as_deref(), Some("master restarted"));
    // The finished build is left alone, and a second recovery finds nothing.
    let mac = &store.newest_builds("mac", 1).await.expect("read")[0];
    assert_eq!(
        (mac.result, mac.reason.as_deref()),
        (Some(BuildResult::Success), None)
    );
    assert_eq!(
        store
            .recover_interrupted_builds(&me)
            .await
            .expect("recover"),
        0
    );
    // The next build of the builder is numbered after the interrupted one and the other's.
    let (_, number) = store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    assert_eq!(number, 3);
}

async fn builds_in_a_time_window(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let ids = store
        .record_requests(vec![
            request("j1", "linux"),
            request("j2", "linux"),
            request("j3", "linux"),
        ])
        .await
        .expect("record");
    let before = now() - 1.0;
    let (first, _) = store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    store
        .start_step(&me, first, 1, "compile")
        .await
        .expect("step");
    store
        .finish_build(&me, first, BuildResult::Failure, None, false)
        .await
        .expect("finish");
    let (second, _) = store
        .start_build(&me, ids[1], "linux", "s1")
        .await
        .expect("start");
    let (third, _) = store
        .start_build(&me, ids[2], "linux", "s1")
        .await
        .expect("start");
    let after = now() + 1.0;
    let finished = store.newest_builds("linux", 3).await.expect("read")[2].clone();
    let finished_at = finished.finished_at.expect("finished");

    let numbers = |builds: Vec<buildbot::master::store::BuildRow>| -> Vec<i64> {
        builds.iter().map(|build| build.number).collect()
    };
    let window = store
        .builds_overlapping("linux", before, after, 10)
        .await
        .expect("read");
    assert_eq!(numbers(window), vec![3, 2, 1], "newest first");
    assert_eq!(
        numbers(
            store
                .builds_overlapping("linux", before, after, 2)
                .await
                .expect("read")
        ),
        vec![3, 2]
    );
    // A window that ends before anything started has nothing; `to` is not in the window.
    assert!(
        store
            .builds_overlapping("linux", before - 100.0, finished.started_at, 10)
            .await
            .expect("read")
            .is_empty()
    );
    // After the first build finished, only the running ones overlap.
    assert_eq!(
        numbers(
            store
                .builds_overlapping("linux", finished_at + 0.001, after + 100.0, 10)
                .await
                .expect("read")
        ),
        vec![3, 2]
    );
    // `from` is in the window: a build that finished exactly then overlaps.
    assert!(
        numbers(
            store
                .builds_overlapping("linux", finished_at, after, 10)
                .await
                .expect("read")
        )
        .contains(&1)
    );
    assert!(
        store
            .builds_overlapping("mac", before, after, 10)
            .await
            .expect("read")
            .is_empty()
    );

    // The composite: builds with their steps, and the last result whatever the window.
    let windows = store
        .builds_in_window(vec!["linux".into(), "mac".into()], before, after, 10)
        .await
        .expect("read");
    assert_eq!(windows.len(), 2);
    let builds: Vec<i64> = windows[0].builds.iter().map(|b| b.build.id).collect();
    assert_eq!(builds, vec![third, second, first]);
    assert_eq!(windows[0].builds[2].steps.len(), 1);
    assert_eq!(windows[0].last_result, Some(BuildResult::Failure));
    // Running builds overlap every window after their start; this one is before them all.
    let empty = store
        .builds_in_window(vec!["linux".into()], before - 200.0, before - 100.0, 10)
        .await
        .expect("read");
    assert!(empty[0].builds.is_empty());
    assert_eq!(empty[0].last_result, Some(BuildResult::Failure));
    assert!(windows[1].builds.is_empty());
    assert_eq!(windows[1].last_result, None);
}

async fn build_detail_by_number_and_id(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let change_id = new_change(&store, "cafe").await;
    // Asked for a branch's tip: branch and base revision come from what the build checked out.
    let tip = one(
        &store,
        NewRequest {
            branch: None,
            baserev: None,
            patch: None,
            change_ids: vec![change_id],
            reason: Some("changes 1 on main".into()),
            ..request("tip", "linux")
        },
    )
    .await;
    let (build, number) = store
        .start_build(&me, tip, "linux", "s1")
        .await
        .expect("start");
    let by_number = BuildRef::Number {
        builder: "linux".into(),
        number,
    };
    let detail = store
        .build_detail(&by_number)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(
        (detail.branch.as_deref(), detail.baserev.as_deref()),
        (None, None)
    );
    assert_eq!(detail.revision, None);
    store
        .record_build_source(&me, build, "main", "beef")
        .await
        .expect("record source");
    let step = store
        .start_step(&me, build, 1, "checkout")
        .await
        .expect("step");
    store
        .finish_step(&me, step, BuildResult::Success, "at beef")
        .await
        .expect("finish");
    let detail = store
        .build_detail(&by_number)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(detail.build.id, build);
    assert_eq!(detail.request_id, tip);
    assert_eq!(detail.job_name, "tip");
    assert_eq!(detail.jobid, "tip-id");
    assert_eq!(detail.who.as_deref(), Some("alice"));
    assert_eq!(detail.comment.as_deref(), Some("a comment"));
    assert_eq!(detail.repository, "/srv/repo.git");
    assert_eq!(detail.branch.as_deref(), Some("main"));
    assert_eq!(detail.baserev.as_deref(), Some("beef"));
    assert_eq!(detail.revision.as_deref(), Some("beef"));
    assert!(!detail.has_patch);
    assert_eq!(
        detail.properties.get("foo").map(String::as_str),
        Some("bar")
    );
    assert_eq!(detail.why.as_deref(), Some("changes 1 on main"));
    assert_eq!(detail.changes.len(), 1);
    assert_eq!(detail.changes[0].id, change_id);
    assert_eq!(detail.changes[0].files, vec!["src/a.rs", "README"]);
    assert_eq!(detail.steps.len(), 1);
    assert_eq!(detail.steps[0].summary.as_deref(), Some("at beef"));
    assert_eq!(
        store
            .build_detail(&BuildRef::Id(build))
            .await
            .expect("read"),
        Some(detail.clone())
    );
    assert_eq!(
        store.build(BuildRef::Id(build)).await.expect("read"),
        Some(detail)
    );

    // A try job names its own branch and base: what the build reports does not replace them.
    let try_job = one(
        &store,
        NewRequest {
            branch: Some("feature".into()),
            ..request("try", "linux")
        },
    )
    .await;
    let (try_build, _) = store
        .start_build(&me, try_job, "linux", "s1")
        .await
        .expect("start");
    store
        .record_build_source(&me, try_build, "main", "f00d")
        .await
        .expect("record source");
    let detail = store
        .build_detail(&BuildRef::Id(try_build))
        .await
        .expect("read")
        .expect("found");
    assert_eq!(detail.branch.as_deref(), Some("feature"));
    assert_eq!(detail.baserev.as_deref(), Some("abc123"));
    assert_eq!(detail.revision.as_deref(), Some("f00d"));
    assert!(detail.has_patch);
    assert!(detail.changes.is_empty());

    assert_eq!(
        store
            .build_detail(&BuildRef::Id(try_build + 100))
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .build_detail(&BuildRef::Number {
                builder: "linux".into(),
                number: 99
            })
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .build_detail(&BuildRef::Number {
                builder: "mac".into(),
                number: 1
            })
            .await
            .expect("read"),
        None
    );
}

async fn durations_of_recent_successes(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let ids = store
        .record_requests(vec![
            request("j1", "linux"),
            request("j2", "linux"),
            request("j3", "linux"),
            request("j4", "mac"),
        ])
        .await
        .expect("record");
    let results = [
        BuildResult::Success,
        BuildResult::Failure,
        BuildResult::Success,
    ];
    for (id, result) in ids.iter().zip(results) {
        let (build, _) = store
            .start_build(&me, *id, "linux", "s1")
            .await
            .expect("start");
        store
            .finish_build(&me, build, result, None, false)
            .await
            .expect("finish");
    }
    let durations = store
        .recent_success_durations("linux", 10)
        .await
        .expect("read");
    assert_eq!(durations.len(), 2, "only the successes: {durations:?}");
    assert!(durations.iter().all(|seconds| *seconds >= 0.0));
    // Newest first: the same as the newest successful build's own times.
    let newest = &store.newest_builds("linux", 1).await.expect("read")[0];
    assert_eq!(
        durations[0],
        newest.finished_at.expect("finished") - newest.started_at
    );
    assert_eq!(
        store
            .recent_success_durations("linux", 1)
            .await
            .expect("read")
            .len(),
        1
    );
    assert!(
        store
            .recent_success_durations("mac", 10)
            .await
            .expect("read")
            .is_empty()
    );
}

async fn one_revision_is_one_change(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let spec = change("0123456789abcdef");
    let Recorded::New(stored) = store.record_change(&spec, "alice").await.expect("record") else {
        panic!("the first arrival is new");
    };
    assert_eq!(stored.who.as_deref(), Some("bob"));
    assert_eq!(stored.sent_by, "alice");
    assert_eq!(stored.files, spec.files);
    assert_eq!(stored.properties, spec.properties);
    // The same revision from a poller is the same change, unchanged.
    let polled = ChangeSpec {
        who: None,
        files: Vec::new(),
        ..spec.clone()
    };
    assert_eq!(
        store
            .record_change(&polled, "poller /srv/repo.git")
            .await
            .expect("record"),
        Recorded::Known(stored.clone())
    );
    // Another branch or repository is another change.
    let elsewhere = ChangeSpec {
        branch: "release".into(),
        ..spec.clone()
    };
    let Recorded::New(release) = store
        .record_change(&elsewhere, "alice")
        .await
        .expect("record")
    else {
        panic!("another branch is new");
    };
    let other_repo = ChangeSpec {
        repository: "/srv/other.git".into(),
        ..spec.clone()
    };
    let Recorded::New(other) = store
        .record_change(&other_repo, "alice")
        .await
        .expect("record")
    else {
        panic!("another repository is new");
    };
    let newest = store.newest_changes(10).await.expect("read");
    assert_eq!(newest, vec![other.clone(), release.clone(), stored.clone()]);
    assert_eq!(store.newest_changes(-1).await.expect("read"), newest);
    assert_eq!(store.newest_changes(1).await.expect("read"), vec![other]);
    assert_eq!(
        store.change(stored.id).await.expect("read"),
        Some(stored.clone())
    );
    assert_eq!(store.change(stored.id + 1000).await.expect("read"), None);

    // Which builds built a change: those of requests that carry it.
    let ids = store
        .record_requests(vec![
            NewRequest {
                change_ids: vec![stored.id],
                ..request("sched", "linux")
            },
            NewRequest {
                change_ids: vec![stored.id, release.id],
                ..request("sched", "mac")
            },
        ])
        .await
        .expect("record");
    assert!(
        store
            .builds_of_change(stored.id)
            .await
            .expect("read")
            .is_empty()
    );
    store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    store
        .start_build(&me, ids[1], "mac", "s2")
        .await
        .expect("start");
    assert_eq!(
        store.builds_of_change(stored.id).await.expect("read"),
        vec![("linux".to_string(), 1), ("mac".to_string(), 1)]
    );
    let recent = store.recent_changes(2).await.expect("read");
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[1].0.id, release.id);
    assert_eq!(recent[1].1, vec![("mac".to_string(), 1)]);
    assert!(recent[0].1.is_empty());
}

/// Runs `count` copies of `work` at once (they all wait at one barrier first).
async fn at_once<T: Send + 'static>(
    count: usize,
    store: &SharedStore,
    work: impl Fn(SharedStore) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>>,
) -> Vec<T> {
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let barrier = Arc::clone(&barrier);
        let job = work(Arc::clone(store));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            job.await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task ran"));
    }
    results
}

async fn one_revision_is_one_change_also_when_arriving_at_once(store: SharedStore) {
    for round in 0..5 {
        let revision = format!("race{round}");
        let results = at_once(8, &store, |store| {
            let spec = change(&revision);
            Box::pin(async move { store.record_change(&spec, "hook").await.expect("record") })
        })
        .await;
        let new: Vec<&Recorded> = results
            .iter()
            .filter(|recorded| matches!(recorded, Recorded::New(_)))
            .collect();
        assert_eq!(new.len(), 1, "exactly one arrival is new: {results:?}");
        let id = new[0].change().id;
        assert!(results.iter().all(|recorded| recorded.change().id == id));
    }
    let all = store.newest_changes(100).await.expect("read");
    assert_eq!(all.len(), 5, "one change per revision: {all:?}");
}

async fn a_job_is_recorded_once_also_when_recorded_at_once(store: SharedStore) {
    for round in 0..5 {
        let job = format!("race{round}");
        let results = at_once(8, &store, |store| {
            let requests = ["linux", "mac", "windows"]
                .map(|builder| request(&job, builder))
                .to_vec();
            Box::pin(async move { store.record_requests(requests).await.expect("record") })
        })
        .await;
        assert!(results.iter().all(|ids| *ids == results[0]), "{results:?}");
    }
    assert_eq!(store.pending_count(None, None).await.expect("count"), 15);
}

async fn builds_started_at_once_get_distinct_numbers(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let jobs: Vec<NewRequest> = (0..6).map(|n| request(&format!("j{n}"), "linux")).collect();
    let ids = store.record_requests(jobs).await.expect("record");
    let next = Arc::new(std::sync::Mutex::new(ids));
    let results = at_once(6, &store, |store| {
        let id = next.lock().expect("not poisoned").pop().expect("one each");
        let me = me.clone();
        Box::pin(async move {
            store
                .start_build(&me, id, "linux", "s1")
                .await
                .expect("start")
        })
    })
    .await;
    let mut numbers: Vec<i64> = results.iter().map(|(_, number)| *number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
}

async fn poll_heads_are_upserted(store: SharedStore) {
    assert!(store.poll_heads("/r.git").await.expect("read").is_empty());
    store
        .set_poll_head("/r.git", "main", "abc")
        .await
        .expect("set");
    store
        .set_poll_head("/r.git", "main", "def")
        .await
        .expect("set");
    store
        .set_poll_head("/r.git", "dev", "123")
        .await
        .expect("set");
    store
        .set_poll_head("/other.git", "main", "999")
        .await
        .expect("set");
    let mut heads = store.poll_heads("/r.git").await.expect("read");
    heads.sort();
    assert_eq!(
        heads,
        vec![
            ("dev".to_string(), "123".to_string()),
            ("main".to_string(), "def".to_string())
        ]
    );
    assert_eq!(
        store.poll_heads("/other.git").await.expect("read"),
        vec![("main".to_string(), "999".to_string())]
    );
}

async fn sessions_live_until_they_expire(store: SharedStore) {
    let session = |hash: &str, expires_at: f64| StoredSession {
        token_hash: hash.into(),
        user: "alice".into(),
        // Above i32: a uid is unsigned.
        uid: 4_000_000_000,
        csrf: format!("csrf-{hash}"),
        expires_at,
    };
    let short = session("short", 1000.0);
    let long = session("long", 2000.0);
    store.save_session(&short, 500.0).await.expect("save");
    store.save_session(&long, 500.0).await.expect("save");
    let mut live = store.live_sessions(900.0).await.expect("read");
    live.sort_by(|a, b| a.token_hash.cmp(&b.token_hash));
    assert_eq!(live, vec![long.clone(), short.clone()]);
    assert_eq!(
        store.session("short", 900.0).await.expect("read"),
        Some(short.clone())
    );
    assert_eq!(store.session("nobody", 900.0).await.expect("read"), None);
    // Expired at its expiry time.
    assert_eq!(store.session("short", 1000.0).await.expect("read"), None);
    assert_eq!(
        store.live_sessions(1000.0).await.expect("read"),
        vec![long.clone()]
    );
    // Saving one of the same hash replaces it.
    let renewed = StoredSession {
        csrf: "new-csrf".into(),
        expires_at: 3000.0,
        ..long.clone()
    };
    store.save_session(&renewed, 900.0).await.expect("save");
    assert_eq!(
        store.session("long", 900.0).await.expect("read"),
        Some(renewed.clone())
    );
    // Saving forgets the sessions expired by then: even an old `now` no longer finds them.
    store
        .save_session(&session("later", 5000.0), 1500.0)
        .await
        .expect("save");
    assert_eq!(store.session("short", 0.0).await.expect("read"), None);
    assert_eq!(store.live_sessions(0.0).await.expect("read").len(), 2);
}

/// NUL in free text (binary output in a step's summary, a comment sent with a change): SQLite
/// keeps it, PostgreSQL keeps U+FFFD in its place; neither fails the verb, and what is read
/// back is the same once NUL is shown as U+FFFD.
async fn text_with_nul_is_stored_whatever_the_backend(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let shown = |text: &str| text.replace('\0', "\u{fffd}");
    let id = one(
        &store,
        NewRequest {
            who: Some("al\0ice".into()),
            comment: Some("a\0comment".into()),
            reason: Some("try by al\0ice".into()),
            ..request("j1", "linux")
        },
    )
    .await;
    let stored = store.request(id).await.expect("read").expect("found");
    assert_eq!(
        stored.comment.as_deref().map(shown),
        Some(shown("a\0comment"))
    );
    assert_eq!(stored.who.as_deref().map(shown), Some(shown("al\0ice")));
    assert_eq!(
        store
            .pending_count(None, Some("al\0ice"))
            .await
            .expect("count"),
        1
    );
    let (build, _) = store
        .start_build(&me, id, "linux", "s1")
        .await
        .expect("start");
    let step = store.start_step(&me, build, 1, "test").await.expect("step");
    store
        .finish_step(&me, step, BuildResult::Failure, "binary\0output")
        .await
        .expect("finish");
    store
        .finish_build(&me, build, BuildResult::Failure, Some("failed:\0"), false)
        .await
        .expect("finish");
    let steps = store.steps_of(build).await.expect("read");
    assert_eq!(
        steps[0].summary.as_deref().map(shown),
        Some(shown("binary\0output"))
    );
    let row = &store.newest_builds("linux", 1).await.expect("read")[0];
    assert_eq!(row.reason.as_deref().map(shown), Some(shown("failed:\0")));
    let spec = ChangeSpec {
        comments: Some("fix\0it".into()),
        ..change("abcd")
    };
    let first = store.record_change(&spec, "bob").await.expect("record");
    let again = store.record_change(&spec, "bob").await.expect("record");
    assert!(matches!(first, Recorded::New(_)));
    assert_eq!(again, Recorded::Known(first.change().clone()));
    assert_eq!(
        first.change().comments.as_deref().map(shown),
        Some(shown("fix\0it"))
    );
}

async fn a_request_is_claimed_once(store: SharedStore) {
    let first = run_of(&store, "a").await;
    let second = run_of(&store, "b").await;
    let id = one(&store, request("j1", "linux")).await;
    store
        .start_build(&first, id, "linux", "s1")
        .await
        .expect("the first claim");
    assert!(matches!(
        store.start_build(&second, id, "linux", "s2").await,
        Err(StoreError::AlreadyClaimed { request_id }) if request_id == id
    ));
    // A request being built is not cancelled: its build goes on.
    store.cancel_requests(vec![id], None).await.expect("cancel");
    assert!(
        store
            .job_record("j1")
            .await
            .expect("read")
            .cancelled
            .is_empty()
    );
    assert_eq!(
        store.newest_builds("linux", 5).await.expect("read").len(),
        1
    );
    // Claims at once: one wins.
    let raced = one(&store, request("j2", "linux")).await;
    let results = at_once(6, &store, |store| {
        let owner = second.clone();
        Box::pin(async move { store.start_build(&owner, raced, "linux", "s3").await })
    })
    .await;
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .all(|result| matches!(result, Ok(_) | Err(StoreError::AlreadyClaimed { .. })))
    );
}

async fn masters_hold_leases_and_cluster_jobs(store: SharedStore) {
    let long = Duration::from_secs(600);
    let a = run_of(&store, "a").await;
    let b = run_of(&store, "b").await;
    assert_eq!((a.epoch, b.epoch), (1, 1));
    let info = MasterInfo {
        slaves: vec!["s1".into()],
        builds: vec!["linux #3".into()],
        ssh: "a:2222".into(),
        ..MasterInfo::default()
    };
    store.renew_lease(&a, &info, long).await.expect("renew");
    let masters = store.masters().await.expect("read");
    let names: Vec<&str> = masters.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert!(masters.iter().all(|m| m.alive && m.state == "up"));
    assert_eq!(masters[0].info, info);
    assert!(masters[0].expires_at > masters[0].renewed_at);

    assert!(store.hold_singleton("jobs", &a, long).await.expect("hold"));
    assert!(
        store
            .hold_singleton("jobs", &a, long)
            .await
            .expect("renew hold")
    );
    assert!(!store.hold_singleton("jobs", &b, long).await.expect("hold"));
    // A clean stop gives everything up at once.
    store.retire_master(&a).await.expect("retire");
    let masters = store.masters().await.expect("read");
    assert_eq!(
        (masters[0].state.as_str(), masters[0].alive),
        ("stopped", false)
    );
    assert!(store.hold_singleton("jobs", &b, long).await.expect("hold"));
    assert!(!store.hold_singleton("jobs", &a, long).await.expect("hold"));
    assert!(matches!(
        store.renew_lease(&a, &info, long).await,
        Err(StoreError::Fenced { .. })
    ));
    // The next run of a takes the next epoch.
    let again = run_of(&store, "a").await;
    assert_eq!(again.epoch, 2);
    assert!(
        !store
            .hold_singleton("jobs", &again, long)
            .await
            .expect("hold")
    );
    // A newer run of the holder takes over what its older run (killed, never retired) held:
    // on the embedded store a hold lasts for good.
    let short = Duration::from_secs(1);
    let c = store
        .register_master("c", &MasterInfo::default(), short)
        .await
        .expect("register");
    assert!(store.hold_singleton("other", &c, long).await.expect("hold"));
    let c_again = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait_until(
        "a newer run of c registers once the old one's lease ran out",
        || {
            let (store, c_again) = (store.clone(), c_again.clone());
            async move {
                match store
                    .register_master("c", &MasterInfo::default(), short)
                    .await
                {
                    Ok(run) => {
                        *c_again.lock().expect("lock") = Some(run);
                        true
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let c_again = c_again.lock().expect("lock").clone().expect("registered");
    assert!(
        store
            .hold_singleton("other", &c_again, long)
            .await
            .expect("hold")
    );
}

/// Polls `condition` until it holds, for at most a minute.
async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_lost_masters_builds_are_retried_and_its_late_writes_refused(store: SharedStore) {
    let short = Duration::from_millis(200);
    let long = Duration::from_secs(600);
    let stalled = store
        .register_master("a", &MasterInfo::default(), short)
        .await
        .expect("register");
    let alive = run_of(&store, "b").await;
    let id = one(&store, request("j1", "linux")).await;
    let (build, _) = store
        .start_build(&stalled, id, "linux", "s1")
        .await
        .expect("start");
    let step = store
        .start_step(&stalled, build, 1, "test")
        .await
        .expect("step");
    assert!(
        store
            .hold_singleton("jobs", &stalled, short)
            .await
            .expect("hold")
    );
    assert!(
        store
            .reap_lost_masters(&alive)
            .await
            .expect("reap")
            .is_empty()
    );
    wait_until("the lease of a to run out", || {
        let store = Arc::clone(&store);
        async move {
            store
                .masters()
                .await
                .expect("read")
                .iter()
                .any(|m| m.name == "a" && !m.alive)
        }
    })
    .await;
    // Its hold runs out with its lease: the live master takes the job over.
    wait_until("the hold of a to run out", || {
        let (store, alive) = (Arc::clone(&store), alive.clone());
        async move {
            store
                .hold_singleton("jobs", &alive, long)
                .await
                .expect("hold")
        }
    })
    .await;
    assert!(
        !store
            .hold_singleton("jobs", &stalled, long)
            .await
            .expect("hold")
    );
    let lost = store.reap_lost_masters(&alive).await.expect("reap");
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].name.as_str(), lost[0].epoch), ("a", 1));
    assert_eq!(lost[0].retried, vec![("linux".to_string(), 1, id)]);
    assert!(
        store
            .reap_lost_masters(&alive)
            .await
            .expect("reap")
            .is_empty()
    );
    let masters = store.masters().await.expect("read");
    assert_eq!(masters[0].state, "lost");
    // The stalled run comes back: every write it tries is refused.
    assert!(matches!(
        store
            .finish_step(&stalled, step, BuildResult::Success, "ok")
            .await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store
            .finish_build(&stalled, build, BuildResult::Success, None, false)
            .await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store.start_step(&stalled, build, 2, "more").await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store
            .renew_lease(&stalled, &MasterInfo::default(), long)
            .await,
        Err(StoreError::Fenced { .. })
    ));
    // The request waits again, and the live master builds it.
    let pending = store.pending_requests().await.expect("read");
    assert_eq!(pending.len(), 1);
    let (_, number) = store
        .start_build(&alive, pending[0].id, "linux", "s2")
        .await
        .expect("start");
    assert_eq!(number, 2);
    let builds = store.newest_builds("linux", 10).await.expect("read");
    assert_eq!(builds[1].result, Some(BuildResult::Exception));
    assert!(
        builds[1]
            .reason
            .as_deref()
            .is_some_and(|reason| reason.contains("master a lost")),
        "{:?}",
        builds[1].reason
    );
    let steps = store.steps_of(build).await.expect("read");
    assert_eq!(steps[0].result, Some(BuildResult::Exception));
}

async fn the_event_log_numbers_events_in_one_sequence(store: SharedStore) {
    let cluster = store.cluster_id().await.expect("read");
    assert!(!cluster.is_empty());
    assert_eq!(store.cluster_id().await.expect("read"), cluster);
    assert_eq!(store.last_event_seq().await.expect("read"), 0);
    assert!(store.events_after(0, 10).await.expect("read").is_empty());
    let numbers = store
        .append_events(
            "a",
            vec![
                (1.5, r#"{"first":1}"#.to_string()),
                (2.5, r#"{"second":2}"#.to_string()),
                (3.5, r#"{"third":3}"#.to_string()),
            ],
        )
        .await
        .expect("append");
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(
        store.events_after(1, 1).await.expect("read"),
        vec![(2, 2.5, r#"{"second":2}"#.to_string())]
    );
    assert_eq!(store.events_after(0, 10).await.expect("read").len(), 3);
    assert_eq!(store.last_event_seq().await.expect("read"), 3);
    // Masters appending at once: one sequence, no gaps, each batch in a row.
    let batches = at_once(6, &store, |store| {
        Box::pin(async move {
            store
                .append_events("b", vec![(4.0, "{}".to_string()), (5.0, "{}".to_string())])
                .await
                .expect("append")
        })
    })
    .await;
    let mut all: Vec<i64> = batches.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (4..=15).collect::<Vec<i64>>());
    assert!(batches.iter().all(|batch| batch[1] == batch[0] + 1));
    let seqs: Vec<i64> = store
        .events_after(3, 100)
        .await
        .expect("read")
        .iter()
        .map(|(seq, _, _)| *seq)
        .collect();
    assert_eq!(seqs, (4..=15).collect::<Vec<i64>>());
}

async fn step_logs_are_chunked_read_in_ranges_and_fenced(store: SharedStore) {
    use buildbot::proto::StreamKind::{Info, Stderr, Stdout};
    let short = Duration::from_millis(200);
    let writer = store
        .register_master("a", &MasterInfo::default(), short)
        .await
        .expect("register");
    let other = run_of(&store, "b").await;
    let id = one(&store, request("j1", "linux")).await;
    let (build, _) = store
        .start_build(&writer, id, "linux", "s1")
        .await
        .expect("start");
    store
        .start_step(&writer, build, 1, "test")
        .await
        .expect("step");
    assert_eq!(store.log_size(build, 1, Stdout).await.expect("size"), 0);
    assert_eq!(
        store.read_log(build, 1, Stdout, 0, 10).await.expect("read"),
        (Vec::new(), 0)
    );
    // Not UTF-8: a log is bytes.
    let text: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let mut offset = 0;
    for piece in [&text[..7], &text[7..300], &text[300..]] {
        store
            .append_log(&writer, build, 1, Stdout, offset, piece.to_vec())
            .await
            .expect("append");
        offset += piece.len() as u64;
    }
    store
        .append_log(&writer, build, 1, Stderr, 0, b"warning\n".to_vec())
        .await
        .expect("append");
    store
        .append_log(&writer, build, 2, Info, 0, b"later\n".to_vec())
        .await
        .expect("append");
    assert_eq!(store.log_size(build, 1, Stdout).await.expect("size"), 1000);
    let read = |offset: u64, max: usize| {
        let store = Arc::clone(&store);
        async move {
            store
                .read_log(build, 1, Stdout, offset, max)
                .await
                .expect("read")
        }
    };
    assert!(read(0, 5000).await == (text.clone(), 1000));
    assert_eq!(read(2, 3).await.0, text[2..5]);
    assert_eq!(read(5, 10).await.0, text[5..15]);
    assert!(read(290, 500).await.0 == text[290..790]);
    assert!(read(950, 500).await.0 == text[950..]);
    assert!(read(1000, 5).await.0.is_empty());
    // A retried append of stored bytes changes nothing; a gap or other bytes are refused.
    store
        .append_log(&writer, build, 1, Stdout, 7, text[7..300].to_vec())
        .await
        .expect("a retry is accepted");
    for (offset, data) in [(7, b"other".to_vec()), (1001, b"gap".to_vec())] {
        assert!(matches!(
            store
                .append_log(&writer, build, 1, Stdout, offset, data)
                .await,
            Err(StoreError::LogOffset { .. })
        ));
    }
    assert_eq!(
        store
            .log_streams(vec![build, build + 1])
            .await
            .expect("streams"),
        vec![(build, 1, Stderr), (build, 1, Stdout), (build, 2, Info)]
    );
    // Only the build's owner writes its log, and not once the cluster declared it lost.
    assert!(matches!(
        store
            .append_log(&other, build, 1, Stdout, 1000, b"not mine".to_vec())
            .await,
        Err(StoreError::Fenced { .. })
    ));
    wait_until("the lease of a to run out", || {
        let store = Arc::clone(&store);
        async move {
            store
                .masters()
                .await
                .expect("read")
                .iter()
                .any(|m| m.name == "a" && !m.alive)
        }
    })
    .await;
    assert_eq!(
        store.reap_lost_masters(&other).await.expect("reap").len(),
        1
    );
    assert!(matches!(
        store
            .append_log(&writer, build, 1, Stdout, 1000, b"late".to_vec())
            .await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(store.log_size(build, 1, Stdout).await.expect("size"), 1000);
}

// --- PostgreSQL only --------------------------------------------------------------------------

/// The one-line message of a failed `connect`.
async fn refused(url: &str) -> String {
    match PgStore::connect(url).await {
        Ok(_) => panic!("{url} should not connect"),
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains('\n'), "one line: {message:?}");
            message
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_one_clear_line_without_the_password() {
    let cluster = postgres::cluster();
    let wrong = "not-the-battery-staple";
    let url = format!(
        "host={} dbname=postgres user={} password={wrong}",
        cluster.socket_dir.display(),
        postgres::PASSWORD_USER
    );
    let message = refused(&url).await;
    assert!(
        message.starts_with(&format!(
            "cannot reach the database at host={} dbname=postgres user={}: ",
            cluster.socket_dir.display(),
            postgres::PASSWORD_USER
        )),
        "{message}"
    );
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains(wrong), "{message}");
    // The right password gets in (the role may not create tables there, so no migration is
    // asked of it: a fresh database owned by the role).
    let url = postgres::fresh_database().await;
    postgres::execute(
        &url,
        &format!(
            "ALTER DATABASE {} OWNER TO {}; GRANT ALL ON SCHEMA public TO {}",
            url.split("dbname=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .expect("dbname"),
            postgres::PASSWORD_USER,
            postgres::PASSWORD_USER
        ),
    )
    .await;
    let with_password = url.replace(
        "user=postgres",
        &format!(
            "user={} password={}",
            postgres::PASSWORD_USER,
            postgres::PASSWORD
        ),
    );
    PgStore::connect(&with_password)
        .await
        .expect("the right password connects and migrates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_one_clear_line() {
    let message = refused("host=/nonexistent/buildbot-socket dbname=buildbot user=bb").await;
    assert!(
        message.starts_with(
            "cannot reach the database at host=/nonexistent/buildbot-socket dbname=buildbot user=bb: "
        ),
        "{message}"
    );
    assert!(message.contains("No such file or directory"), "{message}");
    // A TCP port nobody listens on, in URL form with a password: refused, password unshown.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let message = refused(&format!(
        "postgresql://bb:hunter2@127.0.0.1:{port}/buildbot"
    ))
    .await;
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    // Not a connection string at all.
    let message = refused("host=/tmp port=notanumber").await;
    assert!(
        message.starts_with("database url is not valid"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_url_forms_connect() {
    let url = postgres::fresh_database().await;
    let cluster = postgres::cluster();
    let dbname = url
        .split("dbname=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("dbname");
    let socket = cluster.socket_dir.display().to_string().replace('/', "%2F");
    let store = PgStore::connect(&format!("postgresql://postgres@{socket}/{dbname}"))
        .await
        .expect("a URL with the socket dir as host connects");
    let store: SharedStore = Arc::new(store);
    assert!(!store.is_job_recorded("j1").await.expect("read"));
    PgStore::connect(&url)
        .await
        .expect("the key=value form connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_starting_at_once_migrate_once() {
    let url = postgres::fresh_database().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { PgStore::connect(&url).await }));
    }
    let mut stores: Vec<SharedStore> = Vec::new();
    for task in tasks {
        stores.push(Arc::new(
            task.await.expect("ran").expect("every master connects"),
        ));
    }
    // One schema: what one master records, the others see.
    let ids = stores[0]
        .record_requests(vec![request("j1", "linux")])
        .await
        .expect("record");
    assert_eq!(
        stores[3]
            .request_ids_of_job("j1", "linux")
            .await
            .expect("read"),
        ids
    );
    // The same revision arriving at every master at once is one change, and builds of one
    // builder started on every master at once get distinct numbers.
    let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
    let mut tasks = Vec::new();
    for (index, store) in stores.iter().enumerate() {
        let (store, barrier) = (Arc::clone(store), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            let me = run_of(&store, &format!("master-{index}")).await;
            let request_id = one(&store, request(&format!("m{index}"), "linux")).await;
            barrier.wait().await;
            let recorded = store
                .record_change(&change("feed"), "hook")
                .await
                .expect("record");
            let (_, number) = store
                .start_build(&me, request_id, "linux", "s1")
                .await
                .expect("start");
            (recorded, number)
        }));
    }
    let mut new_changes = 0;
    let mut numbers = Vec::new();
    for task in tasks {
        let (recorded, number) = task.await.expect("ran");
        new_changes += usize::from(matches!(recorded, Recorded::New(_)));
        numbers.push(number);
    }
    numbers.sort_unstable();
    assert_eq!(new_changes, 1);
    assert_eq!(numbers, vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_copied_in_are_not_generated_again() {
    let url = postgres::fresh_database().await;
    let store = PgStore::connect(&url).await.expect("connect");
    // A history copied in with its own ids, as from SQLite.
    postgres::execute(
        &url,
        "INSERT INTO requests (id, job_name, jobid, builder, properties, repository, patch_level,
           submitted_at, state) VALUES (41, 'old', '1', 'linux', '{}', '', 1, 1.0, 'done');
         INSERT INTO changes (id, repository, branch, revision, files, properties, received_at,
           sent_by) VALUES (7, '/r', 'main', 'abc', '[]', '{}', 1.0, 'alice')",
    )
    .await;
    store.advance_identities().await.expect("advance");
    let store: SharedStore = Arc::new(store);
    let me = run_of(&store, "m").await;
    let ids = store
        .record_requests(vec![request("new", "linux")])
        .await
        .expect("record");
    assert_eq!(ids, vec![42]);
    let change_id = new_change(&store, "def").await;
    assert_eq!(change_id, 8);
    // On an empty table too: the first id is 1.
    let (build, _) = store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    assert_eq!(build, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_master_name_is_not_taken_twice() {
    let url = postgres::fresh_database().await;
    let store: SharedStore = Arc::new(PgStore::connect(&url).await.expect("connect"));
    assert!(store.is_shared());
    let first = run_of(&store, "ci-a").await;
    match store
        .register_master("ci-a", &MasterInfo::default(), Duration::from_secs(60))
        .await
    {
        Err(StoreError::NameTaken { name, .. }) => assert_eq!(name, "ci-a"),
        other => panic!("a live name is refused: {other:?}"),
    }
    store.retire_master(&first).await.expect("retire");
    assert_eq!(run_of(&store, "ci-a").await.epoch, 2);
    // SQLite has one master per file: a run left "up" is taken over at once.
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite: SharedStore =
        Arc::new(SqliteStore::open(&dir.path().join("state.sqlite")).expect("open"));
    assert!(!sqlite.is_shared());
    assert!(sqlite.event_notices().is_none() && sqlite.request_notices().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_masters_hear_of_new_events_and_requests() {
    let url = postgres::fresh_database().await;
    let writer: SharedStore = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let reader: SharedStore = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let mut events = reader
        .event_notices()
        .expect("a shared store tells of events");
    let mut requests = reader.request_notices().expect("and of requests");
    events.borrow_and_update();
    requests.borrow_and_update();
    writer
        .append_events("a", vec![(1.0, "{}".to_string())])
        .await
        .expect("append");
    tokio::time::timeout(Duration::from_secs(60), events.changed())
        .await
        .expect("the reader hears of the event")
        .expect("the notices go on");
    assert_eq!(reader.last_event_seq().await.expect("read"), 1);
    one(&writer, request("j1", "linux")).await;
    tokio::time::timeout(Duration::from_secs(60), requests.changed())
        .await
        .expect("the reader hears of the request")
        .expect("the notices go on");
    assert_eq!(reader.pending_count(None, None).await.expect("count"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_buildbot_is_refused() {
    let url = postgres::fresh_database().await;
    drop(PgStore::connect(&url).await.expect("migrates"));
    postgres::execute(&url, "UPDATE schema_version SET version = 99").await;
    match PgStore::connect(&url).await {
        Err(StoreError::TooNew { found: 99, known }) => assert!(known < 99),
        other => panic!("a newer schema is refused: {other:?}"),
    }
}

/// Tables, columns (with whether they may be empty) and indexes of a migrated store.
type Schema = (
    BTreeMap<String, Vec<(String, bool)>>,
    std::collections::BTreeSet<String>,
);

fn sqlite_schema(path: &std::path::Path) -> Schema {
    let connection = rusqlite::Connection::open(path).expect("open");
    let mut tables = BTreeMap::new();
    let names: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for table in names {
        let mut columns: Vec<(String, bool)> = connection
            .prepare(&format!("PRAGMA table_info({table})"))
            .expect("prepare")
            .query_map([], |row| {
                let not_null: bool = row.get(3)?;
                let primary_key: i64 = row.get(5)?;
                Ok((row.get(1)?, not_null || primary_key > 0))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        columns.sort();
        tables.insert(table, columns);
    }
    let indexes = connection
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index'
             AND name NOT LIKE 'sqlite_autoindex%'",
        )
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    (tables, indexes)
}

async fn postgres_schema(url: &str) -> Schema {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    let mut tables: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT table_name::TEXT, column_name::TEXT, is_nullable = 'NO'
             FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> 'schema_version'",
            &[],
        )
        .await
        .expect("columns")
    {
        tables
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    for columns in tables.values_mut() {
        columns.sort();
    }
    // Those the schema names, not those behind its primary keys and UNIQUE constraints.
    let indexes = client
        .query(
            "SELECT indexname::TEXT FROM pg_indexes WHERE schemaname = 'public'
             AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop(client);
    let _ = connection.await;
    (tables, indexes)
}

/// Migration N makes the same tables in both backends, for every N: a history copied between
/// them at any version lands column for column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_migration_makes_the_same_tables_in_both_backends() {
    use buildbot::master::store::{postgres, sqlite};
    assert_eq!(postgres::MIGRATIONS.len(), sqlite::MIGRATIONS.len());
    for version in 1..=sqlite::MIGRATIONS.len() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.sqlite");
        let connection = rusqlite::Connection::open(&path).expect("open");
        for migration in &sqlite::MIGRATIONS[..version] {
            connection.execute_batch(migration).expect("migrate SQLite");
        }
        drop(connection);
        let url = self::postgres::fresh_database().await;
        self::postgres::execute(&url, &postgres::MIGRATIONS[..version].join("\n")).await;
        let (sqlite_tables, sqlite_indexes) = sqlite_schema(&path);
        let (postgres_tables, postgres_indexes) = postgres_schema(&url).await;
        assert_eq!(
            postgres_tables, sqlite_tables,
            "tables at version {version}"
        );
        assert_eq!(
            postgres_indexes, sqlite_indexes,
            "indexes at version {version}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_migrate_to_the_same_tables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.sqlite");
    drop(SqliteStore::open(&path).expect("open"));
    let url = postgres::fresh_database().await;
    drop(PgStore::connect(&url).await.expect("connect"));
    let (sqlite_tables, sqlite_indexes) = sqlite_schema(&path);
    let (postgres_tables, postgres_indexes) = postgres_schema(&url).await;
    assert!(
        sqlite_tables.contains_key("web_sessions"),
        "{sqlite_tables:?}"
    );
    assert_eq!(postgres_tables, sqlite_tables);
    assert_eq!(postgres_indexes, sqlite_indexes);
}

fn lock_use(lock: &str, exclusive: bool, max_count: i64) -> buildbot::master::store::MasterLockUse {
    buildbot::master::store::MasterLockUse {
        lock: lock.into(),
        exclusive,
        max_count,
    }
}

async fn master_locks_are_taken_whole_and_freed_on_every_end(store: SharedStore) {
    let a = run_of(&store, "a").await;
    let b = run_of(&store, "b").await;
    let take = |owner: MasterLease, holder: &'static str, uses: Vec<_>| {
        let store = Arc::clone(&store);
        async move {
            store
                .take_master_locks(&owner, holder, uses)
                .await
                .expect("take")
        }
    };
    // Exclusive: one holder; the same holder again is no second hold.
    assert!(take(a.clone(), "a:build:1", vec![lock_use("db", true, 1)]).await);
    assert!(take(a.clone(), "a:build:1", vec![lock_use("db", true, 1)]).await);
    assert!(!take(b.clone(), "b:build:2", vec![lock_use("db", true, 1)]).await);
    // Counting, two at most, none while held exclusively.
    assert!(take(b.clone(), "b:step:3", vec![lock_use("pool", false, 2)]).await);
    assert!(take(a.clone(), "a:step:4", vec![lock_use("pool", false, 2)]).await);
    assert!(!take(b.clone(), "b:step:5", vec![lock_use("pool", false, 2)]).await);
    assert!(!take(b.clone(), "b:step:6", vec![lock_use("pool", true, 2)]).await);
    // All or nothing: "free" is free, but "db" is not, so "free" stays free.
    assert!(
        !take(
            b.clone(),
            "b:build:7",
            vec![lock_use("free", true, 1), lock_use("db", true, 1)]
        )
        .await
    );
    assert!(take(b.clone(), "b:build:8", vec![lock_use("free", true, 1)]).await);
    // Freed by its holder only.
    store
        .release_master_locks(&b, "a:build:1")
        .await
        .expect("release");
    assert!(!take(b.clone(), "b:build:2", vec![lock_use("db", true, 1)]).await);
    store
        .release_master_locks(&a, "a:build:1")
        .await
        .expect("release");
    assert!(take(b.clone(), "b:build:2", vec![lock_use("db", true, 1)]).await);
    // A master declared lost frees what it held; a master that starts again frees what its
    // earlier run held.
    let short = Duration::from_millis(1);
    let lost = store
        .register_master("lost", &MasterInfo::default(), short)
        .await
        .expect("register");
    assert!(
        take(
            lost.clone(),
            "lost:build:9",
            vec![lock_use("solo", true, 1)]
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.reap_lost_masters(&a).await.expect("reap");
    assert!(take(a.clone(), "a:build:10", vec![lock_use("solo", true, 1)]).await);
    store.retire_master(&a).await.expect("retire");
    let again = run_of(&store, "a").await;
    assert!(
        take(
            again.clone(),
            "a2:build:11",
            vec![lock_use("solo", true, 1)]
        )
        .await
    );
    assert!(take(again, "a2:build:12", vec![lock_use("pool", false, 2)]).await);
}

async fn irc_link_codes_are_taken_once_and_expire(store: SharedStore) {
    let now = 1_800_000_000.0;
    store
        .save_link_code("hash-1", "alice", 1000, now + 600.0)
        .await
        .expect("save");
    store
        .save_link_code("hash-2", "bob", 1001, now - 1.0)
        .await
        .expect("save");
    assert_eq!(
        store.take_link_code("hash-1", now).await.expect("take"),
        Some(("alice".to_string(), 1000))
    );
    // Once only; an expired one is no code; an unknown one neither.
    assert_eq!(
        store.take_link_code("hash-1", now).await.expect("take"),
        None
    );
    assert_eq!(
        store.take_link_code("hash-2", now).await.expect("take"),
        None
    );
    assert_eq!(
        store.take_link_code("nothing", now).await.expect("take"),
        None
    );
    // Two takers at once: one gets it.
    store
        .save_link_code("hash-3", "carol", 1002, now + 600.0)
        .await
        .expect("save");
    let (first, second) = tokio::join!(
        store.take_link_code("hash-3", now),
        store.take_link_code("hash-3", now)
    );
    let got = [first.expect("take"), second.expect("take")];
    assert_eq!(
        got.iter().filter(|taken| taken.is_some()).count(),
        1,
        "{got:?}"
    );
}

// ---- land: the merge queue (issue 24) ----

fn new_land(branch: &str, who: &str) -> buildbot::master::store::NewLand {
    buildbot::master::store::NewLand {
        branch: branch.into(),
        who: who.into(),
        builders: vec!["linux".into(), "docs".into()],
        ff_only: true,
        // A bundle is bytes.
        bundle: vec![b'#', 0, 0xff, b'\n'],
        head: "b".repeat(40),
        base: "a".repeat(40),
        commits: 3,
        summary: "add a thing".into(),
        submitted_at: 1_700_000_000.5,
    }
}

async fn land_entries_queue_per_branch_and_replace_the_users_queued_one(store: SharedStore) {
    use buildbot::master::store::LandState;
    let (first, replaced) = store
        .land_enqueue(new_land("main", "alice"))
        .await
        .expect("queue");
    assert_eq!(replaced, None);
    let (bobs, _) = store
        .land_enqueue(new_land("main", "bob"))
        .await
        .expect("queue");
    let (other_branch, _) = store
        .land_enqueue(new_land("release", "alice"))
        .await
        .expect("queue");
    // Alice lands on main again: her queued entry there is replaced, not her other branch's.
    let (second, replaced) = store
        .land_enqueue(new_land("main", "alice"))
        .await
        .expect("queue");
    assert_eq!(replaced, Some(first));
    let main = store
        .land_entries(Some("main".into()), true, 100)
        .await
        .expect("read");
    let ids: Vec<i64> = main.iter().map(|entry| entry.id).collect();
    assert_eq!(
        ids,
        vec![bobs, second],
        "oldest first, the replaced one gone"
    );
    let entry = &main[1];
    assert_eq!(entry.state, LandState::Queued);
    assert_eq!(
        entry.builders,
        vec!["linux".to_string(), "docs".to_string()]
    );
    assert!(entry.ff_only);
    assert_eq!((entry.commits, entry.summary.as_str()), (3, "add a thing"));
    assert_eq!(entry.submitted_at, 1_700_000_000.5);
    assert_eq!(entry.progress.attempts, 0);
    let ended = store
        .land_entries(Some("main".into()), false, 10)
        .await
        .expect("read");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].state, LandState::Cancelled);
    assert_eq!(
        ended[0].progress.reason.as_deref(),
        Some(format!("replaced by #{second}").as_str())
    );
    let all = store.land_entries(None, true, 100).await.expect("read");
    assert_eq!(all.len(), 3);
    assert!(all.iter().any(|entry| entry.id == other_branch));
    assert_eq!(
        store.land_bundle(second).await.expect("read"),
        Some(vec![b'#', 0, 0xff, b'\n'])
    );
    assert_eq!(store.land_bundle(9999).await.expect("read"), None);
    assert_eq!(store.land_entry(9999).await.expect("read"), None);
}

async fn land_transitions_are_compare_and_set(store: SharedStore) {
    use buildbot::master::store::{LandProgress, LandState};
    let (id, _) = store
        .land_enqueue(new_land("main", "alice"))
        .await
        .expect("queue");
    let testing = LandProgress {
        job_name: Some(format!("land-{id}-1")),
        tested_base: Some("c".repeat(40)),
        tested_sha: Some("d".repeat(40)),
        attempts: 1,
        ..LandProgress::default()
    };
    assert!(
        store
            .land_transition(id, LandState::Queued, LandState::Testing, testing.clone())
            .await
            .expect("move")
    );
    // From a state it is no longer in: nothing moves (a cancel that came first wins).
    assert!(
        !store
            .land_transition(
                id,
                LandState::Queued,
                LandState::Cancelled,
                LandProgress::default()
            )
            .await
            .expect("move")
    );
    let entry = store.land_entry(id).await.expect("read").expect("entry");
    assert_eq!(entry.state, LandState::Testing);
    assert_eq!(entry.progress, testing);
    let landed = LandProgress {
        landed_sha: Some("d".repeat(40)),
        finished_at: Some(1_700_000_100.0),
        ..testing
    };
    assert!(
        store
            .land_transition(id, LandState::Testing, LandState::Landed, landed.clone())
            .await
            .expect("move")
    );
    assert!(
        store
            .land_entries(Some("main".into()), true, 10)
            .await
            .expect("read")
            .is_empty()
    );
    let ended = store
        .land_entries(Some("main".into()), false, 10)
        .await
        .expect("read");
    assert_eq!(ended[0].state, LandState::Landed);
    assert_eq!(ended[0].progress, landed);
}

// ---- test results (issue 26) ----

use buildbot::master::store::{TestCase, TestOrder, TestOutcome};

fn case(suite: &str, name: &str, result: TestOutcome, ms: Option<i64>) -> TestCase {
    TestCase {
        suite: suite.into(),
        name: name.into(),
        result,
        duration_ms: ms,
        message: if result == TestOutcome::Passed {
            String::new()
        } else {
            format!("{name} went wrong\nsecond line")
        },
        step: 2,
    }
}

async fn test_results_are_kept_paged_counted_and_fenced(store: SharedStore) {
    let me = run_of(&store, "m").await;
    let id = one(&store, request("j1", "linux")).await;
    let (build, _) = store
        .start_build(&me, id, "linux", "s1")
        .await
        .expect("start");
    let mut cases: Vec<TestCase> = (0..1000)
        .map(|i| case("suite", &format!("t{i:04}"), TestOutcome::Passed, Some(i)))
        .collect();
    cases[10] = case("suite", "t0010", TestOutcome::Failed, Some(5));
    cases[20] = case("other", "t0020", TestOutcome::Error, None);
    cases[30] = case("suite", "t0030", TestOutcome::Skipped, Some(1));
    store
        .record_test_results(&me, build, cases.clone())
        .await
        .expect("record");
    // A second step's reports add to the first's.
    store
        .record_test_results(
            &me,
            build,
            vec![case("tap", "late", TestOutcome::Failed, None)],
        )
        .await
        .expect("record more");
    let counts = store.test_counts(build).await.expect("counts");
    assert_eq!(
        (counts.passed, counts.failed, counts.error, counts.skipped),
        (997, 2, 1, 1)
    );
    let failures = store
        .build_tests(build, TestOrder::WorstFirst, true, 0, 100)
        .await
        .expect("failures");
    let names: Vec<_> = failures.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["t0020", "t0010", "late"]);
    assert_eq!(failures[1], cases[10]);
    let page = store
        .build_tests(build, TestOrder::WorstFirst, false, 3, 3)
        .await
        .expect("page");
    let names: Vec<_> = page.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["t0030", "t0000", "t0001"]);
    let slowest = store
        .build_tests(build, TestOrder::Slowest, false, 0, 2)
        .await
        .expect("slowest");
    assert_eq!(slowest[0].duration_ms, Some(999));
    assert_eq!(slowest[1].duration_ms, Some(998));
    assert_eq!(
        store.test_counts(build + 1000).await.expect("none"),
        Default::default()
    );

    // Once the build is over, nothing is added to it.
    store
        .finish_build(&me, build, BuildResult::Failure, None, false)
        .await
        .expect("finish");
    let late = store
        .record_test_results(
            &me,
            build,
            vec![case("s", "after", TestOutcome::Passed, None)],
        )
        .await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
}

async fn test_history_looks_back_at_the_builders_builds(store: SharedStore) {
    let me = run_of(&store, "m").await;
    // linux #1..#4 on main; #3 without tests (it broke before them); a mac build in between.
    let mut linux = Vec::new();
    for (i, results) in [
        Some([TestOutcome::Passed, TestOutcome::Passed]),
        Some([TestOutcome::Failed, TestOutcome::Passed]),
        None,
        Some([TestOutcome::Failed, TestOutcome::Failed]),
    ]
    .into_iter()
    .enumerate()
    {
        let id = one(&store, request(&format!("l{i}"), "linux")).await;
        let (build, number) = store
            .start_build(&me, id, "linux", "s1")
            .await
            .expect("start");
        assert_eq!(number, i as i64 + 1);
        store
            .record_build_source(&me, build, "main", &format!("rev{i}"))
            .await
            .expect("source");
        if let Some([a, b]) = results {
            store
                .record_test_results(
                    &me,
                    build,
                    vec![case("s", "a", a, Some(10)), case("s", "b", b, Some(20))],
                )
                .await
                .expect("record");
        }
        let id = one(&store, request(&format!("m{i}"), "mac")).await;
        let (mac, _) = store
            .start_build(&me, id, "mac", "s2")
            .await
            .expect("start");
        store
            .record_test_results(&me, mac, vec![case("s", "a", TestOutcome::Passed, None)])
            .await
            .expect("record");
        store
            .finish_build(&me, mac, BuildResult::Success, None, false)
            .await
            .expect("finish");
        if i < 3 {
            store
                .finish_build(&me, build, BuildResult::Failure, None, false)
                .await
                .expect("finish");
        }
        linux.push(build);
    }
    let history = store
        .test_history("linux", Some("s".into()), "a", 50)
        .await
        .expect("history");
    let cells: Vec<_> = history.iter().map(|row| (row.number, row.result)).collect();
    assert_eq!(
        cells,
        [
            (4, TestOutcome::Failed),
            (2, TestOutcome::Failed),
            (1, TestOutcome::Passed)
        ]
    );
    assert_eq!(history[0].branch.as_deref(), Some("main"));
    assert_eq!(history[0].revision.as_deref(), Some("rev3"));
    assert!(
        history[0].patched,
        "the requests of this suite carry a patch"
    );
    assert_eq!(
        store
            .test_history("linux", None, "a", 1)
            .await
            .expect("one")
            .len(),
        1
    );

    // Build #4 (still running) looks back at #2 and #1: #3 has no tests, mac is another builder.
    let back = store
        .failure_history(linux[3], 50, 100)
        .await
        .expect("history");
    let numbers: Vec<_> = back.builds.iter().map(|b| b.number).collect();
    assert_eq!(numbers, [2, 1]);
    let mut seen: Vec<_> = back
        .results
        .iter()
        .map(|row| (row.name.as_str(), row.number, row.result))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a", 1, TestOutcome::Passed),
            ("a", 2, TestOutcome::Failed),
            ("b", 1, TestOutcome::Passed),
            ("b", 2, TestOutcome::Passed),
        ]
    );
    let limited = store
        .failure_history(linux[3], 1, 1)
        .await
        .expect("history");
    assert_eq!(limited.builds.len(), 1);
    assert!(
        limited
            .results
            .iter()
            .all(|row| row.name == "a" && row.number == 2)
    );

    store
        .finish_build(&me, linux[3], BuildResult::Failure, None, false)
        .await
        .expect("finish");
    let flaky = store.flaky_tests("linux", 20, 10).await.expect("flaky");
    assert_eq!(flaky.len(), 2);
    assert_eq!(
        (flaky[0].name.as_str(), flaky[0].failed, flaky[0].passed),
        ("a", 2, 1)
    );
    assert_eq!(
        (flaky[1].name.as_str(), flaky[1].failed, flaky[1].passed),
        ("b", 1, 2)
    );
    assert!(
        store
            .flaky_tests("mac", 20, 10)
            .await
            .expect("flaky")
            .is_empty()
    );
}

/// A master killed and started again (kill -9: no retirement) leads at once, also with the
/// embedded store whose leases never run out: what its earlier run held is its own.
async fn a_new_run_of_a_master_takes_over_what_its_killed_run_held(store: SharedStore) {
    let long = Duration::from_secs(3600);
    let info = MasterInfo::default();
    let first = store
        .register_master("a", &info, Duration::from_millis(200))
        .await
        .expect("register");
    assert!(
        store
            .hold_singleton("jobs", &first, long)
            .await
            .expect("hold")
    );
    // Killed: its lease runs out (PostgreSQL refuses the name until then), the hold does not.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = store
        .register_master("a", &info, long)
        .await
        .expect("register again");
    assert!(second.epoch > first.epoch);
    assert!(
        store
            .hold_singleton("jobs", &second, long)
            .await
            .expect("hold"),
        "the new run leads"
    );
    let other = store.register_master("b", &info, long).await.expect("b");
    assert!(
        !store
            .hold_singleton("jobs", &other, long)
            .await
            .expect("hold")
    );
}

async fn bisections_are_kept_and_updated(store: SharedStore) {
    use buildbot::master::store::BisectRow;
    let mut row = BisectRow {
        id: 0,
        builder: "linux".into(),
        branch: "main".into(),
        good: "aaa".into(),
        bad: "bbb".into(),
        state: "running".into(),
        culprit: None,
        builds: 0,
        summary: "bisecting 16 commits".into(),
        plan: "{}".into(),
        started_at: 1_800_000_000.5,
    };
    let id = store.save_bisect(row.clone()).await.expect("save");
    assert!(id > 0);
    let other = store.save_bisect(row.clone()).await.expect("save");
    assert!(other > id);
    row.id = id;
    row.state = "found".into();
    row.culprit = Some("ccc".into());
    row.builds = 5;
    assert_eq!(store.save_bisect(row.clone()).await.expect("update"), id);
    let kept = store.bisects(10).await.expect("read");
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].id, other, "newest first");
    assert_eq!(kept[1], row);
}

async fn the_outbox_keeps_each_notification_once_until_it_ends(store: SharedStore) {
    use buildbot::master::store::{NewNotification, OutboxState};
    let give_up_at = now() + 3600.0;
    let note = |key: &str, to: &str| NewNotification {
        event_key: key.into(),
        notifier: "mail".into(),
        recipient: to.into(),
        payload: "{\"subject\": \"linux broke\\u0000\"}".into(),
        give_up_at,
    };
    let new = store
        .enqueue_notifications(vec![
            note("build:linux:1", "a@x"),
            note("build:linux:1", "b@x"),
        ])
        .await
        .expect("enqueue");
    assert_eq!(new, 2);
    // The same event recorded again (a restart, another master): nothing new, also at once.
    let (again, at_once) = tokio::join!(
        store.enqueue_notifications(vec![note("build:linux:1", "a@x")]),
        store.enqueue_notifications(vec![
            note("build:linux:1", "a@x"),
            note("build:linux:2", "a@x")
        ]),
    );
    assert_eq!(again.expect("enqueue") + at_once.expect("enqueue"), 1);
    let due = store.due_notifications(now() + 1.0, 10).await.expect("due");
    assert_eq!(due.len(), 3, "{due:?}");
    assert!(
        due.iter()
            .all(|n| n.state == OutboxState::Pending && n.attempts == 0)
    );
    assert_eq!(due[0].new, note("build:linux:1", "a@x"));
    // A failed attempt waits for its next time; a delivered one and a given-up one are done.
    store
        .retry_notification(due[0].id, "connection refused", now() + 60.0)
        .await
        .expect("retry");
    store
        .finish_notification(due[1].id, OutboxState::Delivered, None)
        .await
        .expect("delivered");
    store
        .finish_notification(due[2].id, OutboxState::GivenUp, Some("HTTP 404"))
        .await
        .expect("given up");
    // Finishing twice changes nothing.
    store
        .finish_notification(due[1].id, OutboxState::GivenUp, Some("late"))
        .await
        .expect("finish again");
    assert!(
        store
            .due_notifications(now() + 1.0, 10)
            .await
            .expect("due")
            .is_empty()
    );
    let later = store
        .due_notifications(now() + 61.0, 10)
        .await
        .expect("due");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].attempts, 1);
    assert_eq!(later[0].last_error.as_deref(), Some("connection refused"));
    let all = store.notifications(10).await.expect("all");
    let states: Vec<(OutboxState, Option<&str>)> = all
        .iter()
        .rev()
        .map(|n| (n.state, n.last_error.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            (OutboxState::Pending, Some("connection refused")),
            (OutboxState::Delivered, None),
            (OutboxState::GivenUp, Some("HTTP 404")),
        ]
    );
}

// ---- shell (issue 25) ----

async fn held_builds_keep_their_directory_and_record_their_shells(store: SharedStore) {
    use buildbot::master::store::{ShellHold, ShellSession};
    let me = run_of(&store, "m").await;
    let ids = store
        .record_requests(vec![request("j1", "linux"), request("j2", "linux")])
        .await
        .expect("record");
    let (build, number) = store
        .start_build(&me, ids[0], "linux", "s1")
        .await
        .expect("start");
    let t = now();
    let hold = ShellHold {
        build_id: build,
        builder: "linux".into(),
        number,
        slave: "s1".into(),
        dir: "linux".into(),
        env: vec![("BUILDBOT_BUILDER".into(), "linux".into())],
        owner: Some("alice".into()),
        held_until: t + 600.0,
    };
    store.hold_build(&me, hold.clone()).await.expect("hold");
    store
        .finish_build(&me, build, BuildResult::Failure, None, false)
        .await
        .expect("finish");
    assert_eq!(
        store.shell_hold("linux", number).await.expect("read"),
        Some(hold.clone())
    );
    assert_eq!(
        store.shell_hold("linux", number + 1).await.expect("read"),
        None
    );
    // Held: the directory is taken on that slave only, for that builder only.
    assert_eq!(
        store.held_dirs("s1", "linux", t).await.expect("read"),
        vec!["linux".to_string()]
    );
    assert!(
        store
            .held_dirs("s2", "linux", t)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .held_dirs("s1", "mac", t)
            .await
            .expect("read")
            .is_empty()
    );
    // A build that finished cannot be held any more (fenced like every write about a build).
    let late = store.hold_build(&me, hold.clone()).await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");

    // Sessions: recorded with who and from where; the count of open ones comes back.
    let session = |who: &str| ShellSession {
        id: 0,
        build_id: build,
        who: who.into(),
        from_addr: "127.0.0.1".into(),
        master: "m".into(),
        started_at: t,
        ended_at: None,
    };
    let first = store
        .start_shell_session(session("alice"))
        .await
        .expect("start");
    let second = store
        .start_shell_session(session("root"))
        .await
        .expect("start");
    assert_ne!(first, second);
    assert_eq!(
        store.end_shell_session(first, t + 1.0).await.expect("end"),
        1
    );
    // Ending one twice changes nothing.
    assert_eq!(
        store.end_shell_session(first, t + 5.0).await.expect("end"),
        1
    );
    assert_eq!(
        store.end_shell_session(second, t + 2.0).await.expect("end"),
        0
    );
    let sessions = store.shell_sessions(build).await.expect("read");
    assert_eq!(
        sessions
            .iter()
            .map(|s| (s.who.as_str(), s.ended_at))
            .collect::<Vec<_>>(),
        vec![("alice", Some(t + 1.0)), ("root", Some(t + 2.0))]
    );

    // Released: the directory is free again.
    store.set_held_until(build, t - 1.0).await.expect("release");
    assert!(
        store
            .held_dirs("s1", "linux", t)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store
            .shell_hold("linux", number)
            .await
            .expect("read")
            .map(|hold| hold.held_until),
        Some(t - 1.0)
    );
}

// ---- artifacts (issue 27) ----

async fn artifacts_are_recorded_chunked_and_fenced(store: SharedStore) {
    use buildbot::master::store::NewArtifact;
    let writer = store
        .register_master("a", &MasterInfo::default(), Duration::from_secs(60))
        .await
        .expect("register");
    let other = run_of(&store, "b").await;
    let id = one(&store, request("j1", "linux")).await;
    let (build, _) = store
        .start_build(&writer, id, "linux", "s1")
        .await
        .expect("start");
    assert!(store.artifacts_of(build).await.expect("read").is_empty());
    // Bytes first (any byte value), then the record.
    let first: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    store
        .put_artifact_chunk(&writer, build, "dist/app", 0, first.clone())
        .await
        .expect("chunk 0");
    store
        .put_artifact_chunk(&writer, build, "dist/app", 1, vec![0, 1, 2])
        .await
        .expect("chunk 1");
    // A retried chunk replaces itself.
    store
        .put_artifact_chunk(&writer, build, "dist/app", 1, vec![7, 8, 9])
        .await
        .expect("chunk 1 again");
    let app = NewArtifact {
        build_id: build,
        step: 2,
        path: "dist/app".into(),
        size: 1003,
        sha256: "ab".repeat(32),
    };
    store
        .record_artifact(&writer, &app, true)
        .await
        .expect("record");
    let notes = NewArtifact {
        path: "a/notes.txt".into(),
        size: 5,
        ..app.clone()
    };
    store
        .record_artifact(&writer, &notes, false)
        .await
        .expect("record");
    let rows = store.artifacts_of(build).await.expect("read");
    let listed: Vec<(&str, u64, bool)> = rows
        .iter()
        .map(|row| (row.path.as_str(), row.size, row.in_store))
        .collect();
    assert_eq!(
        listed,
        vec![("a/notes.txt", 5, false), ("dist/app", 1003, true)]
    );
    assert_eq!(rows[1].sha256, "ab".repeat(32));
    assert_eq!(rows[1].step, 2);
    assert_eq!(
        store
            .artifact_chunk(build, "dist/app", 0)
            .await
            .expect("read"),
        Some(first)
    );
    assert_eq!(
        store
            .artifact_chunk(build, "dist/app", 1)
            .await
            .expect("read"),
        Some(vec![7, 8, 9])
    );
    assert_eq!(
        store
            .artifact_chunk(build, "dist/app", 2)
            .await
            .expect("read"),
        None
    );
    // Only the build's own master writes about it, and only while it runs.
    assert!(matches!(
        store
            .record_artifact(
                &other,
                &NewArtifact {
                    path: "x".into(),
                    ..app.clone()
                },
                false
            )
            .await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store
            .put_artifact_chunk(&other, build, "x", 0, vec![1])
            .await,
        Err(StoreError::Fenced { .. })
    ));
    store
        .finish_build(&writer, build, BuildResult::Success, None, false)
        .await
        .expect("finish");
    assert!(matches!(
        store.record_artifact(&writer, &app, true).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(store.artifacts_of(build).await.expect("read").len(), 2);
}

async fn retention_prunes_old_builds_parts_once_and_keeps_the_newest(store: SharedStore) {
    use buildbot::master::store::{NewArtifact, PrunePart};
    let writer = store
        .register_master("a", &MasterInfo::default(), Duration::from_secs(60))
        .await
        .expect("register");
    let mut builds = Vec::new();
    for job in ["j1", "j2", "j3"] {
        let id = one(&store, request(job, "linux")).await;
        let (build, _) = store
            .start_build(&writer, id, "linux", "s1")
            .await
            .expect("start");
        store
            .start_step(&writer, build, 1, "test")
            .await
            .expect("step");
        store
            .append_log(
                &writer,
                build,
                1,
                buildbot::proto::StreamKind::Stdout,
                0,
                b"out".to_vec(),
            )
            .await
            .expect("log");
        let artifact = NewArtifact {
            build_id: build,
            step: 1,
            path: "app".into(),
            size: 3,
            sha256: "00".repeat(32),
        };
        store
            .put_artifact_chunk(&writer, build, "app", 0, b"app".to_vec())
            .await
            .expect("chunk");
        store
            .record_artifact(&writer, &artifact, true)
            .await
            .expect("record");
        store
            .finish_build(&writer, build, BuildResult::Success, None, false)
            .await
            .expect("finish");
        builds.push(build);
    }
    let later = now() + 60.0;
    // The newest build is kept; a running or too recent one never appears.
    let candidates = store
        .prune_candidates("linux", PrunePart::Artifacts, later, 1, 10)
        .await
        .expect("candidates");
    assert_eq!(candidates, vec![(builds[0], 1), (builds[1], 2)]);
    assert!(
        store
            .prune_candidates("linux", PrunePart::Artifacts, now() - 3600.0, 0, 10)
            .await
            .expect("candidates")
            .is_empty()
    );
    assert_eq!(
        store
            .prune_candidates("linux", PrunePart::Logs, later, 0, 2)
            .await
            .expect("candidates")
            .len(),
        2
    );
    store
        .prune_build_part(builds[0], PrunePart::Artifacts)
        .await
        .expect("prune");
    assert!(
        store
            .artifacts_of(builds[0])
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store
            .artifact_chunk(builds[0], "app", 0)
            .await
            .expect("read"),
        None
    );
    assert_eq!(store.artifacts_of(builds[1]).await.expect("read").len(), 1);
    // Its logs are another part, pruned on their own schedule.
    assert_eq!(
        store
            .log_size(builds[0], 1, buildbot::proto::StreamKind::Stdout)
            .await
            .expect("size"),
        3
    );
    assert_eq!(
        store
            .prune_candidates("linux", PrunePart::Artifacts, later, 1, 10)
            .await
            .expect("candidates"),
        vec![(builds[1], 2)]
    );
    store
        .prune_build_part(builds[0], PrunePart::Logs)
        .await
        .expect("prune");
    store
        .prune_build_part(builds[0], PrunePart::Logs)
        .await
        .expect("pruning twice is harmless");
    assert_eq!(
        store
            .log_size(builds[0], 1, buildbot::proto::StreamKind::Stdout)
            .await
            .expect("size"),
        0
    );
    assert!(
        store
            .build(BuildRef::Id(builds[0]))
            .await
            .expect("read")
            .is_some(),
        "the build's record stays"
    );
}

async fn retention_deletes_old_builds_with_everything_hanging_off_them(store: SharedStore) {
    use buildbot::master::store::{
        NewArtifact, NewNotification, OutboxState, ShellHold, ShellSession,
    };
    let writer = store
        .register_master("a", &MasterInfo::default(), Duration::from_secs(60))
        .await
        .expect("register");
    let stdout = buildbot::proto::StreamKind::Stdout;
    let t = now();
    // Five builds of linux, each with a step, a log, an artifact, a test result, a shell
    // session; #2 is still held for a shell, #1 and #3 had their holds run out.
    let mut builds = Vec::new();
    let mut requests = Vec::new();
    for job in ["j1", "j2", "j3", "j4", "j5"] {
        let id = one(&store, request(job, "linux")).await;
        requests.push(id);
        let (build, number) = store
            .start_build(&writer, id, "linux", "s1")
            .await
            .expect("start");
        store
            .start_step(&writer, build, 1, "test")
            .await
            .expect("step");
        store
            .append_log(&writer, build, 1, stdout, 0, b"out".to_vec())
            .await
            .expect("log");
        store
            .put_artifact_chunk(&writer, build, "app", 0, b"app".to_vec())
            .await
            .expect("chunk");
        let artifact = NewArtifact {
            build_id: build,
            step: 1,
            path: "app".into(),
            size: 3,
            sha256: "00".repeat(32),
        };
        store
            .record_artifact(&writer, &artifact, true)
            .await
            .expect("record");
        store
            .record_test_results(
                &writer,
                build,
                vec![case("suite", "t", TestOutcome::Failed, Some(1))],
            )
            .await
            .expect("tests");
        if number <= 3 {
            let hold = ShellHold {
                build_id: build,
                builder: "linux".into(),
                number,
                slave: "s1".into(),
                dir: format!("linux~{number}"),
                env: Vec::new(),
                owner: None,
                held_until: if number == 2 { t + 600.0 } else { t - 1.0 },
            };
            store.hold_build(&writer, hold).await.expect("hold");
        }
        store
            .finish_build(&writer, build, BuildResult::Failure, None, false)
            .await
            .expect("finish");
        store
            .start_shell_session(ShellSession {
                id: 0,
                build_id: build,
                who: "alice".into(),
                from_addr: "127.0.0.1".into(),
                master: "a".into(),
                started_at: t,
                ended_at: None,
            })
            .await
            .expect("session");
        builds.push((build, number));
    }
    assert_eq!(
        builds.iter().map(|(_, number)| *number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let key = |number: i64| buildbot::master::store::build_event_key("linux", number);
    let note = |key: String, to: &str| NewNotification {
        event_key: key,
        notifier: "mail".into(),
        recipient: to.into(),
        payload: "{}".into(),
        give_up_at: t + 3600.0,
    };
    store
        .enqueue_notifications(vec![
            note(key(1), "sent@example.com"),
            note(key(1), "pending@example.com"),
            note(key(3), "sent@example.com"),
        ])
        .await
        .expect("enqueue");
    for notification in store.notifications(10).await.expect("read") {
        if notification.new.recipient == "sent@example.com" {
            store
                .finish_notification(notification.id, OutboxState::Delivered, None)
                .await
                .expect("delivered");
        }
    }
    // A build of another builder, as old: not linux's to prune.
    let other = one(&store, request("j6", "mac")).await;
    let (mac, _) = store
        .start_build(&writer, other, "mac", "s1")
        .await
        .expect("start");
    store
        .finish_build(&writer, mac, BuildResult::Success, None, false)
        .await
        .expect("finish");

    let later = now() + 60.0;
    let at = now();
    let id = |number: usize| builds[number - 1].0;
    // The held #2 and the newest stay, even with keep_last 0; keep_last counts from the newest.
    assert_eq!(
        store
            .old_builds("linux", later, 0, at, 10)
            .await
            .expect("old"),
        vec![(id(1), 1), (id(3), 3), (id(4), 4)]
    );
    assert_eq!(
        store
            .old_builds("linux", later, 2, at, 10)
            .await
            .expect("old"),
        vec![(id(1), 1), (id(3), 3)]
    );
    assert_eq!(
        store
            .old_builds("linux", later, 0, at, 1)
            .await
            .expect("old"),
        vec![(id(1), 1)]
    );
    assert!(
        store
            .old_builds("linux", t - 3600.0, 0, at, 10)
            .await
            .expect("old")
            .is_empty(),
        "none finished an hour ago"
    );

    for number in [1, 3] {
        store.delete_build(id(number)).await.expect("delete");
    }
    store
        .delete_build(id(1))
        .await
        .expect("deleting twice is harmless");
    for number in [1_i64, 3] {
        let build = builds[usize::try_from(number - 1).expect("index")].0;
        assert!(
            store
                .build(BuildRef::Id(build))
                .await
                .expect("read")
                .is_none(),
            "#{number} is gone"
        );
        assert!(store.steps_of(build).await.expect("steps").is_empty());
        assert_eq!(store.log_size(build, 1, stdout).await.expect("size"), 0);
        assert!(store.artifacts_of(build).await.expect("read").is_empty());
        assert_eq!(
            store.artifact_chunk(build, "app", 0).await.expect("read"),
            None
        );
        assert_eq!(store.test_counts(build).await.expect("counts").total(), 0);
        assert!(store.shell_sessions(build).await.expect("read").is_empty());
        assert_eq!(store.shell_hold("linux", number).await.expect("read"), None);
        // Its request and patch went with its last build.
        let request = requests[usize::try_from(number - 1).expect("index")];
        assert_eq!(store.request(request).await.expect("read"), None);
        assert_eq!(store.request_patch(request).await.expect("read"), None);
    }
    for number in [2, 4, 5] {
        let build = id(number);
        assert!(
            store
                .build(BuildRef::Id(build))
                .await
                .expect("read")
                .is_some(),
            "#{number} stays"
        );
        assert_eq!(store.steps_of(build).await.expect("steps").len(), 1);
        assert_eq!(store.log_size(build, 1, stdout).await.expect("size"), 3);
        assert_eq!(store.artifacts_of(build).await.expect("read").len(), 1);
        assert_eq!(store.test_counts(build).await.expect("counts").failed, 1);
        assert_eq!(store.shell_sessions(build).await.expect("read").len(), 1);
        let request = requests[number - 1];
        assert!(store.request(request).await.expect("read").is_some());
        assert!(store.request_patch(request).await.expect("read").is_some());
    }
    assert!(store.shell_hold("linux", 2).await.expect("read").is_some());
    assert!(
        store
            .build(BuildRef::Id(mac))
            .await
            .expect("read")
            .is_some()
    );
    // The sent notifications of the deleted builds went; one still to send stays.
    let left: Vec<(String, String)> = store
        .notifications(10)
        .await
        .expect("read")
        .into_iter()
        .map(|n| (n.new.event_key, n.new.recipient))
        .collect();
    assert_eq!(left, vec![(key(1), "pending@example.com".to_string())]);
    // Numbering goes on after the newest, whatever went before it.
    let next = one(&store, request("j7", "linux")).await;
    let (running, number) = store
        .start_build(&writer, next, "linux", "s1")
        .await
        .expect("start");
    assert_eq!(number, 6);
    // A running build is never deleted; #5 is no longer the newest, #6 (running) is.
    store.delete_build(running).await.expect("delete running");
    assert!(
        store
            .build(BuildRef::Id(running))
            .await
            .expect("read")
            .is_some()
    );
    assert_eq!(
        store
            .old_builds("linux", later, 0, now(), 10)
            .await
            .expect("old"),
        vec![(id(4), 4), (id(5), 5)]
    );
    // A request whose build lost its slave is queued again: deleting that build leaves it.
    let retried = one(&store, request("j8", "mac")).await;
    let (lost, _) = store
        .start_build(&writer, retried, "mac", "s1")
        .await
        .expect("start");
    store
        .finish_build(&writer, lost, BuildResult::Exception, None, true)
        .await
        .expect("finish, to be retried");
    store.delete_build(lost).await.expect("delete");
    assert!(store.request(retried).await.expect("read").is_some());
    assert!(store.request_patch(retried).await.expect("read").is_some());

    // Requests cancelled before a build: the old ones go, a new or a waiting one stays.
    let submitted = |job: &str, at: f64| NewRequest {
        submitted_at: at,
        ..request(job, "mac")
    };
    let old_cancelled = one(&store, submitted("j9", 1_000.0)).await;
    let new_cancelled = one(&store, submitted("j10", 9_000.0)).await;
    let old_waiting = one(&store, submitted("j11", 1_000.0)).await;
    store
        .cancel_requests(vec![old_cancelled, new_cancelled], None)
        .await
        .expect("cancel");
    assert_eq!(
        store
            .delete_cancelled_requests(5_000.0, 10)
            .await
            .expect("delete"),
        1
    );
    assert_eq!(store.request(old_cancelled).await.expect("read"), None);
    assert!(store.request(new_cancelled).await.expect("read").is_some());
    assert!(store.request(old_waiting).await.expect("read").is_some());
    assert_eq!(
        store
            .delete_cancelled_requests(5_000.0, 10)
            .await
            .expect("again"),
        0
    );
}
