//! How long does a reconfigure's table rebuild and swap take at 10,000 services?
//!
//! Times what the controller does for every change: build a whole `RouteTable` of N services
//! (3 instances each, state carried from the live table) and publish it through the
//! `TableHandle`. The target is milliseconds at 10,000 services (fabio needed 15-20 s to
//! rebuild 2,500 routes).
//!
//! And what a reconfigure costs now that a change is made to a copy of the live table
//! ([`TableEditor`]): one service set again (its paths, new instances) at N services, the
//! target being the same time at 10 and at 10,000.
//!
//! Run: `cargo bench -p dfp-benches --bench rebuild`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dfp_routing::{PathPrefix, RouteTableBuilder, ServiceSpec, TableEditor, TableHandle};

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild+swap");
    group.sample_size(20);
    for services in [100_usize, 1_000, 10_000] {
        let specs: Vec<(String, Vec<PathPrefix>, Vec<SocketAddr>)> = (0..services)
            .map(|i| {
                let name = format!("service-{i}");
                let path = PathPrefix::parse(&format!("/api/v{}/{name}", i % 7)).expect("valid");
                let port = u16::try_from(10_000 + i % 50_000).expect("fits");
                let instances = (1..=3).map(|h| SocketAddr::from(([10, 0, 0, h], port))).collect();
                (name, vec![path], instances)
            })
            .collect();
        let handle = TableHandle::default();
        group.bench_with_input(BenchmarkId::from_parameter(services), &specs, |b, specs| {
            b.iter(|| {
                let live = handle.snapshot();
                let mut builder = RouteTableBuilder::new();
                builder.carry_state_from(&live);
                for (name, paths, instances) in specs {
                    builder.add_service(name, paths, instances).expect("no conflicts");
                }
                handle.publish(builder.build(live.version() + 1).expect("builds"));
                black_box(handle.load().version())
            });
        });
    }
    group.finish();
}

fn one_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("one-change+swap");
    for services in [10_usize, 1_000, 10_000, 100_000] {
        let mut builder = RouteTableBuilder::new();
        for i in 0..services {
            let name = format!("service-{i}");
            let path = PathPrefix::parse(&format!("/api/v{}/{name}", i % 7)).expect("valid");
            let instances: Vec<_> =
                (1..=3).map(|h| SocketAddr::from(([10, 0, 0, h], 8080))).collect();
            builder.add_service(&name, &[path], &instances).expect("no conflicts");
        }
        let handle = TableHandle::new(builder.build(1).expect("builds"));
        let name = format!("service-{}", services / 2);
        let path =
            PathPrefix::parse(&format!("/api/v{}/{name}", (services / 2) % 7)).expect("valid");
        let mut port = 0_u16;
        group.bench_function(BenchmarkId::from_parameter(services), |b| {
            b.iter(|| {
                // The service moved to other instances: what a reconfigure or a Consul
                // change does to one service.
                port = port.wrapping_add(1);
                let instances = vec![SocketAddr::from(([10, 0, 1, 1], port))];
                let live = handle.snapshot();
                let mut editor = TableEditor::new(&live);
                let spec = ServiceSpec::new(&name, std::slice::from_ref(&path));
                editor.set(vec![(spec, instances)]).expect("no conflicts");
                handle.publish(editor.finish(live.version() + 1));
                black_box(handle.load().version())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, rebuild, one_change);
criterion_main!(benches);
