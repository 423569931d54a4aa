use std::time::{Duration, Instant};
fn main() {
    let name = format!("probe-{}", std::process::id());
    let server = memlink::Server::bind(&name).unwrap();
    std::thread::spawn(move || {
        server
            .serve(|r: &[u8], o: &mut Vec<u8>| o.extend_from_slice(r))
            .unwrap()
    });
    let client = memlink::Client::connect_timeout(&name, Duration::from_secs(2)).unwrap();
    let mut v = Vec::new();
    for gap in [0u64, 2, 2, 2, 2, 2, 2, 5, 5, 5] {
        std::thread::sleep(Duration::from_millis(gap));
        let t = Instant::now();
        client.call_into(b"hello", &mut v).unwrap();
        println!("gap {gap} ms: {:?}", t.elapsed());
    }
}
