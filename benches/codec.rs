//! Codec micro-benchmarks: encoding a `message` frame (once per publication per encoding) and
//! decoding a client `publish` frame, in JSON and MessagePack, with a 110-byte payload like the
//! load tests'.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use switchboard::protocol::codec::{decode_binary, decode_text};
use switchboard::protocol::{Encoding, ServerFrame};

fn payload() -> Value {
    // 110 bytes of JSON, as in the performance issue's runs.
    json!({"seq": 123456, "sent_at_us": 1790000000123456u64, "text": "the quick brown fox jumps over the lazy dog!"})
}

fn encode(criterion: &mut Criterion) {
    let data = payload();
    let frame = ServerFrame::Message {
        channel: Some("room:1"),
        data: &data,
        from: Some("42"),
        offset: None,
        epoch: None,
    };
    let mut group = criterion.benchmark_group("encode_message");
    group.throughput(Throughput::Elements(1));
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        group.bench_function(format!("{encoding:?}"), |bench| {
            bench.iter(|| encoding.encode(std::hint::black_box(&frame)))
        });
    }
    group.finish();
}

fn decode(criterion: &mut Criterion) {
    let frame = json!({"action": "publish", "channel": "room:1", "data": payload(), "id": 7});
    let text = frame.to_string();
    let packed = rmp_serde::to_vec_named(&frame).expect("pack");
    let mut group = criterion.benchmark_group("decode_publish");
    group.throughput(Throughput::Elements(1));
    group.bench_function("Json", |bench| {
        bench.iter(|| decode_text(std::hint::black_box(&text)))
    });
    group.bench_function("MessagePack", |bench| {
        bench.iter(|| decode_binary(std::hint::black_box(&packed)))
    });
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
