//! Persistent subscriptions through the Rust SDK against an embedded broker (issue 15 test 5):
//! an event nacked with retry is delivered with retry counts 0..=3 and then parked (a link in
//! `$persistentsubscription-<group>-parked`), and `replay_parked` delivers it again; the
//! unsettled events of a consumer whose connection is dropped go to another consumer with
//! retry count + 1; Pinned keeps each stream on one consumer while two share the group;
//! RoundRobin spreads; a restarted broker resumes a group from its stored checkpoint.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ferry::client::native::*;
use ferry::testing::TestBroker;

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "es.psub";

async fn client(broker: &TestBroker) -> EventStoreClient {
    EventStoreClient::new(common::native::connect_as(broker, "guest", "guest").await)
}

async fn store(broker: &TestBroker) -> EventStoreClient {
    let es = client(broker).await;
    es.create_store(TOPIC, 1).await.expect("create store");
    es
}

fn event(kind: &str, n: u64) -> EventData {
    EventData::json(kind, &serde_json::json!({ "n": n })).expect("json")
}

async fn append(es: &EventStoreClient, stream: &str, events: Vec<EventData>) {
    es.append(TOPIC, stream, ExpectedRevision::Any, events)
        .await
        .expect("append");
}

async fn next(sub: &mut PersistentSubscription) -> PersistentEvent {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event in time")
        .expect("subscription")
        .expect("subscription open")
}

/// Nothing arrives within `quiet`.
async fn nothing_within(sub: &mut PersistentSubscription, quiet: Duration) {
    if let Ok(got) = tokio::time::timeout(quiet, sub.next()).await {
        let got = got
            .expect("subscription")
            .map(|e| (e.event.stream, e.event.revision));
        panic!("expected nothing, got {got:?}");
    }
}

