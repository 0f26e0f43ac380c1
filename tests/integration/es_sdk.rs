//! The SDK's event-sourcing helpers against an embedded broker (issue 15 tests 6 and 7):
//! projections whose checkpoint is committed with the read model survive a crash mid-batch
//! with exactly one application of every event, and a rebuild gives the same read model;
//! checkpoints kept in Ferry resume where they were and fence a second runner; aggregate
//! snapshots round trip, loading reads only the events after the snapshot, and the compacted
//! snapshot topic keeps the latest snapshot of each stream; sagas fed duplicates, stale and
//! late timeouts and concurrent events compensate exactly once, and the saga example runs.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry::client::native::*;
use ferry::testing::TestBroker;

async fn store(broker: &TestBroker, topic: &str) -> EventStoreClient {
    let conn = common::native::connect_as(broker, "guest", "guest").await;
    let client = EventStoreClient::new(conn);
    client.create_store(topic, 1).await.expect("create store");
    client
}

fn tick(n: u64) -> EventData {
    EventData::json("tick", &serde_json::json!({ "n": n })).expect("json")
}

/// Appends `per_stream` events to each of `streams` streams, interleaved, in batches of 3.
async fn fill(client: &EventStoreClient, topic: &str, streams: u64, per_stream: u64, base: u64) {
    for round in 0..per_stream.div_ceil(3) {
        for s in 0..streams {
            let n = (per_stream - round * 3).min(3);
            let events = (0..n).map(|i| tick(base + round * 3 + i)).collect();
            client
                .append(topic, &format!("item-{s}"), ExpectedRevision::Any, events)
                .await
                .expect("append");
        }
    }
}

/// The application's database: a read model and its checkpoint in one JSON file, committed
/// by an atomic rename, so they are always written together.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Db {
    /// Events counted per stream (an increment, not an upsert: a replayed event would count
    /// twice, so the total proves exactly-once).
    per_stream: BTreeMap<String, u64>,
    total: u64,
    sum: u64,
    checkpoint: Option<i64>,
}

