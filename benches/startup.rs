//! How long an embedded broker takes to start and stop: the cost a user pays per test that
//! starts a `TestBroker`. The target is well under 100 ms.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ferry::testing::TestBroker;

fn startup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("test_broker");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("start", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                runtime.block_on(async {
                    let started = std::time::Instant::now();
                    let broker = TestBroker::start().await.expect("start");
                    total += started.elapsed();
                    broker.stop().await;
                });
            }
            total
        })
    });
    group.bench_function("start_and_stop", |b| {
        b.iter(|| {
            runtime.block_on(async {
                TestBroker::start().await.expect("start").stop().await;
            })
        })
    });
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
