//! Does route lookup stay flat as the number of routes grows?
//!
//! Builds tables of 10, 1,000, 10,000 and 100,000 services (one path each, shaped like
//! Docker Flow Proxy deployments: `/api/v<k>/<service>`), then times `RouteTable::lookup`
//! for a deep hit (a path below a route), a shallow hit (the route itself) and a miss.
//! The claim to check: the time per lookup is the same at 10 and at 100,000 routes (HAProxy's
//! `path_beg` ACLs cost ~0.25 µs per rule, i.e. ~2.5 ms per request at 10,000 rules).
//!
//! Run: `cargo bench -p dfp-benches --bench lookup`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dfp_benches::table_of;

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for routes in [10_usize, 1_000, 10_000, 100_000] {
        let table = table_of(routes);
        let last = routes - 1;
        let deep = format!("/api/v{}/service-{last}/items/42/reviews?page=2", last % 7);
        let shallow = format!("/api/v{}/service-{last}", last % 7);
        let miss = format!("/api/v{}/service-{last}x/items", last % 7);
        assert!(table.lookup(deep.split('?').next().unwrap_or_default()).is_some());
        assert!(table.lookup(&miss).is_none());
        for (case, path) in [("hit-deep", deep), ("hit-shallow", shallow), ("miss", miss)] {
            let path = path.split('?').next().unwrap_or_default().to_owned();
            group.bench_with_input(BenchmarkId::new(case, routes), &path, |b, path| {
                b.iter(|| black_box(table.lookup(black_box(path)).is_some()));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
