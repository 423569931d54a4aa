use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = &args[2];
    if args[1] == "server" {
        let server = memlink::Server::options().workers(1).bind(name).unwrap();
        server
            .serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))
            .unwrap();
    } else {
        let n: u64 = args[3].parse().unwrap();
        let client = memlink::Client::connect(name).unwrap();
        let req = [7u8; 64];
        let mut reply = Vec::with_capacity(64);
        for _ in 0..100000 {
            client.call_into(&req, &mut reply).unwrap();
        }
        let mut v = Vec::with_capacity(n as usize);
        let t = Instant::now();
        for _ in 0..n {
            let s = Instant::now();
            client.call_into(&req, &mut reply).unwrap();
            v.push(s.elapsed().as_nanos() as u64);
        }
        let e = t.elapsed();
        v.sort();
        eprintln!(
            "rpc mean {:.0} ns p50 {} p99 {}",
            e.as_nanos() as f64 / n as f64,
            v[v.len() / 2],
            v[v.len() * 99 / 100]
        );
    }
}
