//! What the chaos processes send each other, and how each side proves a message is the one it
//! expects: a seeded generator for sizes and payloads (so a receiver can regenerate what the
//! sender meant and compare every byte), a checksum, and the fixed headers of requests, replies,
//! stream items, duplex messages and samples. Nothing here does I/O.

/// splitmix64: a small, fast, well-mixed generator; the run's `--seed` fixes every choice made
/// from it.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// True with probability `percent` / 100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `base` scaled by a factor in [1 - spread, 1 + spread] (spread in percent).
    pub(crate) fn jitter(&mut self, base: std::time::Duration, spread: u64) -> std::time::Duration {
        let factor = 100 - spread + self.below(2 * spread + 1);
        base * factor as u32 / 100
    }
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for one purpose (`tag`) derived from another seed.
pub(crate) fn derive(seed: u64, tag: u64) -> u64 {
    mix(seed ^ mix(tag.wrapping_add(0x632b_e59b_d9b4_e019)))
}

/// Largest request payload (the 1 MiB).
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;

/// A message size from 0 B to `max`, skewed so most are small and some are large:
/// 5% empty, 70% 1 B-1 KiB, 20% 1-64 KiB, 5% 64 KiB-`max` (each uniform in its range).
pub(crate) fn skewed_size(rng: &mut Rng, max: usize) -> usize {
    let max = max as u64;
    let pick = rng.below(100);
    let size = if pick < 5 {
        0
    } else if pick < 75 {
        rng.range(1, 1 << 10)
    } else if pick < 95 {
        rng.range((1 << 10) + 1, 64 << 10)
    } else {
        rng.range((64 << 10) + 1, max.max((64 << 10) + 1))
    };
    size.min(max) as usize
}

/// Fills `out` with the byte stream `seed` stands for.
pub(crate) fn fill(seed: u64, out: &mut [u8]) {
    let mut state = seed | 1;
    let mut chunks = out.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    let last = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
    let n = tail.len();
    tail.copy_from_slice(&last[..n]);
}

/// Whether `bytes` is exactly the stream `seed` stands for (compared in blocks, without
/// allocating the whole expected message).
pub(crate) fn matches_fill(seed: u64, bytes: &[u8]) -> bool {
    // Regenerate in the same 8-byte steps as `fill`, comparing word by word.
    let mut state = seed | 1;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        if chunk != state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes() {
            return false;
        }
    }
    let tail = chunks.remainder();
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    let last = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
    tail == &last[..tail.len()]
}

/// A 64-bit checksum (word-wise multiply-mix; position-dependent).
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0x8422_2325_cbf2_9ce4_u64 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The server's transformation of a request payload into its reply payload: every byte inverted.
pub(crate) fn transform_into(payload: &[u8], out: &mut Vec<u8>) {
    out.extend(payload.iter().map(|b| !b));
}

/// Whether `reply` is the transformation of `request`.
pub(crate) fn is_transform_of(reply: &[u8], request: &[u8]) -> bool {
    reply.len() == request.len() && reply.iter().zip(request).all(|(r, q)| *r == !q)
}

/// Reads the little-endian u64 at `at`, if `bytes` holds it.
pub(crate) fn word(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

fn put(out: &mut Vec<u8>, words: &[u64]) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

// --- request/response -------------------------------------------------------------------------

const REQUEST: u64 = 0x7571_6572_6f61_6863; // "chaoreqt"-ish
const REPLY: u64 = 0x7970_6c65_726f_6168;
const ITEM: u64 = 0x6d65_7469_6f61_6863;

/// A plain call (`items == 0`) or a stream request (`items` items wanted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) client: u64,
    pub(crate) call: u64,
    /// Seed of the payload.
    pub(crate) payload_seed: u64,
    pub(crate) items: u64,
    /// Seed of the stream's items.
    pub(crate) stream_seed: u64,
}

pub(crate) const REQUEST_HEADER: usize = 56;

