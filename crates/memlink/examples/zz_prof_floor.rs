#![allow(dead_code)]
#[path = "/tmp/prof/floor_b.rs"]
mod floor;
use std::rc::Rc;
use std::time::Instant;
const CAP: usize = 256 << 10;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args[2].parse().unwrap();
    if args[1] == "parent" {
        let region = floor::create(CAP).unwrap();
        let (_inh, num) = region.inheritable().unwrap();
        let mut child = std::process::Command::new("taskset")
            .args(["-c", "0"])
            .arg(&args[0])
            .args(["child", &args[2], &num.to_string()])
            .spawn()
            .unwrap();
        let region = Rc::new(region);
        let mut rx = floor::Consumer::new(region.clone(), 1, CAP).unwrap();
        let mut tx = floor::Producer::new(region, 0, CAP).unwrap();
        tx.send(b"go").unwrap();
        let mut buf = Vec::with_capacity(64);
        rx.recv_into(&mut buf).unwrap();
        let t = Instant::now();
        for i in 0..n {
            rx.recv_into(&mut buf).unwrap();
            assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i);
        }
        eprintln!(
            "floor {} M msgs/s",
            n as f64 / t.elapsed().as_secs_f64() / 1e6
        );
        child.wait().unwrap();
    } else {
        let fd: i32 = args[3].parse().unwrap();
        let region = Rc::new(floor::open(fd, CAP).unwrap());
        let mut tx = floor::Producer::new(region.clone(), 1, CAP).unwrap();
        let mut rx = floor::Consumer::new(region, 0, CAP).unwrap();
        let mut buf = Vec::new();
        rx.recv_into(&mut buf).unwrap();
        tx.send(b"ready").unwrap();
        let mut msg = vec![7u8; 64];
        for i in 0..n {
            msg[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(&msg).unwrap();
        }
    }
}