impl Db {
    fn read(path: &Path) -> Db {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).expect("db file"),
            Err(_) => Db::default(),
        }
    }

    fn commit(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// Counts events into [`Db`], committing the checkpoint in the same transaction; fails (a
/// crash: the transaction is dropped) when it reaches its `crash_at`-th event.
struct CountingProjection {
    path: PathBuf,
    crash_at: Option<u64>,
    seen: u64,
}

impl Projection for CountingProjection {
    async fn apply(&mut self, events: &[RecordedEvent], checkpoint: i64) -> Result<(), BoxError> {
        let mut tx = Db::read(&self.path);
        for e in events {
            self.seen += 1;
            if self.crash_at == Some(self.seen) {
                return Err("crash mid-batch".into());
            }
            let n: serde_json::Value = e.event.json()?;
            *tx.per_stream.entry(e.stream.clone()).or_default() += 1;
            tx.total += 1;
            tx.sum += n["n"].as_u64().ok_or("no n")?;
        }
        tx.checkpoint = Some(checkpoint);
        tx.commit(&self.path)?;
        Ok(())
    }

    async fn load_checkpoint(&mut self) -> Result<Option<i64>, BoxError> {
        Ok(Db::read(&self.path).checkpoint)
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        Db::default().commit(&self.path)?;
        Ok(())
    }
}

#[tokio::test]
async fn projection_crashed_mid_batch_counts_every_event_once_and_rebuilds_identically() {
    let broker = TestBroker::start().await.expect("broker");
    let topic = "es.proj6";
    let client = store(&broker, topic).await;
    fill(&client, topic, 10, 30, 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("read-model.json");
    let runner = ProjectionRunner::new(client.clone(), "counts", topic)
        .with_storage(CheckpointStorage::Application)
        .with_batch_size(50)
        .with_max_wait(std::time::Duration::from_secs(30));

    // Crash at the 120th event, inside the third batch (events 101..150).
    let mut crashing = CountingProjection {
        path: path.clone(),
        crash_at: Some(120),
        seen: 0,
    };
    let err = runner
        .run_until_caught_up(&mut crashing)
        .await
        .expect_err("the projection crashes");
    assert!(matches!(err, ProjectionError::Apply(_)), "{err}");
    let after_crash = Db::read(&path);
    assert_eq!(after_crash.total, 100, "two whole batches were committed");
    assert!(after_crash.checkpoint.is_some());

    // Restart: resumes from the committed checkpoint; nothing lost, nothing twice.
    let mut projection = CountingProjection {
        path: path.clone(),
        crash_at: None,
        seen: 0,
    };
    runner
        .run_until_caught_up(&mut projection)
        .await
        .expect("restart");
    assert_eq!(
        projection.seen, 200,
        "the restart read only what was not committed"
    );
    let db = Db::read(&path);
    assert_eq!(db.total, 300);
    assert_eq!(db.per_stream.len(), 10);
    assert!(db.per_stream.values().all(|&n| n == 30), "{db:?}");

    // More events, then a live run stopped once it has them.
    fill(&client, topic, 10, 5, 1_000).await;
    let stop_path = path.clone();
    let stop = async move {
        while Db::read(&stop_path).total < 350 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        runner.run(&mut projection, stop),
    )
    .await
    .expect("live run in time")
    .expect("live run");
    let before_rebuild = Db::read(&path);
    assert_eq!(before_rebuild.total, 350);

    // Rebuild: reset and replay gives the identical read model and checkpoint.
    let mut rebuilt = CountingProjection {
        path: path.clone(),
        crash_at: None,
        seen: 0,
    };
    runner.rebuild(&mut rebuilt).await.expect("rebuild");
    assert_eq!(rebuilt.seen, 350);
    assert_eq!(Db::read(&path), before_rebuild);
}

/// A read model that keeps the events by position (an upsert, so idempotent, as the Ferry
/// checkpoint storage requires) and records every position it was handed.
#[derive(Clone, Default)]
struct PositionsProjection {
    model: Arc<Mutex<BTreeMap<i64, String>>>,
    handed: Arc<Mutex<Vec<i64>>>,
    crash_at: Option<usize>,
}

impl Projection for PositionsProjection {
    async fn apply(&mut self, events: &[RecordedEvent], _checkpoint: i64) -> Result<(), BoxError> {
        for e in events {
            let handed = {
                let mut h = self.handed.lock().map_err(|e| e.to_string())?;
                h.push(e.position);
                h.len()
            };
            if self.crash_at == Some(handed) {
                return Err("crash mid-batch".into());
            }
            self.model
                .lock()
                .map_err(|e| e.to_string())?
                .insert(e.position, e.stream.clone());
        }
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.model.lock().map_err(|e| e.to_string())?.clear();
        Ok(())
    }
}

#[tokio::test]
async fn ferry_checkpoints_resume_after_a_crash_and_fence_a_second_runner() {
    let broker = TestBroker::start().await.expect("broker");
    let topic = "es.projferry";
    let client = store(&broker, topic).await;
    fill(&client, topic, 4, 30, 0).await;
    let runner = ProjectionRunner::new(client.clone(), "positions", topic)
        .with_batch_size(40)
        .with_max_wait(std::time::Duration::from_secs(30));

    let mut crashing = PositionsProjection {
        crash_at: Some(70),
        ..Default::default()
    };
    runner
        .run_until_caught_up(&mut crashing)
        .await
        .expect_err("crash");
    let checkpoints =
        FerryCheckpoints::open(client.clone(), &format!("{topic}.projections"), "positions")
            .await
            .expect("checkpoints");
    let stored = checkpoints
        .position()
        .expect("a checkpoint after the first batch");

    // Restart with the same (durable, idempotent) read model: it resumes at the checkpoint.
    let mut projection = PositionsProjection {
        model: crashing.model.clone(),
        ..Default::default()
    };
    let end = runner
        .run_until_caught_up(&mut projection)
        .await
        .expect("restart");
    let handed = projection.handed.lock().expect("lock").clone();
    assert_eq!(
        handed.first().copied(),
        Some(stored),
        "resumed at the checkpoint"
    );
    assert_eq!(
        handed.len(),
        120 - 40,
        "only the uncommitted events came again"
    );
    assert_eq!(projection.model.lock().expect("lock").len(), 120);
    let (all, _) = client.read_all(topic, 0, 0, 1_000).await.expect("read all");
    let positions: Vec<i64> = all.iter().map(|e| e.position).collect();
    let model: Vec<i64> = projection
        .model
        .lock()
        .expect("lock")
        .keys()
        .copied()
        .collect();
    assert_eq!(model, positions);
    assert_eq!(end, positions.last().map_or(0, |p| p + 1));

    // A second runner holding an older revision of the checkpoint stream is fenced.
    let mut stale = checkpoints;
    let err = stale.save(Some(0)).await.expect_err("fenced");
    assert!(matches!(err, ProjectionError::Fenced { .. }), "{err}");

    // Rebuild from Ferry's checkpoint: the model is rebuilt from scratch, identical.
    let mut rebuilt = PositionsProjection::default();
    runner.rebuild(&mut rebuilt).await.expect("rebuild");
    assert_eq!(
        *rebuilt.model.lock().expect("lock"),
        *projection.model.lock().expect("lock")
    );
    assert_eq!(rebuilt.handed.lock().expect("lock").len(), 120);
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Account {
    balance: i64,
    events: u64,
}

impl Aggregate for Account {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), BoxError> {
        let v: serde_json::Value = event.event.json()?;
        self.balance += v["n"].as_i64().ok_or("no n")?;
        self.events += 1;
        Ok(())
    }
}

#[tokio::test]
async fn snapshots_round_trip_and_loading_replays_only_the_events_after_one() {
    let broker = TestBroker::start().await.expect("broker");
    let topic = "es.snap";
    let client = store(&broker, topic).await;
    let snapshots = SnapshotStore::new(client.clone(), topic);
    snapshots.create(1).await.expect("snapshot topic");
    snapshots
        .create(1)
        .await
        .expect("creating again is a no-op");
    let stream = "acct-1";
    client
        .append(
            topic,
            stream,
            ExpectedRevision::NoStream,
            (1..=10).map(tick).collect(),
        )
        .await
        .expect("append");

    let none: Option<Snapshot<Account>> = snapshots.load(stream).await.expect("load");
    assert!(none.is_none());
    let loaded: LoadedAggregate<Account> = snapshots.load_aggregate(stream).await.expect("load");
    assert_eq!(loaded.snapshot_revision, None);
    assert_eq!(loaded.replayed, 10);
    assert_eq!(loaded.revision, Some(9));
    assert_eq!(
        loaded.state,
        Account {
            balance: 55,
            events: 10
        }
    );

    snapshots
        .save(stream, 9, &loaded.state)
        .await
        .expect("save");
    client
        .append(
            topic,
            stream,
            ExpectedRevision::Exact(9),
            (11..=15).map(tick).collect(),
        )
        .await
        .expect("append");
    let loaded: LoadedAggregate<Account> = snapshots.load_aggregate(stream).await.expect("load");
    assert_eq!(loaded.snapshot_revision, Some(9));
    assert_eq!(loaded.replayed, 5, "only the events after the snapshot");
    assert_eq!(loaded.revision, Some(14));
    assert_eq!(
        loaded.state,
        Account {
            balance: 120,
            events: 15
        }
    );

    snapshots
        .save(stream, 14, &loaded.state)
        .await
        .expect("save");
    let latest: Snapshot<Account> = snapshots.load(stream).await.expect("load").expect("one");
    assert_eq!(latest.revision, 14);
    assert_eq!(
        latest.state,
        Account {
            balance: 120,
            events: 15
        }
    );
    let loaded: LoadedAggregate<Account> = snapshots.load_aggregate(stream).await.expect("load");
    assert_eq!((loaded.replayed, loaded.revision), (0, Some(14)));
    assert_eq!(loaded.state, latest.state);

    // A stream without events or snapshots loads as the default state.
    let empty: LoadedAggregate<Account> =
        snapshots.load_aggregate("acct-none").await.expect("load");
    assert_eq!(
        empty,
        LoadedAggregate {
            state: Account::default(),
            revision: None,
            snapshot_revision: None,
            replayed: 0,
        }
    );

    // Snapshots stay out of the store's `$all`.
    let (all, _) = client.read_all(topic, 0, 0, 1_000).await.expect("read all");
    assert_eq!(all.len(), 15);
    assert!(all.iter().all(|e| e.event.metadata.event_type == "tick"));
}

#[tokio::test]
async fn the_snapshot_topic_is_compacted_to_the_latest_snapshot_of_each_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::with(|b| {
        b.data_dir(dir.path())
            .configure(|c| c.log.cleaner_backoff_ms = 100)
    })
    .await
    .expect("broker");
    let topic = "es.snapc";
    let client = store(&broker, topic).await;
    let snapshots = SnapshotStore::new(client.clone(), topic);
    snapshots
        .create_with(
            1,
            // Small segments, so most snapshots are in sealed, cleanable segments.
            &[
                ("segment.bytes", "2048"),
                ("min.cleanable.dirty.ratio", "0.01"),
            ],
        )
        .await
        .expect("snapshot topic");
    let streams = 5u64;
    let saves = 40u64;
    for v in 0..saves {
        for s in 0..streams {
            let state = Account {
                balance: i64::try_from(v * 10 + s).expect("small"),
                events: v + 1,
            };
            snapshots
                .save(&format!("acct-{s}"), v, &state)
                .await
                .expect("save");
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (records, _) = client
            .read_all(snapshots.topic(), 0, 0, 10_000)
            .await
            .expect("read all");
        // One per stream in the sealed segments, a few more in the active one.
        if records.len() <= 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cleaner never compacted the snapshots: {} records",
            records.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Every stream's latest snapshot survived compaction and is still found by the index.
    for s in 0..streams {
        let stream = format!("acct-{s}");
        let latest: Snapshot<Account> = snapshots
            .load(&stream)
            .await
            .expect("load")
            .expect("a snapshot");
        assert_eq!(latest.revision, saves - 1, "{stream}");
        assert_eq!(
            latest.state,
            Account {
                balance: i64::try_from((saves - 1) * 10 + s).expect("small"),
                events: saves,
            }
        );
    }
    snapshots
        .save("acct-0", saves, &Account::default())
        .await
        .expect("save after compaction");
    let after: Snapshot<Account> = snapshots.load("acct-0").await.expect("load").expect("one");
    assert_eq!(after.revision, saves);
}

#[path = "../../examples/saga_orders.rs"]
mod saga_example;

use saga_example::{OrderPlaced, OrderRef, OrderSaga, OrderState};

/// Collects what arrives on `queue` until nothing came for `quiet`.
async fn drain(
    consumer: &EventConsumer,
    queue: &str,
    quiet: std::time::Duration,
) -> Vec<ReceivedEvent> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = consumer
        .subscribe(
            move |event: ReceivedEvent, _ctx: EventContext| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event);
                    Ok(())
                }
            },
            ConsumerConfig::new(queue),
        )
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, rx.recv()).await {
        got.push(e);
    }
    sub.close().await;
    got
}