impl Request {
    /// Header, then `payload_len` bytes from `payload_seed`.
    pub(crate) fn encode(&self, payload_len: usize, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(REQUEST_HEADER + payload_len);
        put(
            out,
            &[
                REQUEST,
                self.client,
                self.call,
                self.items,
                self.stream_seed,
            ],
        );
        let at = out.len();
        out.resize(at + 16 + payload_len, 0);
        fill(self.payload_seed, &mut out[REQUEST_HEADER..]);
        let sum = checksum(&out[REQUEST_HEADER..]);
        out[at..at + 8].copy_from_slice(&(payload_len as u64).to_le_bytes());
        out[at + 8..at + 16].copy_from_slice(&sum.to_le_bytes());
    }
}

/// A request as the server reads it: its identity and payload, or why it is not one.
pub(crate) struct ParsedRequest<'a> {
    pub(crate) client: u64,
    pub(crate) call: u64,
    pub(crate) items: u64,
    pub(crate) stream_seed: u64,
    pub(crate) payload: &'a [u8],
}

/// Parses and checks a request (magic, length, checksum).
pub(crate) fn parse_request(bytes: &[u8]) -> Result<ParsedRequest<'_>, &'static str> {
    let field = |i: usize| word(bytes, i * 8).ok_or("request shorter than its header");
    if field(0)? != REQUEST {
        return Err("request magic");
    }
    let payload = &bytes[REQUEST_HEADER.min(bytes.len())..];
    if field(5)? != payload.len() as u64 {
        return Err("request length");
    }
    if field(6)? != checksum(payload) {
        return Err("request checksum");
    }
    Ok(ParsedRequest {
        client: field(1)?,
        call: field(2)?,
        items: field(3)?,
        stream_seed: field(4)?,
        payload,
    })
}

pub(crate) const REPLY_HEADER: usize = 40;

/// The reply to a plain call: who answered which call, then the transformed payload.
pub(crate) fn encode_reply(request: &ParsedRequest<'_>, server_pid: u32, out: &mut Vec<u8>) {
    put(
        out,
        &[
            REPLY,
            request.client,
            request.call,
            u64::from(server_pid),
            request.payload.len() as u64,
        ],
    );
    transform_into(request.payload, out);
}

/// A reply for a request the server found broken (the client counts it as a wrong reply).
pub(crate) fn encode_refusal(why: &str, out: &mut Vec<u8>) {
    put(out, &[REPLY, 0, 0, 0, u64::MAX]);
    out.extend_from_slice(why.as_bytes());
}

/// Checks that `reply` answers exactly `request` (sent as `sent`, whose payload starts at
/// [`REQUEST_HEADER`]); returns the answering server's pid.
pub(crate) fn check_reply(reply: &[u8], request: &Request, sent: &[u8]) -> Result<u32, String> {
    let field = |i: usize| word(reply, i * 8).ok_or("reply shorter than its header");
    if field(0)? != REPLY {
        return Err("reply magic".into());
    }
    if field(4)? == u64::MAX {
        let why = String::from_utf8_lossy(&reply[REPLY_HEADER.min(reply.len())..]);
        return Err(format!("server refused the request: {why}"));
    }
    if (field(1)?, field(2)?) != (request.client, request.call) {
        return Err(format!(
            "reply to call {}/{} received for call {}/{}",
            field(1)?,
            field(2)?,
            request.client,
            request.call
        ));
    }
    let payload = &reply[REPLY_HEADER.min(reply.len())..];
    let expected = &sent[REQUEST_HEADER.min(sent.len())..];
    if field(4)? != expected.len() as u64 || !is_transform_of(payload, expected) {
        return Err(format!(
            "reply content ({} bytes) is not this request's ({} bytes) transformed",
            payload.len(),
            expected.len()
        ));
    }
    u32::try_from(field(3)?).map_err(|_| "server pid".to_owned())
}

/// Item `index` of the stream `stream_seed` stands for: its payload length and seed.
pub(crate) fn stream_item(stream_seed: u64, index: u64) -> (usize, u64) {
    let seed = derive(stream_seed, index);
    let mut rng = Rng::new(seed);
    // Items are smaller than calls: a stream is many of them.
    (skewed_size(&mut rng, 256 << 10) / 4, derive(seed, 1))
}