fn from_start() -> PersistentSubscriptionSettings {
    PersistentSubscriptionSettings {
        start_from: StartFrom::Start,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_three_times_then_parked_then_replayed() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker).await;
    let settings = PersistentSubscriptionSettings {
        max_retry_count: 3,
        ..from_start()
    };
    es.create_persistent_subscription(
        TOPIC,
        "billing",
        PersistentSource::Stream("order-1".into()),
        &settings,
    )
    .await
    .expect("create");
    // A second create of the same group is refused.
    let again = es
        .create_persistent_subscription(
            TOPIC,
            "billing",
            PersistentSource::Stream("order-1".into()),
            &settings,
        )
        .await
        .expect_err("duplicate group");
    assert_eq!(again.code(), Some(ErrorCode::Conflict), "{again}");
    append(&es, "order-1", vec![event("poison", 0), event("fine", 1)]).await;
    let mut sub = client(&broker)
        .await
        .subscribe_persistent(TOPIC, "billing", 0)
        .await
        .expect("subscribe");
    let mut poison_retries = Vec::new();
    let mut fine = 0;
    while poison_retries.len() < 4 || fine < 1 {
        let e = next(&mut sub).await;
        if e.event.event.metadata.event_type == "poison" {
            assert_eq!(e.event.revision, 0);
            poison_retries.push(e.retry_count);
            e.nack(NackAction::Retry, "cannot process")
                .await
                .expect("nack");
        } else {
            assert_eq!(e.retry_count, 0);
            fine += 1;
            e.ack().await.expect("ack");
        }
    }
    assert_eq!(poison_retries, vec![0, 1, 2, 3]);
    assert_eq!(fine, 1, "the acked event came once");
    // Retries used up: parked, not delivered again.
    nothing_within(&mut sub, Duration::from_millis(500)).await;
    let parked_stream = "$persistentsubscription-billing-parked";
    let links = es
        .read_stream(TOPIC, parked_stream, ReadFrom::Start, false, 10)
        .await
        .expect("read the parked stream");
    assert_eq!(links.len(), 1, "one parked link");
    assert_eq!(links[0].event.metadata.event_type, "$>");
    assert_eq!(&links[0].event.payload[..], b"0@order-1");
    let info = es
        .list_persistent_subscriptions(Some(TOPIC))
        .await
        .expect("list");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].group, "billing");
    assert_eq!(info[0].source, "stream:order-1");
    assert_eq!(info[0].parked, 1);
    assert_eq!(info[0].parked_stream, parked_stream);
    assert_eq!(info[0].consumers, 1);

    // Replay: the parked event comes back with retry count 0; ack settles it for good.
    assert_eq!(
        es.replay_parked(TOPIC, "billing", None)
            .await
            .expect("replay"),
        1
    );
    let e = next(&mut sub).await;
    assert_eq!(e.event.event.metadata.event_type, "poison");
    assert_eq!((e.event.stream.as_str(), e.event.revision), ("order-1", 0));
    assert_eq!(e.retry_count, 0);
    e.ack().await.expect("ack");
    nothing_within(&mut sub, Duration::from_millis(500)).await;
    // Everything parked was replayed already.
    assert_eq!(
        es.replay_parked(TOPIC, "billing", None)
            .await
            .expect("replay"),
        0
    );

    // An explicit park goes straight to the parked stream; skip settles without it.
    append(
        &es,
        "order-1",
        vec![event("park-me", 2), event("skip-me", 3)],
    )
    .await;
    for _ in 0..2 {
        let e = next(&mut sub).await;
        assert_eq!(e.retry_count, 0);
        match e.event.event.metadata.event_type.as_str() {
            "park-me" => e.nack(NackAction::Park, "by hand").await.expect("park"),
            "skip-me" => e.nack(NackAction::Skip, "").await.expect("skip"),
            other => panic!("unexpected event {other}"),
        }
    }
    nothing_within(&mut sub, Duration::from_millis(500)).await;
    let links = es
        .read_stream(TOPIC, parked_stream, ReadFrom::Start, false, 10)
        .await
        .expect("read the parked stream");
    assert_eq!(links.len(), 2);
    assert_eq!(&links[1].event.payload[..], b"2@order-1");
    assert_eq!(
        es.replay_parked(TOPIC, "billing", None)
            .await
            .expect("replay"),
        1
    );
    let e = next(&mut sub).await;
    assert_eq!(e.event.event.metadata.event_type, "park-me");
    e.ack().await.expect("ack");

    es.delete_persistent_subscription(TOPIC, "billing")
        .await
        .expect("delete");
    // The consumer's stream ends with the group.
    let end = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("end in time");
    assert!(matches!(end, Ok(None)), "subscription ended");
    assert!(es
        .list_persistent_subscriptions(Some(TOPIC))
        .await
        .expect("list")
        .is_empty());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_consumers_events_go_to_another() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker).await;
    es.create_persistent_subscription(
        TOPIC,
        "workers",
        PersistentSource::Category("job-".into()),
        &from_start(),
    )
    .await
    .expect("create");
    let doomed_conn = common::native::connect_as(&broker, "guest", "guest").await;
    let mut doomed = EventStoreClient::new(doomed_conn.clone())
        .subscribe_persistent(TOPIC, "workers", 10)
        .await
        .expect("subscribe");
    // Other categories are not the group's.
    append(&es, "other-1", vec![event("noise", 0)]).await;
    for n in 0..4 {
        append(&es, &format!("job-{n}"), vec![event("job", n)]).await;
    }
    let mut held = HashSet::new();
    for _ in 0..4 {
        let e = next(&mut doomed).await;
        assert_eq!(e.retry_count, 0);
        assert!(e.event.stream.starts_with("job-"), "{}", e.event.stream);
        held.insert(e.event.event.metadata.id.clone());
    }
    let mut survivor = client(&broker)
        .await
        .subscribe_persistent(TOPIC, "workers", 10)
        .await
        .expect("subscribe");
    // The survivor gets nothing while the doomed consumer holds everything.
    nothing_within(&mut survivor, Duration::from_millis(300)).await;
    doomed_conn.drop_connection().await;
    let mut redelivered = HashSet::new();
    for _ in 0..4 {
        let e = next(&mut survivor).await;
        assert_eq!(e.retry_count, 1, "a redelivery counts as a retry");
        redelivered.insert(e.event.event.metadata.id.clone());
        e.ack().await.expect("ack");
    }
    assert_eq!(redelivered, held);
    nothing_within(&mut survivor, Duration::from_millis(300)).await;
    broker.stop().await;
}

