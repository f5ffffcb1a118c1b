//! Group fan-out without sockets: one publication queued to N members' bounded queues (encode
//! once, share the bytes, `try_send` each), then the queues drained as the
//! connections' response bodies would.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use switchboard::broker::Publication;
use switchboard::hub::{Disconnector, Member, fan_out, outbound_queue};
use switchboard::protocol::{ChannelName, Encoding};

fn fanout(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("fan_out");
    for members in [100usize, 5_000] {
        // Nobody watches the close notices: a benchmark member never overflows.
        let (disconnect, _notices) = Disconnector::new();
        let (queues, receivers): (Vec<Member>, Vec<_>) = (0..members)
            .map(|connection| {
                let (queue, receiver) = outbound_queue(16, usize::MAX);
                let member = Member {
                    connection: connection as u64,
                    encoding: Encoding::Json,
                    queue,
                    disconnect: disconnect.clone(),
                };
                (member, receiver)
            })
            .unzip();
        let mut receivers = receivers;
        let publication = Publication::new(
            ChannelName::parse("room:1").expect("channel"),
            json!({"seq": 1, "sent_at_us": 1790000000123456u64, "text": "the quick brown fox jumps over the lazy dog!"}),
            None,
        );
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(members),
            &members,
            |bench, _| {
                bench.iter(|| {
                    let result = fan_out(&queues, &publication);
                    for receiver in &mut receivers {
                        while receiver.try_recv().is_ok() {}
                    }
                    result.delivered
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
