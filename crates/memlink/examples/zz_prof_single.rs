#![allow(dead_code)]
#[path = "../../memlink-cli/src/floor.rs"]
mod floor;
use std::rc::Rc;
use std::time::Instant;
fn main() {
    let name = format!("zzsingle{}", std::process::id());
    let n2 = name.clone();
    let h = std::thread::spawn(move || memlink::Duplex::open(&n2).unwrap());
    let a = memlink::Duplex::open(&name).unwrap();
    let b = h.join().unwrap();
    let (mut tx, _arx) = a.split();
    let (_btx, mut rx) = b.split();
    let msg = [7u8; 64];
    let mut buf = Vec::with_capacity(64);
    let rounds = 20000u64;
    let batch = 1000;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..rounds {
            for _ in 0..batch {
                tx.send(&msg).unwrap();
            }
            for _ in 0..batch {
                rx.recv_into(&mut buf).unwrap();
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / (rounds * batch) as f64;
        // floor
        let region = Rc::new(floor::create(256 << 10).unwrap());
        let mut ftx = floor::Producer::new(region.clone(), 0, 256 << 10).unwrap();
        let mut frx = floor::Consumer::new(region, 0, 256 << 10).unwrap();
        let t = Instant::now();
        for _ in 0..rounds {
            for _ in 0..batch {
                ftx.send(&msg).unwrap();
            }
            for _ in 0..batch {
                frx.recv_into(&mut buf).unwrap();
            }
        }
        let fns = t.elapsed().as_nanos() as f64 / (rounds * batch) as f64;
        println!("memlink {ns:.1} ns/msg (send+recv), floor {fns:.1} ns/msg");
    }
}