/// Two consumers of `group` read `total` events concurrently, acking each; returns per
/// consumer the (stream, revision) pairs in arrival order.
async fn two_consumers(
    broker: &TestBroker,
    group: &str,
    total: usize,
    append_all: impl std::future::Future<Output = ()>,
) -> [Vec<(String, u64)>; 2] {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for c in 0..2 {
        let mut sub = client(broker)
            .await
            .subscribe_persistent(TOPIC, group, 3)
            .await
            .expect("subscribe");
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(e)) = sub.next().await {
                // A little work, so both consumers are busy at once.
                tokio::time::sleep(Duration::from_millis(2)).await;
                e.ack().await.expect("ack");
                if tx
                    .send((c, e.event.stream.clone(), e.event.revision))
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    append_all.await;
    let mut got: [Vec<(String, u64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..total {
        let (c, stream, revision) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("all events in time")
            .expect("consumers alive");
        got[c].push((stream, revision));
    }
    for t in tasks {
        t.abort();
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_keeps_each_stream_on_one_consumer() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker).await;
    let settings = PersistentSubscriptionSettings {
        strategy: ConsumerStrategy::Pinned,
        ..from_start()
    };
    es.create_persistent_subscription(TOPIC, "pinned", PersistentSource::All(None), &settings)
        .await
        .expect("create");
    let (streams, per_stream) = (6u64, 10u64);
    let writer = es.clone();
    let appends = async move {
        for n in 0..per_stream {
            for s in 0..streams {
                append(&writer, &format!("acct-{s}"), vec![event("tx", n)]).await;
            }
        }
    };
    let got = two_consumers(&broker, "pinned", (streams * per_stream) as usize, appends).await;
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (c, events) in got.iter().enumerate() {
        for (stream, _) in events {
            let first = *owner.entry(stream.clone()).or_insert(c);
            assert_eq!(first, c, "stream {stream} went to both consumers");
        }
        // Within a stream, in order.
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (stream, revision) in events {
            if let Some(prev) = last.insert(stream, *revision) {
                assert!(*revision > prev, "{stream}: {revision} after {prev}");
            }
        }
    }
    assert_eq!(owner.len(), streams as usize);
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both consumers own streams: {} / {}",
        got[0].len(),
        got[1].len()
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_by_correlation_keeps_a_correlation_on_one_consumer() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker).await;
    let settings = PersistentSubscriptionSettings {
        strategy: ConsumerStrategy::PinnedByCorrelation,
        ..from_start()
    };
    es.create_persistent_subscription(TOPIC, "sagas", PersistentSource::All(None), &settings)
        .await
        .expect("create");
    let writer = es.clone();
    // Every event on its own stream; four correlation ids across them.
    let appends = async move {
        for n in 0..40u64 {
            let mut e = event("step", n);
            e.metadata.correlation_id = format!("saga-{}", n % 4);
            append(&writer, &format!("step-{n}"), vec![e]).await;
        }
    };
    let got = two_consumers(&broker, "sagas", 40, appends).await;
    let mut owner: HashMap<u64, usize> = HashMap::new();
    for (c, events) in got.iter().enumerate() {
        for (stream, _) in events {
            let n: u64 = stream["step-".len()..].parse().expect("number");
            let first = *owner.entry(n % 4).or_insert(c);
            assert_eq!(
                first,
                c,
                "correlation saga-{} went to both consumers",
                n % 4
            );
        }
    }
    assert_eq!(owner.len(), 4);
    assert!(!got[0].is_empty() && !got[1].is_empty());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_one_stream_over_both_consumers() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker).await;
    es.create_persistent_subscription(
        TOPIC,
        "rr",
        PersistentSource::Stream("feed".into()),
        &from_start(),
    )
    .await
    .expect("create");
    let writer = es.clone();
    let appends = async move {
        for n in 0..40 {
            append(&writer, "feed", vec![event("item", n)]).await;
        }
    };
    let got = two_consumers(&broker, "rr", 40, appends).await;
    let all: HashSet<u64> = got.iter().flatten().map(|(_, r)| *r).collect();
    assert_eq!(all, (0..40).collect::<HashSet<u64>>(), "every event once");
    assert_eq!(got[0].len() + got[1].len(), 40, "no duplicates");
    // One stream, yet both consumers work on it.
    assert!(
        got[0].len() >= 5 && got[1].len() >= 5,
        "spread: {} / {}",
        got[0].len(),
        got[1].len()
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("data");
    let acked = 6u64;
    {
        let broker = TestBroker::with(|b| b.data_dir(&path))
            .await
            .expect("broker");
        let es = store(&broker).await;
        let settings = PersistentSubscriptionSettings {
            checkpoint_after: 1,
            ..from_start()
        };
        es.create_persistent_subscription(
            TOPIC,
            "durable",
            PersistentSource::Stream("ledger".into()),
            &settings,
        )
        .await
        .expect("create");
        for n in 0..10 {
            append(&es, "ledger", vec![event("entry", n)]).await;
        }
        let mut sub = client(&broker)
            .await
            .subscribe_persistent(TOPIC, "durable", 10)
            .await
            .expect("subscribe");
        let mut positions = Vec::new();
        for n in 0..10 {
            let e = next(&mut sub).await;
            assert_eq!(e.event.revision, n);
            positions.push(e.event.position);
            if n < acked {
                e.ack().await.expect("ack");
            }
        }
        // The stored checkpoint reaches the first unacked event.
        let want = positions[acked as usize];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let info = es
                .list_persistent_subscriptions(Some(TOPIC))
                .await
                .expect("list");
            if info[0].checkpoint.get(&0) == Some(&want) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "checkpoint {:?}, want {want}",
                info[0].checkpoint
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path))
        .await
        .expect("broker again");
    let es = client(&broker).await;
    let info = es
        .list_persistent_subscriptions(None)
        .await
        .expect("list after restart");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].settings.checkpoint_after, 1);
    for n in 10..12 {
        append(&es, "ledger", vec![event("entry", n)]).await;
    }
    let mut sub = es
        .subscribe_persistent(TOPIC, "durable", 10)
        .await
        .expect("subscribe after restart");
    // The unacked events and the new ones, in order; nothing acked before comes back.
    for n in acked..12 {
        let e = next(&mut sub).await;
        assert_eq!(e.event.revision, n);
        e.ack().await.expect("ack");
    }
    nothing_within(&mut sub, Duration::from_millis(500)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_event_is_retried_after_the_message_timeout() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker).await;
    let settings = PersistentSubscriptionSettings {
        message_timeout: Duration::from_secs(60),
        max_retry_count: 1,
        ..from_start()
    };
    es.create_persistent_subscription(
        TOPIC,
        "slow",
        PersistentSource::Stream("s".into()),
        &settings,
    )
    .await
    .expect("create");
    // The update applies to the running group: a short timeout now.
    let updated = PersistentSubscriptionSettings {
        message_timeout: Duration::from_millis(300),
        ..settings
    };
    es.update_persistent_subscription(TOPIC, "slow", &updated)
        .await
        .expect("update");
    let listed = es
        .list_persistent_subscriptions(Some(TOPIC))
        .await
        .expect("list");
    assert_eq!(listed[0].settings, updated);
    let missing = es
        .update_persistent_subscription(TOPIC, "nobody", &updated)
        .await
        .expect_err("unknown group");
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
    append(&es, "s", vec![event("late", 0)]).await;
    let mut sub = client(&broker)
        .await
        .subscribe_persistent(TOPIC, "slow", 0)
        .await
        .expect("subscribe");
    let first = next(&mut sub).await;
    assert_eq!(first.retry_count, 0);
    let started = std::time::Instant::now();
    // Not settled: delivered again after the timeout, then parked after the next one.
    let second = next(&mut sub).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(second.retry_count, 1);
    assert_eq!(second.event.revision, 0);
    // The first delivery's id is stale now: acking it does nothing.
    first.ack().await.expect("stale ack is ignored");
    nothing_within(&mut sub, Duration::from_millis(800)).await;
    let links = es
        .read_stream(
            TOPIC,
            "$persistentsubscription-slow-parked",
            ReadFrom::Start,
            false,
            10,
        )
        .await
        .expect("parked");
    assert_eq!(links.len(), 1);
    broker.stop().await;
}