pub(crate) const ITEM_HEADER: usize = 40;

/// Stream item `index` answering `request`.
pub(crate) fn encode_item(request: &ParsedRequest<'_>, index: u64, pid: u32, out: &mut Vec<u8>) {
    let (len, seed) = stream_item(request.stream_seed, index);
    out.clear();
    put(
        out,
        &[ITEM, request.client, request.call, index, u64::from(pid)],
    );
    out.resize(ITEM_HEADER + len, 0);
    fill(seed, &mut out[ITEM_HEADER..]);
}

/// Checks that `item` is item `index` of the stream `request` asked for; returns the server pid.
pub(crate) fn check_item(item: &[u8], request: &Request, index: u64) -> Result<u32, String> {
    let field = |i: usize| word(item, i * 8).ok_or("item shorter than its header");
    if field(0)? != ITEM {
        return Err("item magic".into());
    }
    if (field(1)?, field(2)?, field(3)?) != (request.client, request.call, index) {
        return Err(format!(
            "item {}/{}#{} received as {}/{}#{index}",
            field(1)?,
            field(2)?,
            field(3)?,
            request.client,
            request.call
        ));
    }
    let (len, seed) = stream_item(request.stream_seed, index);
    let payload = &item[ITEM_HEADER.min(item.len())..];
    if payload.len() != len || !matches_fill(seed, payload) {
        return Err(format!("item {index} content"));
    }
    u32::try_from(field(4)?).map_err(|_| "server pid".to_owned())
}

// --- duplex and publish/subscribe --------------------------------------------------------------

const MESSAGE: u64 = 0x6773_6d78_6f61_6863;
const SAMPLE: u64 = 0x6c70_6d73_6f61_6863;

pub(crate) const MESSAGE_HEADER: usize = 32;

/// The seed of duplex message `seq` from `side` of a pair whose seed is `pair_seed`.
fn message_seed(pair_seed: u64, side: u64, seq: u64) -> u64 {
    derive(derive(pair_seed, side), seq)
}

/// Duplex message `seq` from `side`, `len` payload bytes.
pub(crate) fn encode_message(pair_seed: u64, side: u64, seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    put(out, &[MESSAGE, side, seq, len as u64]);
    out.resize(MESSAGE_HEADER + len, 0);
    fill(
        message_seed(pair_seed, side, seq),
        &mut out[MESSAGE_HEADER..],
    );
}

/// Checks that `message` is message `seq` from `side`.
pub(crate) fn check_message(
    pair_seed: u64,
    side: u64,
    seq: u64,
    message: &[u8],
) -> Result<(), String> {
    let field = |i: usize| word(message, i * 8).ok_or("message shorter than its header");
    if field(0)? != MESSAGE || field(1)? != side {
        return Err("message magic or side".into());
    }
    if field(2)? != seq {
        return Err(format!(
            "message {} received where {seq} was due",
            field(2)?
        ));
    }
    let payload = &message[MESSAGE_HEADER.min(message.len())..];
    if field(3)? != payload.len() as u64
        || !matches_fill(message_seed(pair_seed, side, seq), payload)
    {
        return Err(format!("message {seq} content"));
    }
    Ok(())
}

pub(crate) const SAMPLE_HEADER: usize = 32;

/// Writes sample `seq` of publisher `pid` into `out` (exactly `out.len()` bytes, at least the
/// header).
pub(crate) fn write_sample(run_seed: u64, pid: u32, seq: u64, out: &mut [u8]) {
    let len = out.len().saturating_sub(SAMPLE_HEADER);
    for (i, w) in [SAMPLE, u64::from(pid), seq, len as u64]
        .into_iter()
        .enumerate()
    {
        if let Some(dst) = out.get_mut(i * 8..i * 8 + 8) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
    }
    if let Some(payload) = out.get_mut(SAMPLE_HEADER..) {
        fill(derive(derive(run_seed, u64::from(pid)), seq), payload);
    }
}

