//! A tour of memlink's foundation across real processes.
//!
//! Run with `cargo run --release -p memlink --example tour`. The program re-executes itself as
//! child processes: one reads what the parent wrote into a named segment and answers through an
//! event pair (the hand-off of the seed articles), another takes a robust mutex and is killed with
//! SIGKILL while holding it, after which the parent acquires the lock and is told the owner died.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memlink::{Event, EventMode, Lock, Mutex, Segment};

const ROUNDS: usize = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("echo-child") => echo_child(&args[2]),
        Some("holder-child") => holder_child(&args[2]),
        _ => parent(),
    }
}

fn spawn_self(role: &str, base: &str) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args([role, base])
        .stdin(Stdio::null())
        .spawn()
}

fn parent() -> Result<(), Box<dyn std::error::Error>> {
    let base = format!("tour-{}", std::process::id());
    println!("memlink tour (pid {})", std::process::id());

    // 1. A named segment, written here and read by another process.
    let segment = Segment::create(&base, 4096)?;
    let request = Event::create(&format!("{base}-request"), EventMode::AutoReset)?;
    let reply = Event::create(&format!("{base}-reply"), EventMode::AutoReset)?;
    let greeting = b"hello from the parent";
    segment.write(0, &(greeting.len() as u32).to_le_bytes())?;
    segment.write(4, greeting)?;
    println!(
        "1. created segment '{base}' ({} bytes) and wrote {:?}",
        segment.len(),
        "hello from the parent"
    );

    let mut child = spawn_self("echo-child", &base)?;
    request.set()?;
    reply.wait_timeout(Duration::from_secs(10))?;
    let answer = read_message(&segment)?;
    println!(
        "2. child process {} read it and answered: {answer:?}",
        child.id()
    );

    // 2. Event ping-pong between the two processes.
    let started = Instant::now();
    for _ in 0..ROUNDS {
        request.set()?;
        reply.wait_timeout(Duration::from_secs(10))?;
    }
    let per_round = started.elapsed() / ROUNDS as u32;
    println!(
        "3. {ROUNDS} event round trips between the processes: {per_round:?} each (futex wake-ups)"
    );
    child.wait()?;

    // 3. A robust mutex whose holder is killed.
    let mutex = Mutex::create(&format!("{base}-lock"))?;
    let mut holder = spawn_self("holder-child", &base)?;
    while mutex.try_lock()?.is_some_and(|lock| !lock.owner_died()) {
        std::thread::sleep(Duration::from_millis(1)); // wait until the child holds it
    }
    holder.kill()?;
    holder.wait()?;
    println!(
        "4. child process {} took the mutex and was killed with SIGKILL while holding it",
        holder.id()
    );
    let started = Instant::now();
    match mutex.lock_timeout(Duration::from_secs(10))? {
        Lock::OwnerDied(recovering) => {
            println!(
                "5. next lock() returned OwnerDied (previous owner token {:?}) after {:?}; repaired and released",
                recovering.previous_owner(),
                started.elapsed()
            );
            recovering.make_consistent()?.unlock()?;
        }
        Lock::Acquired(_) => println!("5. unexpected: the lock was released normally"),
    }
    println!("6. `memlink ls` would now show:");
    for object in memlink::inventory::list()?
        .iter()
        .filter(|o| o.name.starts_with(&base))
    {
        println!(
            "     {:<28} {:<10} {:>5} bytes  {:?}",
            object.name,
            object
                .kind
                .map_or_else(|| "?".to_owned(), |k| k.to_string()),
            object.size,
            object.state
        );
    }
    println!("done; every object is removed as its handle drops");
    Ok(())
}

fn read_message(segment: &Segment) -> memlink::Result<String> {
    let mut len = [0u8; 4];
    segment.read(0, &mut len)?;
    // The length came from shared memory: clamp it to what the segment can hold.
    let len = (u32::from_le_bytes(len) as usize).min(segment.len() - 4);
    let mut text = vec![0u8; len];
    segment.read(4, &mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn echo_child(base: &str) -> Result<(), Box<dyn std::error::Error>> {
    let segment = Segment::open(base)?;
    let request = Event::open(&format!("{base}-request"))?;
    let reply = Event::open(&format!("{base}-reply"))?;
    request.wait_timeout(Duration::from_secs(10))?;
    let text = read_message(&segment)?;
    let answer = format!("child {} got {} bytes", std::process::id(), text.len());
    segment.write(0, &(answer.len() as u32).to_le_bytes())?;
    segment.write(4, answer.as_bytes())?;
    reply.set()?;
    for _ in 0..ROUNDS {
        request.wait_timeout(Duration::from_secs(10))?;
        reply.set()?;
    }
    Ok(())
}

fn holder_child(base: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mutex = Mutex::open(&format!("{base}-lock"))?;
    let _guard = mutex.lock_timeout(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(60)); // killed long before this ends
    Ok(())
}