fn saga_event(id: &str, kind: &str, order: &str) -> SagaEvent {
    SagaEvent::json(
        id,
        kind,
        order,
        &OrderRef {
            order: order.into(),
        },
    )
    .expect("json")
}

#[tokio::test]
async fn saga_with_duplicates_a_late_timeout_and_concurrent_events_compensates_exactly_once() {
    let broker = TestBroker::start().await.expect("broker");
    let conn_a = common::native::connect_as(&broker, "guest", "guest").await;
    let conn_b = common::native::connect_as(&broker, "guest", "guest").await;
    let timeout = std::time::Duration::from_millis(400);
    let input = ConsumerConfig::new("t7.order-saga");
    let a = SagaManager::new(
        conn_a.clone(),
        OrderSaga::new("t7", timeout),
        "t7.sagas",
        &input.queue,
    );
    let b = SagaManager::new(
        conn_b,
        OrderSaga::new("t7", timeout),
        "t7.sagas",
        &input.queue,
    );
    a.declare(&input).await.expect("declare");
    for q in ["t7.stock", "t7.payments", "t7.shipping"] {
        a.declare_command_queue(&ConsumerConfig::new(q))
            .await
            .expect("queue");
    }
    let orders: Vec<String> = (0..8).map(|i| format!("order-{i}")).collect();
    for order in &orders {
        let placed = SagaEvent::json(
            &format!("{order}/placed"),
            "order.placed",
            order,
            &OrderPlaced {
                order: order.clone(),
                amount_cents: 500,
            },
        )
        .expect("json");
        assert!(matches!(
            a.handle(&placed).await.expect("placed"),
            Handled::Applied {
                revision: 0,
                status: SagaStatus::Running
            }
        ));
        assert_eq!(a.handle(&placed).await.expect("dup"), Handled::Duplicate);
        let reserved = saga_event(&format!("{order}/reserved"), "stock.reserved", order);
        a.handle(&reserved).await.expect("reserved");
        // A timeout with a token that is not the pending one is stale.
        let mut forged = saga_event(&format!("{order}/forged"), TIMEOUT_EVENT_TYPE, order);
        forged.metadata.attributes = vec![
            ("ferry-saga-token".into(), "not-the-token".into()),
            ("ferry-saga-timeout".into(), "payment".into()),
        ];
        assert_eq!(
            a.handle(&forged).await.expect("forged"),
            Handled::StaleTimeout
        );
    }

    // Per saga, at once on two managers: two different failure reports, a repeat of one,
    // and a repeat of an old event. Exactly one transition wins; the rest see it.
    let mut handled = Vec::new();
    for order in &orders {
        let declined = saga_event(&format!("{order}/declined"), "payment.failed", order);
        let fraud = saga_event(&format!("{order}/fraud"), "payment.failed", order);
        let reserved = saga_event(&format!("{order}/reserved"), "stock.reserved", order);
        let (r1, r2, r3, r4) = tokio::join!(
            a.handle(&declined),
            b.handle(&fraud),
            b.handle(&declined),
            a.handle(&reserved),
        );
        handled.push([r1, r2, r3, r4].map(|r| r.expect("handled")));
    }
    for (order, results) in orders.iter().zip(&handled) {
        let applied: Vec<_> = results
            .iter()
            .filter(|h| matches!(h, Handled::Applied { .. }))
            .collect();
        assert_eq!(
            applied,
            vec![&Handled::Applied {
                revision: 2,
                status: SagaStatus::Compensated
            }],
            "{order}: {results:?}"
        );
        assert!(results.iter().all(|h| matches!(
            h,
            Handled::Applied { .. } | Handled::Duplicate | Handled::Ended(SagaStatus::Compensated)
        )));
        let saga = a.load(order).await.expect("load").expect("saga");
        assert_eq!(saga.revision, 2);
        let r = saga.record;
        assert_eq!(r.status, SagaStatus::Compensated);
        assert_eq!(r.failure.as_deref(), Some("payment declined"));
        assert_eq!(
            r.state,
            OrderState {
                step: "payment failed".into(),
                amount_cents: 500
            }
        );
        assert_eq!(r.processed.len(), 3, "{:?}", r.processed);
        assert!(r.timeout.is_none());
        // The winning event delivered again sends its outbox again: the queue drops it.
        let winner = saga_event(&r.caused_by, "payment.failed", order);
        assert_eq!(a.handle(&winner).await.expect("again"), Handled::Duplicate);
    }
    assert!(
        a.conflicts() + b.conflicts() > 0,
        "concurrent events of one saga never contended: the test did not test it"
    );

    // The real payment timeouts (delayed messages) arrive late, after the sagas ended: ignored.
    let consumer = EventConsumer::new(conn_a.clone());
    tokio::time::sleep(timeout).await;
    let late = drain(
        &consumer,
        &input.queue,
        std::time::Duration::from_millis(800),
    )
    .await;
    assert_eq!(late.len(), orders.len(), "one timeout per saga");
    for t in late {
        assert_eq!(t.metadata.event_type, TIMEOUT_EVENT_TYPE);
        let h = a.handle(&SagaEvent::from(t)).await.expect("late timeout");
        assert_eq!(h, Handled::Ended(SagaStatus::Compensated));
    }

    // The stock service got each reservation and each release exactly once.
    let stock = drain(&consumer, "t7.stock", std::time::Duration::from_millis(800)).await;
    for order in &orders {
        let of = |kind: &str| {
            stock
                .iter()
                .filter(|e| e.metadata.correlation_id == *order && e.metadata.event_type == kind)
                .count()
        };
        assert_eq!(of("stock.reserve"), 1, "{order}");
        assert_eq!(of("stock.release"), 1, "{order}");
    }
    assert_eq!(stock.len(), 2 * orders.len());
}

