use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = &args[2];
    let n: u64 = args[3].parse().unwrap();
    let d = memlink::Duplex::open(name).unwrap();
    let (mut tx, mut rx) = d.split();
    let mut buf = Vec::with_capacity(64);
    if args[1] == "server" {
        loop {
            if rx.recv_into(&mut buf).is_err() {
                return;
            }
            if tx.send(&buf).is_err() {
                return;
            }
        }
    } else {
        let req = [7u8; 64];
        for _ in 0..100000 {
            tx.send(&req).unwrap();
            rx.recv_into(&mut buf).unwrap();
        }
        let mut v = Vec::with_capacity(n as usize);
        let t = Instant::now();
        for _ in 0..n {
            let s = Instant::now();
            tx.send(&req).unwrap();
            rx.recv_into(&mut buf).unwrap();
            v.push(s.elapsed().as_nanos() as u64);
        }
        let e = t.elapsed();
        v.sort();
        eprintln!(
            "duplex rtt mean {:.0} ns p50 {} p99 {}",
            e.as_nanos() as f64 / n as f64,
            v[v.len() / 2],
            v[v.len() * 99 / 100]
        );
    }
}