/// Checks that `sample` is sample `seq` of publisher `pid`.
pub(crate) fn check_sample(run_seed: u64, pid: u32, seq: u64, sample: &[u8]) -> Result<(), String> {
    let field = |i: usize| word(sample, i * 8).ok_or("sample shorter than its header");
    if field(0)? != SAMPLE {
        return Err("sample magic".into());
    }
    if (field(1)?, field(2)?) != (u64::from(pid), seq) {
        return Err(format!(
            "sample {}#{} received as {pid}#{seq}",
            field(1)?,
            field(2)?
        ));
    }
    let payload = &sample[SAMPLE_HEADER.min(sample.len())..];
    if field(3)? != payload.len() as u64
        || !matches_fill(derive(derive(run_seed, u64::from(pid)), seq), payload)
    {
        return Err(format!("sample {seq} content"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_any_flipped_byte_is_caught() {
        let request = Request {
            client: 7,
            call: 42,
            payload_seed: 99,
            items: 0,
            stream_seed: 0,
        };
        for len in [0, 1, 7, 8, 9, 1000] {
            let mut sent = Vec::new();
            request.encode(len, &mut sent);
            let parsed = parse_request(&sent).map_err(String::from).unwrap();
            assert_eq!((parsed.client, parsed.call), (7, 42));
            let mut reply = Vec::new();
            encode_reply(&parsed, 1234, &mut reply);
            assert_eq!(check_reply(&reply, &request, &sent), Ok(1234));
            for at in [0, 8, 16, REPLY_HEADER, reply.len() - 1] {
                if at >= reply.len() {
                    continue;
                }
                let mut bad = reply.clone();
                bad[at] ^= 1;
                assert!(check_reply(&bad, &request, &sent).is_err(), "{len} {at}");
            }
            if len > 0 {
                let mut bad = sent.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0x10;
                assert!(parse_request(&bad).is_err());
            }
        }
        let other = Request {
            call: 43,
            ..request
        };
        let mut sent = Vec::new();
        request.encode(10, &mut sent);
        let mut reply = Vec::new();
        encode_reply(
            &parse_request(&sent).map_err(String::from).unwrap(),
            1,
            &mut reply,
        );
        assert!(check_reply(&reply, &other, &sent).is_err());
    }

    #[test]
    fn items_messages_and_samples_check_their_identity_and_content() {
        let request = Request {
            client: 1,
            call: 2,
            payload_seed: 3,
            items: 5,
            stream_seed: 77,
        };
        let mut sent = Vec::new();
        request.encode(3, &mut sent);
        let parsed = parse_request(&sent).map_err(String::from).unwrap();
        let mut item = Vec::new();
        encode_item(&parsed, 3, 9, &mut item);
        assert_eq!(check_item(&item, &request, 3), Ok(9));
        assert!(check_item(&item, &request, 2).is_err());

        let mut message = Vec::new();
        encode_message(5, 1, 10, 100, &mut message);
        assert!(check_message(5, 1, 10, &message).is_ok());
        assert!(check_message(5, 0, 10, &message).is_err());
        assert!(check_message(5, 1, 11, &message).is_err());

        let mut sample = vec![0u8; SAMPLE_HEADER + 33];
        write_sample(8, 100, 4, &mut sample);
        assert!(check_sample(8, 100, 4, &sample).is_ok());
        assert!(check_sample(8, 101, 4, &sample).is_err());
        sample[SAMPLE_HEADER + 32] ^= 1;
        assert!(check_sample(8, 100, 4, &sample).is_err());
    }

    #[test]
    fn sizes_stay_in_range_and_most_are_small() {
        let mut rng = Rng::new(1);
        let sizes: Vec<usize> = (0..10_000)
            .map(|_| skewed_size(&mut rng, MAX_PAYLOAD))
            .collect();
        assert!(sizes.iter().all(|&s| s <= MAX_PAYLOAD));
        let small = sizes.iter().filter(|&&s| s <= 1024).count();
        let large = sizes.iter().filter(|&&s| s > 64 << 10).count();
        assert!(small > 7000 && large > 300, "{small} {large}");
        assert!(sizes.contains(&0));
    }
}
