use std::time::{Duration, Instant};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let role = args[1].as_str();
    let name = &args[2];
    let n: u64 = args[3].parse().unwrap();
    let cap: usize = std::env::var("CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 << 10);
    let d = memlink::Duplex::options()
        .ring_capacity(cap)
        .open(name)
        .unwrap();
    let (mut tx, mut rx) = d.split();
    let mut msg = vec![7u8; 64];
    if role == "send" {
        let t = Instant::now();
        for i in 0..n {
            msg[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(&msg).unwrap();
        }
        eprintln!(
            "send side {:.1} M msgs/s",
            n as f64 / t.elapsed().as_secs_f64() / 1e6
        );
        let _ = rx.recv();
    } else {
        if std::env::var("LAG").is_ok() {
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut buf = Vec::with_capacity(64);
        let t = Instant::now();
        for i in 0..n {
            rx.recv_into(&mut buf).unwrap();
            assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i);
        }
        let e = t.elapsed();
        tx.send(b"done").unwrap();
        eprintln!("recv side {:.1} M msgs/s", n as f64 / e.as_secs_f64() / 1e6);
    }
}