#[tokio::test]
async fn saga_timeout_fires_when_the_payment_never_answers_and_compensates() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = common::native::connect_as(&broker, "guest", "guest").await;
    let input = ConsumerConfig::new("t7b.order-saga");
    let saga = OrderSaga::new("t7b", std::time::Duration::from_millis(300));
    let manager = SagaManager::new(conn.clone(), saga, "t7b.sagas", &input.queue);
    manager.declare(&input).await.expect("declare");
    manager
        .declare_command_queue(&ConsumerConfig::new("t7b.stock"))
        .await
        .expect("queue");
    manager
        .declare_command_queue(&ConsumerConfig::new("t7b.payments"))
        .await
        .expect("queue");
    let consumer = EventConsumer::new(conn);
    let sub = manager
        .subscribe(&consumer, input.clone())
        .await
        .expect("subscribe");
    let order = "order-slow";
    let placed = SagaEvent::json(
        "slow/placed",
        "order.placed",
        order,
        &OrderPlaced {
            order: order.into(),
            amount_cents: 700,
        },
    )
    .expect("json");
    manager.handle(&placed).await.expect("placed");
    manager
        .handle(&saga_event("slow/reserved", "stock.reserved", order))
        .await
        .expect("reserved");
    // Nobody answers the payment: the timeout, delivered through the input queue, fails it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let record = loop {
        let saga = manager.load(order).await.expect("load").expect("saga");
        if saga.record.status != SagaStatus::Running {
            break saga.record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timeout never fired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    sub.close().await;
    assert_eq!(record.status, SagaStatus::Compensated);
    assert_eq!(record.failure.as_deref(), Some("payment timed out"));
    assert_eq!(record.state.step, "payment timed out");
    let stock = drain(
        &consumer,
        "t7b.stock",
        std::time::Duration::from_millis(500),
    )
    .await;
    let kinds: Vec<&str> = stock
        .iter()
        .map(|e| e.metadata.event_type.as_str())
        .collect();
    assert_eq!(kinds, ["stock.reserve", "stock.release"]);
}

#[tokio::test]
async fn saga_orders_example_ships_one_order_and_compensates_the_declined_one() {
    let broker = TestBroker::start().await.expect("broker");
    let run = saga_example::run(&broker).await.expect("the example runs");
    assert_eq!(run.shipped.status, SagaStatus::Completed);
    assert_eq!(run.shipped.state.step, "shipped");
    assert_eq!(
        run.shipped.processed.len(),
        4,
        "placed, reserved, charged, shipped"
    );
    assert_eq!(run.failed.status, SagaStatus::Compensated);
    assert_eq!(run.failed.failure.as_deref(), Some("payment declined"));
    assert_eq!(run.failed.state.amount_cents, 25_000);
    assert_eq!(
        run.releases,
        ["order-2"],
        "the declined order's stock, released once"
    );
}
