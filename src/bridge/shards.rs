//! Which of the layer's `hosts` a key lives on, chosen exactly as channels_redis chooses it
//! (`channels_redis.utils._consistent_hash`): CRC-32 of the name, its low 12 bits, scaled down to
//! the number of hosts. Django and the nodes must list the hosts in the same order.

/// The index into `hosts` for `name` (a group name, a group's pub/sub channel, or a channel's
/// non-local name).
pub fn shard_of(name: &str, hosts: usize) -> usize {
    if hosts <= 1 {
        return 0;
    }
    let value = crc32fast::hash(name.as_bytes()) & 0xFFF;
    let divisor = 4096.0 / hosts as f64;
    // Python's int() truncates toward zero, as `as` does; the value stays below `hosts`.
    ((f64::from(value) / divisor) as usize).min(hosts - 1)
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn the_same_shards_as_channels_redis() {
        // Printed by channels_redis 4.3.0's `_consistent_hash(name, k)` for k = 1, 2, 3, 7.
        for (name, expected) in [
            ("chat_1", [0, 0, 0, 0]),
            ("asgi__group__chat_1", [0, 1, 2, 6]),
            ("switchboard.00ff!", [0, 1, 1, 4]),
            ("x", [0, 0, 1, 2]),
        ] {
            let found = [1, 2, 3, 7].map(|hosts| shard_of(name, hosts));
            assert_eq!(found, expected, "{name}");
        }
        assert_eq!(shard_of("anything", 0), 0);
    }
}
